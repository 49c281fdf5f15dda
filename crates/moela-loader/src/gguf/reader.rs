//! Reading GGUF v2/v3: the header, metadata and tensor infos are parsed and checked at open;
//! tensor data stays in the memory map.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moela_kernels::mmap::{map_readonly, Mmap};

use super::{
    align_up, GgmlType, GgufArray, GgufError, GgufValue, GgufValueType, GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC, GGUF_MAX_DIMS, KEY_ALIGNMENT, KEY_ARCHITECTURE,
};

/// Arrays nested deeper than this are rejected (real files nest at most once).
const MAX_ARRAY_DEPTH: usize = 8;

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// ggml order: innermost (contiguous) dimension first. A linear weight `[out, in]` is
    /// stored as `{in, out}`.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset of the data from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Row-major shape, outermost first (the reverse of `dims`), as the checkpoints write it.
    pub fn shape(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// Number of elements, `None` on overflow.
    pub fn n_elements(&self) -> Option<u64> {
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
    }

    /// Bytes of data; an error for a type outside [`GgmlType::TABLE`] or inconsistent dims.
    pub fn n_bytes(&self) -> Result<u64, String> {
        self.ggml_type.tensor_bytes(&self.dims)
    }
}

/// An opened GGUF file: parsed metadata and tensor infos over a shared read-only mapping.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian reader over the mapped bytes; errors are plain messages
/// that the caller attaches to a key or tensor.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or_else(|| {
                format!(
                    "truncated: {what} needs {n} bytes at offset {}, but the file ends at {}",
                    self.pos,
                    self.buf.len()
                )
            })?;
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let s = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count or length that must fit in the rest of the file at `min_size` bytes each.
    fn count(&mut self, what: &str, min_size: usize) -> Result<usize, String> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = usize::try_from(n).ok().filter(|&n| {
            n.checked_mul(min_size.max(1))
                .is_some_and(|b| b <= self.remaining())
        });
        fits.ok_or_else(|| {
            format!(
                "{what} {n} (at offset {at}) cannot fit in the {} bytes left in the file",
                self.remaining()
            )
        })
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let at = self.pos;
        let len = self.count(&format!("{what} length"), 1)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| format!("{what} at offset {at} is not valid UTF-8 ({e})"))
    }

    fn value(&mut self, ty: GgufValueType, depth: usize) -> Result<GgufValue, String> {
        use GgufValueType as T;
        Ok(match ty {
            T::U8 => GgufValue::U8(u8::from_le_bytes(self.array("u8 value")?)),
            T::I8 => GgufValue::I8(i8::from_le_bytes(self.array("i8 value")?)),
            T::U16 => GgufValue::U16(u16::from_le_bytes(self.array("u16 value")?)),
            T::I16 => GgufValue::I16(i16::from_le_bytes(self.array("i16 value")?)),
            T::U32 => GgufValue::U32(self.u32("u32 value")?),
            T::I32 => GgufValue::I32(i32::from_le_bytes(self.array("i32 value")?)),
            T::F32 => GgufValue::F32(f32::from_le_bytes(self.array("f32 value")?)),
            // The spec says 0 or 1; like llama.cpp, read any non-zero byte as true.
            T::Bool => GgufValue::Bool(u8::from_le_bytes(self.array("bool value")?) != 0),
            T::String => GgufValue::String(self.string("string value")?),
            T::U64 => GgufValue::U64(self.u64("u64 value")?),
            T::I64 => GgufValue::I64(i64::from_le_bytes(self.array("i64 value")?)),
            T::F64 => GgufValue::F64(f64::from_le_bytes(self.array("f64 value")?)),
            T::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "arrays nested more than {MAX_ARRAY_DEPTH} deep at offset {}",
                        self.pos
                    ));
                }
                let at = self.pos;
                let raw = self.u32("array element type")?;
                let elem_type = GgufValueType::from_u32(raw)
                    .ok_or_else(|| format!("unknown array element type {raw} at offset {at}"))?;
                let n = self.count("array length", elem_type.min_size())?;
                // `n` fits in the file, but an element in memory is larger than in the file;
                // grow as elements actually parse rather than trusting the count up front.
                let mut items = Vec::with_capacity(n.min(1 << 16));
                for i in 0..n {
                    let item = self
                        .value(elem_type, depth + 1)
                        .map_err(|m| format!("array element {i}: {m}"))?;
                    items.push(item);
                }
                GgufValue::Array(GgufArray { elem_type, items })
            }
        })
    }
}

fn value_type(c: &mut Cursor<'_>) -> Result<GgufValueType, String> {
    let at = c.pos;
    let raw = c.u32("value type")?;
    GgufValueType::from_u32(raw).ok_or_else(|| format!("unknown value type {raw} at offset {at}"))
}

impl GgufFile {
    /// Opens and maps `path`, parsing and checking everything but the tensor data.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let map = map_readonly(&file).map_err(io)?;
        Self::parse(path.to_path_buf(), Arc::new(map))
    }

    fn parse(path: PathBuf, map: Arc<Mmap>) -> Result<GgufFile, GgufError> {
        let malformed = |msg: String| GgufError::Malformed {
            path: path.clone(),
            msg,
        };
        let buf: &[u8] = &map;
        let mut c = Cursor { buf, pos: 0 };

        let magic = c.array::<4>("the magic").map_err(|_| {
            malformed(format!(
                "not a GGUF file: only {} bytes long (the header alone is 24)",
                buf.len()
            ))
        })?;
        if magic != GGUF_MAGIC {
            return Err(malformed(format!(
                "not a GGUF file: starts with {magic:02x?} instead of \"GGUF\""
            )));
        }
        let version = c.u32("the version").map_err(malformed)?;
        match version {
            2 | 3 => {}
            1 => {
                return Err(malformed(
                    "GGUF version 1 is not supported (versions 2 and 3 are)".into(),
                ))
            }
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err(malformed(
                    "big-endian GGUF is not supported (the version field reads byte-swapped)"
                        .into(),
                ))
            }
            v => {
                return Err(malformed(format!(
                    "unsupported GGUF version {v} (versions 2 and 3 are supported)"
                )))
            }
        }
        // Each tensor info takes at least 24 bytes and each metadata entry at least 13.
        let n_tensors = c.count("tensor count", 24).map_err(malformed)?;
        let n_kv = c.count("metadata entry count", 13).map_err(malformed)?;

        let mut metadata = Vec::with_capacity(n_kv.min(1 << 12));
        let mut metadata_index = HashMap::with_capacity(n_kv.min(1 << 12));
        for i in 0..n_kv {
            let key = c
                .string("metadata key")
                .map_err(|m| malformed(format!("metadata entry {i}: {m}")))?;
            let key_err = |msg: String| GgufError::Key {
                path: path.clone(),
                key: key.clone(),
                msg,
            };
            let ty = value_type(&mut c).map_err(key_err)?;
            let value = c.value(ty, 0).map_err(key_err)?;
            if metadata_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(key_err("appears twice in the metadata".into()));
            }
            metadata.push((key, value));
        }

        let alignment = match metadata_index
            .get(KEY_ALIGNMENT)
            .and_then(|&i| metadata.get(i))
        {
            None => u64::from(GGUF_DEFAULT_ALIGNMENT),
            Some((_, GgufValue::U32(a))) if *a != 0 && a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => {
                return Err(GgufError::Key {
                    path: path.clone(),
                    key: KEY_ALIGNMENT.into(),
                    msg: format!(
                        "must be a u32 power of two, found {} {}",
                        v.type_description(),
                        v.to_json()
                    ),
                })
            }
        };

        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16));
        let mut tensor_index = HashMap::with_capacity(n_tensors.min(1 << 16));
        for i in 0..n_tensors {
            let name = c
                .string("tensor name")
                .map_err(|m| malformed(format!("tensor info {i}: {m}")))?;
            let tensor_err = |msg: String| GgufError::Tensor {
                path: path.clone(),
                name: name.clone(),
                msg,
            };
            let n_dims = c.u32("dimension count").map_err(tensor_err)?;
            let n_dims = usize::try_from(n_dims)
                .ok()
                .filter(|&n| n <= GGUF_MAX_DIMS)
                .ok_or_else(|| {
                    tensor_err(format!(
                        "{n_dims} dimensions (at most {GGUF_MAX_DIMS} are allowed)"
                    ))
                })?;
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64("dimension").map_err(tensor_err)?);
            }
            let ggml_type = GgmlType(c.u32("tensor type").map_err(tensor_err)?);
            let offset = c.u64("tensor data offset").map_err(tensor_err)?;
            let info = GgufTensorInfo {
                name: name.clone(),
                dims,
                ggml_type,
                offset,
            };
            if info.n_elements().is_none() {
                return Err(tensor_err(format!(
                    "dimensions {:?} overflow the element count",
                    info.dims
                )));
            }
            if offset % alignment != 0 {
                return Err(tensor_err(format!(
                    "data offset {offset} is not a multiple of the alignment {alignment}"
                )));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(tensor_err("appears twice in the tensor list".into()));
            }
            tensors.push(info);
        }

        let header_end = c.pos as u64;
        let data_offset = align_up(header_end, alignment)
            .ok_or_else(|| malformed("header size overflows".into()))?;
        let file = GgufFile {
            path: path.clone(),
            map: map.clone(),
            version,
            alignment,
            data_offset,
            metadata,
            metadata_index,
            tensors,
            tensor_index,
        };
        // Check every tensor whose size we know against the file size now, so that a
        // truncated file fails at open rather than at first use.
        for t in &file.tensors {
            match t.n_bytes() {
                Ok(_) => {
                    file.tensor_range(t)?;
                }
                Err(_) if t.ggml_type.layout().is_none() => {
                    let start = data_offset.checked_add(t.offset);
                    if start.is_none_or(|s| s > buf.len() as u64) {
                        return Err(GgufError::Tensor {
                            path: path.clone(),
                            name: t.name.clone(),
                            msg: format!(
                                "data offset {} lies past the end of the file ({} bytes)",
                                t.offset,
                                buf.len()
                            ),
                        });
                    }
                }
                Err(msg) => {
                    return Err(GgufError::Tensor {
                        path: path.clone(),
                        name: t.name.clone(),
                        msg,
                    })
                }
            }
        }
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Tensor data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the data section in the file (tensor offsets are relative to it).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The shared mapping of the whole file, for zero-copy use of tensor data together with
    /// [`GgufFile::tensor_range`].
    pub fn mmap(&self) -> &Arc<Mmap> {
        &self.map
    }

    /// A metadata value.
    pub fn metadata(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index
            .get(key)
            .and_then(|&i| self.metadata.get(i))
            .map(|(_, v)| v)
    }

    /// All metadata, in file order.
    pub fn metadata_entries(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// All tensor infos, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index
            .get(name)
            .and_then(|&i| self.tensors.get(i))
    }

    /// `general.architecture` (`deepseek2`).
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str(KEY_ARCHITECTURE)
    }

    /// `"{architecture}.{suffix}"`, the spelling of architecture-specific keys.
    pub fn arch_key(&self, suffix: &str) -> Result<String, GgufError> {
        Ok(format!("{}.{suffix}", self.architecture()?))
    }

    fn tensor_error(&self, name: &str, msg: impl Into<String>) -> GgufError {
        GgufError::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            msg: msg.into(),
        }
    }

    /// The byte range of a tensor's data within [`GgufFile::mmap`].
    pub fn tensor_range(&self, info: &GgufTensorInfo) -> Result<Range<usize>, GgufError> {
        let n_bytes = info
            .n_bytes()
            .map_err(|m| self.tensor_error(&info.name, m))?;
        let start = self.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(n_bytes));
        let file_len = self.map.len() as u64;
        match (start, end) {
            (Some(s), Some(e)) if e <= file_len => Ok(s as usize..e as usize),
            _ => Err(self.tensor_error(
                &info.name,
                format!(
                    "data [{} + {}, {} bytes) runs past the end of the file ({file_len} bytes)",
                    self.data_offset, info.offset, n_bytes
                ),
            )),
        }
    }

    /// A tensor's bytes, borrowed from the mapping.
    pub fn tensor_bytes(&self, info: &GgufTensorInfo) -> Result<&[u8], GgufError> {
        let range = self.tensor_range(info)?;
        self.map
            .get(range)
            .ok_or_else(|| self.tensor_error(&info.name, "data out of bounds"))
    }

    /// The info and bytes of the tensor called `name` (an error if there is none).
    pub fn tensor_data(&self, name: &str) -> Result<(&GgufTensorInfo, &[u8]), GgufError> {
        let info = self
            .tensor(name)
            .ok_or_else(|| self.tensor_error(name, "not in the file"))?;
        Ok((info, self.tensor_bytes(info)?))
    }

    fn key_error(&self, key: &str, msg: impl Into<String>) -> GgufError {
        GgufError::Key {
            path: self.path.clone(),
            key: key.to_string(),
            msg: msg.into(),
        }
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        conv: fn(&'a GgufValue) -> Result<T, String>,
    ) -> Result<Option<T>, GgufError> {
        match self.metadata(key) {
            None => Ok(None),
            Some(v) => conv(v).map(Some).map_err(|m| self.key_error(key, m)),
        }
    }

    /// A metadata value that must be present.
    pub fn get(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.metadata(key)
            .ok_or_else(|| self.key_error(key, "missing"))
    }
}

fn wrong(expected: &str, v: &GgufValue) -> String {
    format!("expected {expected}, found {}", v.type_description())
}

fn conv_u64(v: &GgufValue) -> Result<u64, String> {
    match v.as_u64() {
        Some(x) => Ok(x),
        None if v.as_i64().is_some() => Err(format!("value {} is negative", v.to_json())),
        None => Err(wrong("an unsigned integer", v)),
    }
}

fn conv_u32(v: &GgufValue) -> Result<u32, String> {
    let x = conv_u64(v)?;
    u32::try_from(x).map_err(|_| format!("value {x} does not fit in u32"))
}

fn conv_usize(v: &GgufValue) -> Result<usize, String> {
    let x = conv_u64(v)?;
    usize::try_from(x).map_err(|_| format!("value {x} does not fit in usize"))
}

fn conv_i64(v: &GgufValue) -> Result<i64, String> {
    match v.as_i64() {
        Some(x) => Ok(x),
        None if v.as_u64().is_some() => Err(format!("value {} does not fit in i64", v.to_json())),
        None => Err(wrong("an integer", v)),
    }
}

fn conv_f64(v: &GgufValue) -> Result<f64, String> {
    if let Some(x) = v.as_f64() {
        return Ok(x);
    }
    // Integers are accepted where a float is expected (some converters write `10000`).
    v.as_i64()
        .map(|x| x as f64)
        .ok_or_else(|| wrong("a number", v))
}

fn conv_f32(v: &GgufValue) -> Result<f32, String> {
    match v {
        GgufValue::F32(x) => Ok(*x),
        _ => conv_f64(v).map(|x| x as f32),
    }
}

fn conv_bool(v: &GgufValue) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| wrong("a bool", v))
}

fn conv_str(v: &GgufValue) -> Result<&str, String> {
    v.as_str().ok_or_else(|| wrong("a string", v))
}

fn conv_array(v: &GgufValue) -> Result<&GgufArray, String> {
    v.as_array().ok_or_else(|| wrong("an array", v))
}

fn conv_str_array(v: &GgufValue) -> Result<Vec<&str>, String> {
    let a = v
        .as_array()
        .ok_or_else(|| wrong("an array of strings", v))?;
    a.items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .ok_or_else(|| format!("element {i}: {}", wrong("a string", item)))
        })
        .collect()
}

fn conv_i64_array(v: &GgufValue) -> Result<Vec<i64>, String> {
    let a = v
        .as_array()
        .ok_or_else(|| wrong("an array of integers", v))?;
    a.items
        .iter()
        .enumerate()
        .map(|(i, item)| conv_i64(item).map_err(|m| format!("element {i}: {m}")))
        .collect()
}

macro_rules! typed_getters {
    ($( $(#[$doc:meta])* $get:ident, $opt:ident -> $t:ty = $conv:ident; )*) => {
        impl GgufFile { $(
            $(#[$doc])*
            /// An error names the key when it is missing or of another type.
            pub fn $get(&self, key: &str) -> Result<$t, GgufError> {
                self.$opt(key)?.ok_or_else(|| self.key_error(key, "missing"))
            }
            $(#[$doc])*
            /// `Ok(None)` when the key is absent; an error when it has another type.
            pub fn $opt(&self, key: &str) -> Result<Option<$t>, GgufError> {
                self.typed(key, $conv)
            }
        )* }
    };
}

typed_getters! {
    /// Any integer type whose value fits.
    get_u32, opt_u32 -> u32 = conv_u32;
    /// Any non-negative integer.
    get_u64, opt_u64 -> u64 = conv_u64;
    /// Any non-negative integer that fits in `usize`.
    get_usize, opt_usize -> usize = conv_usize;
    /// Any integer type whose value fits.
    get_i64, opt_i64 -> i64 = conv_i64;
    /// An `f32` (or `f64` or integer, converted).
    get_f32, opt_f32 -> f32 = conv_f32;
    /// An `f64` or `f32` (widened through its shortest decimal form) or an integer.
    get_f64, opt_f64 -> f64 = conv_f64;
    /// A bool.
    get_bool, opt_bool -> bool = conv_bool;
    /// A string.
    get_str, opt_str -> &str = conv_str;
    /// An array of any element type.
    get_array, opt_array -> &GgufArray = conv_array;
    /// An array of strings.
    get_str_array, opt_str_array -> Vec<&str> = conv_str_array;
    /// An array of integers (any integer element type).
    get_i64_array, opt_i64_array -> Vec<i64> = conv_i64_array;
}
