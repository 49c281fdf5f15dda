//! Writing GGUF v3. The header (metadata and tensor infos with precomputed offsets) is written
//! first; then the caller streams each tensor's bytes in the order the tensors were added, so
//! no more than one tensor (or one piece of one) needs to be in memory at a time.
//!
//! ```no_run
//! # use moela_loader::gguf::{GgufWriter, GgufValue, GgmlType};
//! # fn main() -> Result<(), moela_loader::gguf::GgufError> {
//! let mut w = GgufWriter::new();
//! w.add("general.architecture", GgufValue::String("deepseek2".into()))?;
//! w.add_tensor("output_norm.weight", &[16], GgmlType::F32)?;
//! let mut t = w.create("out.gguf")?;
//! t.write_tensor("output_norm.weight", &[0u8; 64])?;
//! t.finish()?;
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{
    align_up, GgmlType, GgufError, GgufValue, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_MAX_DIMS,
    GGUF_VERSION, KEY_ALIGNMENT,
};

/// llama.cpp's `GGML_MAX_NAME` (64, including the terminating NUL).
const MAX_TENSOR_NAME: usize = 63;

#[derive(Clone, Debug)]
struct PlannedTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    n_bytes: u64,
    offset: u64,
}

/// Collects metadata and tensor infos, then writes the header (see [`GgufWriter::create`]).
#[derive(Debug)]
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    keys: HashSet<String>,
    tensors: Vec<PlannedTensor>,
    names: HashSet<String>,
    alignment: u64,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

fn bad(msg: impl Into<String>) -> GgufError {
    GgufError::input("GGUF writer", msg)
}

/// Checks that every element of every (nested) array has the array's element type.
fn check_value(key: &str, v: &GgufValue) -> Result<(), GgufError> {
    if let GgufValue::Array(a) = v {
        for (i, item) in a.items.iter().enumerate() {
            if item.value_type() != a.elem_type {
                return Err(bad(format!(
                    "metadata key `{key}`: array of {} has a {} at index {i}",
                    a.elem_type,
                    item.value_type()
                )));
            }
            check_value(key, item)?;
        }
    }
    Ok(())
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(b) => buf.push(u8::from(*b)),
        GgufValue::String(s) => put_str(buf, s),
        GgufValue::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Array(a) => {
            buf.extend_from_slice(&(a.elem_type as u32).to_le_bytes());
            buf.extend_from_slice(&(a.items.len() as u64).to_le_bytes());
            for item in &a.items {
                put_value(buf, item);
            }
        }
    }
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter {
            metadata: Vec::new(),
            keys: HashSet::new(),
            tensors: Vec::new(),
            names: HashSet::new(),
            alignment: u64::from(GGUF_DEFAULT_ALIGNMENT),
        }
    }

    /// Adds a metadata entry (written in the order added). `general.alignment` must be a u32
    /// power of two and sets the data alignment.
    pub fn add(&mut self, key: impl Into<String>, value: GgufValue) -> Result<(), GgufError> {
        let key = key.into();
        if key.is_empty() {
            return Err(bad("empty metadata key"));
        }
        if self.keys.contains(&key) {
            return Err(bad(format!("metadata key `{key}` added twice")));
        }
        check_value(&key, &value)?;
        if key == KEY_ALIGNMENT {
            match value {
                GgufValue::U32(a) if a != 0 && a.is_power_of_two() => self.alignment = a.into(),
                ref v => {
                    return Err(bad(format!(
                        "`{KEY_ALIGNMENT}` must be a u32 power of two, not {} {}",
                        v.type_description(),
                        v.to_json()
                    )))
                }
            }
        }
        self.keys.insert(key.clone());
        self.metadata.push((key, value));
        Ok(())
    }

    pub fn add_u32(&mut self, key: impl Into<String>, v: u32) -> Result<(), GgufError> {
        self.add(key, GgufValue::U32(v))
    }

    pub fn add_f32(&mut self, key: impl Into<String>, v: f32) -> Result<(), GgufError> {
        self.add(key, GgufValue::F32(v))
    }

    pub fn add_bool(&mut self, key: impl Into<String>, v: bool) -> Result<(), GgufError> {
        self.add(key, GgufValue::Bool(v))
    }

    pub fn add_string(
        &mut self,
        key: impl Into<String>,
        v: impl Into<String>,
    ) -> Result<(), GgufError> {
        self.add(key, GgufValue::String(v.into()))
    }

    /// Sets `general.alignment` (a power of two; 32 when never set).
    pub fn set_alignment(&mut self, alignment: u32) -> Result<(), GgufError> {
        self.add(KEY_ALIGNMENT, GgufValue::U32(alignment))
    }

    /// Whether `key` has been added.
    pub fn has_key(&self, key: &str) -> bool {
        self.keys.contains(key)
    }

    /// Declares a tensor of a type in [`GgmlType::TABLE`]; `dims` in ggml order (innermost
    /// first: a `[out, in]` matrix is `&[in, out]`). Its bytes are written later, in the order
    /// the tensors were declared.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
    ) -> Result<(), GgufError> {
        let name = name.into();
        let n_bytes = ggml_type
            .tensor_bytes(dims)
            .map_err(|m| bad(format!("tensor `{name}`: {m}")))?;
        self.push_tensor(name, dims, ggml_type, n_bytes)
    }

    /// Declares a tensor with an explicit byte size, for types outside [`GgmlType::TABLE`]
    /// (for a type in the table the size must match).
    pub fn add_tensor_with_size(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        n_bytes: u64,
    ) -> Result<(), GgufError> {
        let name = name.into();
        if let Ok(expected) = ggml_type.tensor_bytes(dims) {
            if expected != n_bytes {
                return Err(bad(format!(
                    "tensor `{name}`: {ggml_type} {dims:?} takes {expected} bytes, not {n_bytes}"
                )));
            }
        }
        self.push_tensor(name, dims, ggml_type, n_bytes)
    }

    fn push_tensor(
        &mut self,
        name: String,
        dims: &[u64],
        ggml_type: GgmlType,
        n_bytes: u64,
    ) -> Result<(), GgufError> {
        if name.is_empty() || name.len() > MAX_TENSOR_NAME {
            return Err(bad(format!(
                "tensor name `{name}` must be 1 to {MAX_TENSOR_NAME} bytes long (llama.cpp's limit)"
            )));
        }
        if dims.is_empty() || dims.len() > GGUF_MAX_DIMS {
            return Err(bad(format!(
                "tensor `{name}`: {} dimensions (1 to {GGUF_MAX_DIMS} are allowed)",
                dims.len()
            )));
        }
        if self.names.contains(&name) {
            return Err(bad(format!("tensor `{name}` added twice")));
        }
        self.names.insert(name.clone());
        self.tensors.push(PlannedTensor {
            name,
            dims: dims.to_vec(),
            ggml_type,
            n_bytes,
            offset: 0,
        });
        Ok(())
    }

    /// Creates `path` and writes the header; returns the writer that takes the tensor data.
    pub fn create(
        self,
        path: impl AsRef<Path>,
    ) -> Result<GgufTensorWriter<BufWriter<File>>, GgufError> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.write_header(BufWriter::with_capacity(1 << 20, file), path)
    }

    /// Writes the header to `out`; `label` names the destination in errors.
    pub fn write_header<W: Write>(
        mut self,
        mut out: W,
        label: impl AsRef<Path>,
    ) -> Result<GgufTensorWriter<W>, GgufError> {
        let label = label.as_ref().to_path_buf();
        let mut offset = 0u64;
        for t in &mut self.tensors {
            t.offset = offset;
            offset = t
                .n_bytes
                .checked_add(offset)
                .and_then(|end| align_up(end, self.alignment))
                .ok_or_else(|| bad("total tensor size overflows u64"))?;
        }

        let mut buf = Vec::new();
        buf.extend_from_slice(&GGUF_MAGIC);
        buf.extend_from_slice(&GGUF_VERSION.to_le_bytes());
        buf.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut buf, key);
            buf.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut buf, value);
        }
        for t in &self.tensors {
            put_str(&mut buf, &t.name);
            buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                buf.extend_from_slice(&d.to_le_bytes());
            }
            buf.extend_from_slice(&t.ggml_type.0.to_le_bytes());
            buf.extend_from_slice(&t.offset.to_le_bytes());
        }
        let header_len = buf.len() as u64;
        let padded = align_up(header_len, self.alignment).unwrap_or(header_len);
        buf.resize(padded as usize, 0);
        out.write_all(&buf).map_err(|source| GgufError::Io {
            path: label.clone(),
            source,
        })?;
        Ok(GgufTensorWriter {
            out,
            label,
            tensors: self.tensors,
            alignment: self.alignment,
            current: 0,
            written: 0,
        })
    }
}

/// Takes the tensor data after [`GgufWriter::create`] wrote the header: each tensor's bytes
/// in declaration order, whole ([`write_tensor`](Self::write_tensor)) or in pieces
/// ([`write_tensor_data`](Self::write_tensor_data)); padding is inserted automatically.
pub struct GgufTensorWriter<W: Write> {
    out: W,
    label: PathBuf,
    tensors: Vec<PlannedTensor>,
    alignment: u64,
    /// Index of the tensor being written.
    current: usize,
    /// Bytes of it written so far.
    written: u64,
}

impl<W: Write> GgufTensorWriter<W> {
    fn io(&self, source: std::io::Error) -> GgufError {
        GgufError::Io {
            path: self.label.clone(),
            source,
        }
    }

    fn err(&self, msg: impl Into<String>) -> GgufError {
        GgufError::Input {
            source_name: format!("GGUF writer for {}", self.label.display()),
            msg: msg.into(),
        }
    }

    /// The tensor whose bytes come next and its size (possibly a zero-sized one, which needs no
    /// call), or `None` when all are written.
    pub fn next_tensor(&self) -> Option<(&str, u64)> {
        self.tensors
            .get(self.current)
            .map(|t| (t.name.as_str(), t.n_bytes))
    }

    /// Pads the current tensor and moves to the next.
    fn advance(&mut self) -> Result<(), GgufError> {
        let Some(t) = self.tensors.get(self.current) else {
            return Ok(());
        };
        let end = align_up(t.n_bytes, self.alignment).unwrap_or(t.n_bytes);
        let mut left = (end - t.n_bytes) as usize;
        let pad = [0u8; 256];
        while left > 0 {
            let n = left.min(pad.len());
            self.out
                .write_all(pad.get(..n).unwrap_or(&[]))
                .map_err(|e| self.io(e))?;
            left -= n;
        }
        self.current += 1;
        self.written = 0;
        Ok(())
    }

    /// Moves past zero-sized tensors (they need no data), stopping at `name`.
    fn skip_zero_sized(&mut self, name: Option<&str>) -> Result<(), GgufError> {
        while let Some(t) = self.tensors.get(self.current) {
            if t.n_bytes != 0 || Some(t.name.as_str()) == name {
                break;
            }
            self.advance()?;
        }
        Ok(())
    }

    /// Writes all of tensor `name`'s bytes; it must be the next tensor (zero-sized tensors
    /// before it may be skipped).
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<(), GgufError> {
        self.skip_zero_sized(Some(name))?;
        match self.tensors.get(self.current) {
            None => Err(self.err(format!("tensor `{name}`: all tensors are already written"))),
            Some(t) if t.name != name => Err(self.err(format!(
                "tensor `{name}` written out of order: `{}` comes next",
                t.name
            ))),
            Some(t) if self.written != 0 || data.len() as u64 != t.n_bytes => {
                Err(self.err(format!(
                    "tensor `{name}`: got {} bytes, expected {} ({} {:?})",
                    data.len(),
                    t.n_bytes,
                    t.ggml_type,
                    t.dims
                )))
            }
            Some(_) if data.is_empty() => self.advance(),
            Some(_) => self.write_tensor_data(data),
        }
    }

    /// Appends bytes to the current tensor (skipping zero-sized ones), moving to the next
    /// tensor when it is complete. A piece may not run past the end of the current tensor.
    pub fn write_tensor_data(&mut self, data: &[u8]) -> Result<(), GgufError> {
        if data.is_empty() {
            return Ok(());
        }
        self.skip_zero_sized(None)?;
        let Some(t) = self.tensors.get(self.current) else {
            return Err(self.err(format!(
                "{} bytes written after the last tensor",
                data.len()
            )));
        };
        let left = t.n_bytes - self.written;
        if data.len() as u64 > left {
            return Err(self.err(format!(
                "tensor `{}`: {} more bytes, but only {left} of its {} remain",
                t.name,
                data.len(),
                t.n_bytes
            )));
        }
        let complete = data.len() as u64 == left;
        self.out.write_all(data).map_err(|e| self.io(e))?;
        self.written += data.len() as u64;
        if complete {
            self.advance()?;
        }
        Ok(())
    }

    /// Checks that every tensor was written, flushes, and returns the destination.
    pub fn finish(mut self) -> Result<W, GgufError> {
        self.skip_zero_sized(None)?;
        if let Some((name, n)) = self.next_tensor() {
            return Err(self.err(format!(
                "finished before tensor `{name}` was complete ({} of {n} bytes written)",
                self.written
            )));
        }
        self.out.flush().map_err(|e| self.io(e))?;
        Ok(self.out)
    }
}
