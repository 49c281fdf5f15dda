//! Weight element types and the crate's error type.

use std::fmt;

/// How a weight matrix is stored. Byte layouts of the ggml types match ggml/GGUF exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // ggml's names
pub enum DType {
    F32,
    F16,
    BF16,
    /// 32 values: f16 scale + 32 × i8.
    Q8_0,
    /// 32 values: f16 scale + 16 bytes of nibbles (value = (q − 8)·d).
    Q4_0,
    /// 256 values: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
    Q4_K,
    /// 256 values: `ql[128]`, `qh[64]`, i8 `scales[16]`, f16 `d`.
    Q6_K,
    /// DeepSeek's FP8: one E4M3 byte per value plus one f32 scale per 128×128 block
    /// (`[ceil(rows/128), ceil(cols/128)]`, value = fp8 · scale). No ggml equivalent.
    F8E4M3Block128,
    /// 32 values: e8m0 exponent byte `e` + 16 bytes of FP4 (e2m1) codes, low nibble of byte `j`
    /// = element `j`, high nibble = element `j+16`; value = e2m1(code) · 2^(e−127) (see
    /// [`crate::mxfp4`]). DeepSeek-V4's routed experts, repacked as llama.cpp does.
    MXFP4,
}

/// Side of the square blocks that share one FP8 scale.
pub const FP8_BLOCK: usize = 128;

impl DType {
    /// Every type, for tests and tools.
    pub const ALL: [DType; 9] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_K,
        DType::Q6_K,
        DType::F8E4M3Block128,
        DType::MXFP4,
    ];

    /// The `ggml_type` id used in GGUF tensor infos, if ggml has this type.
    pub fn ggml_type(self) -> Option<u32> {
        Some(match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q8_0 => 8,
            DType::Q4_K => 12,
            DType::Q6_K => 14,
            DType::BF16 => 30,
            DType::MXFP4 => 39,
            DType::F8E4M3Block128 => return None,
        })
    }

    /// The type with this `ggml_type` id, if we support it.
    pub fn from_ggml_type(id: u32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.ggml_type() == Some(id))
    }

    /// Values per block (1 for the plain float types and FP8, whose scales live apart).
    pub fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 | DType::F8E4M3Block128 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::MXFP4 => 32,
            DType::Q4_K | DType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F8E4M3Block128 => 1,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::MXFP4 => 17,
            DType::Q4_K => 144,
            DType::Q6_K => 210,
        }
    }

    /// Bytes of one row of `cols` values (`cols` must be a multiple of the block size).
    pub fn row_bytes(self, cols: usize) -> Result<usize, KernelError> {
        if !cols.is_multiple_of(self.block_size()) {
            return Err(KernelError::BadCols {
                dtype: self,
                cols,
                block: self.block_size(),
            });
        }
        (cols / self.block_size())
            .checked_mul(self.type_size())
            .ok_or(KernelError::TooLarge {
                dtype: self,
                rows: 1,
                cols,
            })
    }

    /// Bytes of a `[rows, cols]` matrix in this type's block layout (checked: a row length
    /// that is not whole blocks or a size past `usize` is an error).
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> Result<usize, KernelError> {
        self.row_bytes(cols)?
            .checked_mul(rows)
            .ok_or(KernelError::TooLarge {
                dtype: self,
                rows,
                cols,
            })
    }

    /// True for the block-quantized formats with their scales inside the blocks (the GGUF
    /// quant types). All but `MXFP4` quantize the activations in a matmul; `MXFP4` multiplies
    /// exact f32 weight values with f32 activations.
    pub fn is_quantized(self) -> bool {
        matches!(
            self,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_K | DType::Q6_K | DType::MXFP4
        )
    }

    /// Lower-case name as used on the command line (`f32`, `q4_k`, `fp8`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_K => "q4_k",
            DType::Q6_K => "q6_k",
            DType::F8E4M3Block128 => "fp8",
            DType::MXFP4 => "mxfp4",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DType {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<DType, KernelError> {
        let l = s.to_ascii_lowercase();
        DType::ALL
            .into_iter()
            .find(|d| d.name() == l || (l == "f8_e4m3" && *d == DType::F8E4M3Block128))
            .ok_or(KernelError::UnknownType(s.to_string()))
    }
}

/// Errors from building weight matrices.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("{dtype}: {cols} columns is not a multiple of the block size {block}")]
    BadCols {
        dtype: DType,
        cols: usize,
        block: usize,
    },
    #[error("{dtype} [{rows}, {cols}]: expected {expected} bytes of data, got {got}")]
    BadLength {
        dtype: DType,
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("[{rows}, {cols}]: expected {expected} f32 values, got {got}")]
    BadF32Len {
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("fp8 [{rows}, {cols}]: expected {expected} block scales, got {got}")]
    BadScales {
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("{0}: block scales are only used by fp8")]
    UnexpectedScales(DType),
    #[error(
        "{dtype} [{rows}, {cols}]: expected a [{rows}, {}] grid of one scale per {block} \
         values ({expected} scales), got {got}",
        cols / block
    )]
    BadScaleGrid {
        dtype: DType,
        rows: usize,
        cols: usize,
        block: usize,
        expected: usize,
        got: usize,
    },
    #[error(
        "fp4 codes [{rows}, {cols}]: expected {expected} bytes ([{rows}, {}], two e2m1 codes \
         per byte), got {got}",
        cols / 2
    )]
    BadCodes {
        rows: usize,
        cols: usize,
        expected: usize,
        got: usize,
    },
    #[error("{dtype} [{rows}, {cols}]: the size in bytes overflows usize")]
    TooLarge {
        dtype: DType,
        rows: usize,
        cols: usize,
    },
    #[error("mapped range {offset}+{len} lies outside the {file_len}-byte mapping")]
    BadMapRange {
        offset: usize,
        len: usize,
        file_len: usize,
    },
    #[error("unknown weight type {0:?}")]
    UnknownType(String),
}
