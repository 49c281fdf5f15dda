//! GGUF files (llama.cpp's single-file format): a reader, a streaming writer, and the
//! architecture specifics — `deepseek2`/`deepseek32`, `qwen2` and `llama` (HF config.json and tokenizer.json
//! rebuilt from metadata, the tensor name table, the `kv_b_proj` ↔ `attn_k_b`/`attn_v_b` layout
//! rule, the `llama` RoPE row permutation).
//!
//! Layout of a GGUF v2/v3 file (all little-endian):
//! ```text
//! "GGUF" u32 version  u64 n_tensors  u64 n_kv
//! n_kv ×      { string key, u32 value_type, value }
//! n_tensors × { string name, u32 n_dims, u64 dims[n_dims] (innermost first), u32 ggml_type, u64 offset }
//! zero padding to `general.alignment` (default 32)
//! tensor data; each tensor starts at data_start + offset, offset a multiple of the alignment
//! ```
//! A string is `u64 len` + UTF-8 bytes; an array is `u32 elem_type, u64 count` + elements.
//!
//! Tensor types are plain ggml type ids ([`GgmlType`]) with a local table of block sizes; the
//! block formats themselves belong to `moela-kernels`. A tensor of a type that is not in the
//! table can be listed, but reading its bytes is an error.

mod deepseek2;
mod deepseek4;
mod dense;
mod names;
mod reader;
mod tokenizer;
mod writer;

use std::fmt;
use std::path::PathBuf;

pub use deepseek2::{deepseek2_config_json, is_deepseek_v3, MLA_ARCHS};
pub use deepseek4::deepseek4_config_json;
pub use dense::{dense_config_json, DENSE_ARCHITECTURES};
pub use names::{
    gguf_name_to_hf, hf_name_to_gguf, kv_b_from_split, permute_rope_rows, rope_permuted,
    split_kv_b, unpermute_rope_rows, ExpertProj, Family, GgufTarget, HfName, KvBDims, NameRule,
    RopeHeads, RuleKind, GLOBAL_NAMES, LAYER_NAMES, ROPE_PERMUTED,
};
pub use reader::{GgufFile, GgufTensorInfo};
pub use tokenizer::{
    tokenizer_json_from_gguf, write_tokenizer_metadata, write_tokenizer_metadata_padded, TokenType,
};
pub use writer::{GgufTensorWriter, GgufWriter};

use crate::error::LoadError;

/// `GGUF` as the first four bytes.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The version the writer produces.
pub const GGUF_VERSION: u32 = 3;
/// Tensor data alignment when `general.alignment` is absent.
pub const GGUF_DEFAULT_ALIGNMENT: u32 = 32;
/// The metadata key that overrides the alignment.
pub const KEY_ALIGNMENT: &str = "general.alignment";
/// The metadata key naming the architecture (`deepseek2`); other keys are prefixed with it.
pub const KEY_ARCHITECTURE: &str = "general.architecture";
/// ggml's `GGML_MAX_DIMS`.
pub const GGUF_MAX_DIMS: usize = 4;

/// Everything that can go wrong reading or writing GGUF. Each variant names the file (or the
/// input) and, where there is one, the metadata key or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not well-formed GGUF (truncated, bad magic, absurd sizes, ...).
    #[error("{path}: {msg}")]
    Malformed { path: PathBuf, msg: String },
    /// A metadata key is missing, of the wrong type, or has a value we cannot use.
    #[error("{path}: metadata key `{key}`: {msg}")]
    Key {
        path: PathBuf,
        key: String,
        msg: String,
    },
    /// A tensor is missing, of an unusable type, or out of the file's bounds.
    #[error("{path}: tensor `{name}`: {msg}")]
    Tensor {
        path: PathBuf,
        name: String,
        msg: String,
    },
    /// Invalid input handed to the writer or to a conversion helper (`source_name` says which:
    /// `tokenizer.json`, `GGUF writer`, `attn_k_b`, ...).
    #[error("{source_name}: {msg}")]
    Input { source_name: String, msg: String },
}

impl GgufError {
    pub(crate) fn input(source_name: impl Into<String>, msg: impl Into<String>) -> GgufError {
        GgufError::Input {
            source_name: source_name.into(),
            msg: msg.into(),
        }
    }
}

impl From<GgufError> for LoadError {
    fn from(e: GgufError) -> LoadError {
        match e {
            GgufError::Io { path, source } => LoadError::Io { path, source },
            GgufError::Malformed { path, msg } => LoadError::File { path, msg },
            GgufError::Key { path, key, msg } => LoadError::File {
                path,
                msg: format!("metadata key `{key}`: {msg}"),
            },
            GgufError::Tensor { path, name, msg } => LoadError::File {
                path,
                msg: format!("tensor `{name}`: {msg}"),
            },
            GgufError::Input { source_name, msg } => LoadError::File {
                path: PathBuf::from(source_name),
                msg,
            },
        }
    }
}

/// The type tag of a metadata value (GGUF `gguf_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgufValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl GgufValueType {
    /// The type for a tag read from a file.
    pub fn from_u32(t: u32) -> Option<GgufValueType> {
        use GgufValueType::*;
        Some(match t {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// Lower-case name (`u32`, `string`, `array`, ...), as used in error messages.
    pub fn name(self) -> &'static str {
        use GgufValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }

    /// Bytes of one value of a fixed-size type; `None` for strings and arrays.
    pub fn fixed_size(self) -> Option<usize> {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => Some(1),
            U16 | I16 => Some(2),
            U32 | I32 | F32 => Some(4),
            U64 | I64 | F64 => Some(8),
            String | Array => None,
        }
    }

    /// The fewest bytes one value can take in a file (used to bound element counts before
    /// allocating): a string is at least its 8-byte length, an array its 12-byte header.
    pub(crate) fn min_size(self) -> usize {
        match self {
            GgufValueType::String => 8,
            GgufValueType::Array => 12,
            t => t.fixed_size().unwrap_or(1),
        }
    }
}

impl fmt::Display for GgufValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// An array value: its element type (kept for empty arrays) and the elements, each of that
/// type. Arrays may nest (`elem_type == Array`), e.g. an array of string arrays.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufArray {
    pub elem_type: GgufValueType,
    pub items: Vec<GgufValue>,
}

impl GgufValue {
    pub fn value_type(&self) -> GgufValueType {
        use GgufValueType as T;
        match self {
            GgufValue::U8(_) => T::U8,
            GgufValue::I8(_) => T::I8,
            GgufValue::U16(_) => T::U16,
            GgufValue::I16(_) => T::I16,
            GgufValue::U32(_) => T::U32,
            GgufValue::I32(_) => T::I32,
            GgufValue::F32(_) => T::F32,
            GgufValue::Bool(_) => T::Bool,
            GgufValue::String(_) => T::String,
            GgufValue::Array(_) => T::Array,
            GgufValue::U64(_) => T::U64,
            GgufValue::I64(_) => T::I64,
            GgufValue::F64(_) => T::F64,
        }
    }

    /// `string`, `u32`, or `array of string` (nested arrays say so too).
    pub fn type_description(&self) -> String {
        match self {
            GgufValue::Array(a) => match a.items.first() {
                Some(first) => format!("array of {}", first.type_description()),
                None => format!("array of {}", a.elem_type),
            },
            v => v.value_type().name().to_string(),
        }
    }

    /// An array of strings.
    pub fn string_array<I, S>(items: I) -> GgufValue
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        GgufValue::Array(GgufArray {
            elem_type: GgufValueType::String,
            items: items
                .into_iter()
                .map(|s| GgufValue::String(s.into()))
                .collect(),
        })
    }

    /// An array of `i32` (the type llama.cpp uses for `tokenizer.ggml.token_type`).
    pub fn i32_array(items: impl IntoIterator<Item = i32>) -> GgufValue {
        GgufValue::Array(GgufArray {
            elem_type: GgufValueType::I32,
            items: items.into_iter().map(GgufValue::I32).collect(),
        })
    }

    /// An array of `f32`.
    pub fn f32_array(items: impl IntoIterator<Item = f32>) -> GgufValue {
        GgufValue::Array(GgufArray {
            elem_type: GgufValueType::F32,
            items: items.into_iter().map(GgufValue::F32).collect(),
        })
    }

    /// Any integer type, if the value is one and is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type whose value fits in an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// An `f32` or `f64`. (`f32` values are widened through their shortest decimal form, so
    /// `1e-6f32` reads as `1e-6`, not `9.99999997e-7`.)
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(f32_to_f64_decimal(v)),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The value as JSON (for `inspect` and tests): integers and booleans as such, floats via
    /// their shortest decimal form (non-finite ones as strings), arrays as arrays.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        let float = |x: f64| {
            serde_json::Number::from_f64(x)
                .map(J::Number)
                .unwrap_or_else(|| J::String(x.to_string()))
        };
        match self {
            GgufValue::U8(v) => J::from(*v),
            GgufValue::I8(v) => J::from(*v),
            GgufValue::U16(v) => J::from(*v),
            GgufValue::I16(v) => J::from(*v),
            GgufValue::U32(v) => J::from(*v),
            GgufValue::I32(v) => J::from(*v),
            GgufValue::U64(v) => J::from(*v),
            GgufValue::I64(v) => J::from(*v),
            GgufValue::F32(v) => float(f32_to_f64_decimal(*v)),
            GgufValue::F64(v) => float(*v),
            GgufValue::Bool(b) => J::Bool(*b),
            GgufValue::String(s) => J::String(s.clone()),
            GgufValue::Array(a) => J::Array(a.items.iter().map(GgufValue::to_json).collect()),
        }
    }
}

/// `x` widened through its shortest round-trip decimal representation, so that metadata
/// written as `f32` (e.g. `rms_norm_eps = 1e-6`) comes back as the decimal the converter meant.
pub fn f32_to_f64_decimal(x: f32) -> f64 {
    if !x.is_finite() {
        return f64::from(x);
    }
    format!("{x}").parse::<f64>().unwrap_or(f64::from(x))
}

/// A ggml tensor type id (`enum ggml_type`). Only the ids in [`GgmlType::layout`]'s table have a
/// known byte size; the rest can be listed but not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(pub u32);

/// How a ggml type packs elements: `block_size` elements per `type_size`-byte block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLayout {
    pub block_size: u64,
    pub type_size: u64,
}

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q2_K: GgmlType = GgmlType(10);
    pub const Q3_K: GgmlType = GgmlType(11);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const Q8_K: GgmlType = GgmlType(15);
    pub const I8: GgmlType = GgmlType(24);
    pub const I16: GgmlType = GgmlType(25);
    pub const I32: GgmlType = GgmlType(26);
    pub const I64: GgmlType = GgmlType(27);
    pub const F64: GgmlType = GgmlType(28);
    pub const BF16: GgmlType = GgmlType(30);
    /// 32 FP4 (e2m1) values with one e8m0 exponent byte (`moela_kernels::mxfp4`).
    pub const MXFP4: GgmlType = GgmlType(39);

    /// `(id, name, block_size, type_size)` for every type whose byte size we know. Sizes are
    /// ggml's (`ggml_type_traits`), checked against the `gguf` Python package's
    /// `GGML_QUANT_SIZES` by the fixture test. (Q8_1, an activation format never stored in
    /// files, is left out: ggml's block is 36 bytes, gguf-py says 40.)
    pub const TABLE: &'static [(u32, &'static str, u64, u64)] = &[
        (0, "F32", 1, 4),
        (1, "F16", 1, 2),
        (2, "Q4_0", 32, 18),
        (3, "Q4_1", 32, 20),
        (6, "Q5_0", 32, 22),
        (7, "Q5_1", 32, 24),
        (8, "Q8_0", 32, 34),
        (10, "Q2_K", 256, 84),
        (11, "Q3_K", 256, 110),
        (12, "Q4_K", 256, 144),
        (13, "Q5_K", 256, 176),
        (14, "Q6_K", 256, 210),
        (15, "Q8_K", 256, 292),
        (24, "I8", 1, 1),
        (25, "I16", 1, 2),
        (26, "I32", 1, 4),
        (27, "I64", 1, 8),
        (28, "F64", 1, 8),
        (30, "BF16", 1, 2),
        (39, "MXFP4", 32, 17),
    ];

    fn entry(self) -> Option<&'static (u32, &'static str, u64, u64)> {
        Self::TABLE.iter().find(|e| e.0 == self.0)
    }

    /// ggml's name (`Q8_0`), or `None` for ids outside the table.
    pub fn name(self) -> Option<&'static str> {
        self.entry().map(|e| e.1)
    }

    /// Block size and bytes per block, or `None` for ids outside the table.
    pub fn layout(self) -> Option<BlockLayout> {
        self.entry().map(|e| BlockLayout {
            block_size: e.2,
            type_size: e.3,
        })
    }

    /// Bytes of a tensor with these ggml dims (innermost first). Errors say why: unknown type,
    /// a row length that is not a whole number of blocks, or a size that overflows.
    pub fn tensor_bytes(self, dims: &[u64]) -> Result<u64, String> {
        let layout = self.layout().ok_or_else(|| {
            format!(
                "ggml type {} is not one this reader knows the size of",
                self.0
            )
        })?;
        let ne0 = dims.first().copied().unwrap_or(1);
        if ne0 % layout.block_size != 0 {
            return Err(format!(
                "row length {ne0} is not a multiple of the {} block size {}",
                self, layout.block_size
            ));
        }
        let rows = dims
            .iter()
            .skip(1)
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or("element count overflows u64")?;
        (ne0 / layout.block_size)
            .checked_mul(layout.type_size)
            .and_then(|row| row.checked_mul(rows))
            .ok_or_else(|| "byte size overflows u64".to_string())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "type {}", self.0),
        }
    }
}

/// Rounds `offset` up to a multiple of `alignment` (a power of two), `None` on overflow.
pub(crate) fn align_up(offset: u64, alignment: u64) -> Option<u64> {
    let mask = alignment.checked_sub(1)?;
    offset.checked_add(mask).map(|v| v & !mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_of_known_types() {
        assert_eq!(GgmlType::F32.tensor_bytes(&[3, 5]), Ok(60));
        assert_eq!(GgmlType::Q8_0.tensor_bytes(&[64, 2]), Ok(2 * 2 * 34));
        assert_eq!(GgmlType::Q4_K.tensor_bytes(&[256, 3]), Ok(3 * 144));
        assert_eq!(
            GgmlType::MXFP4.tensor_bytes(&[64, 3, 2]),
            Ok(2 * 3 * 2 * 17)
        );
        assert!(GgmlType::MXFP4.tensor_bytes(&[48, 1]).is_err());
        assert_eq!(GgmlType::MXFP4.to_string(), "MXFP4");
        assert!(GgmlType::Q4_0.tensor_bytes(&[33, 1]).is_err());
        assert!(GgmlType(99).tensor_bytes(&[1]).is_err());
        assert!(GgmlType::F32.tensor_bytes(&[u64::MAX, u64::MAX]).is_err());
        assert_eq!(GgmlType::BF16.to_string(), "BF16");
        assert_eq!(GgmlType(99).to_string(), "type 99");
    }

    #[test]
    fn align() {
        assert_eq!(align_up(0, 32), Some(0));
        assert_eq!(align_up(1, 32), Some(32));
        assert_eq!(align_up(64, 32), Some(64));
        assert_eq!(align_up(u64::MAX - 3, 32), None);
    }

    #[test]
    fn f32_widening_keeps_the_decimal() {
        assert_eq!(f32_to_f64_decimal(1e-6), 1e-6);
        assert_eq!(f32_to_f64_decimal(0.0707), 0.0707);
        assert_eq!(f32_to_f64_decimal(2.5), 2.5);
        assert!(f32_to_f64_decimal(f32::NAN).is_nan());
    }

    #[test]
    fn integer_views() {
        assert_eq!(GgufValue::I32(-1).as_u64(), None);
        assert_eq!(GgufValue::I32(7).as_u64(), Some(7));
        assert_eq!(GgufValue::U64(u64::MAX).as_i64(), None);
        assert_eq!(GgufValue::F32(1.0).as_u64(), None);
    }
}
