//! [`Storage`]: where a weight matrix's bytes live (owned, or a range of a shared mapping).
//! A leaf: it knows bytes and mappings, not formats or kernels.

use std::fmt;
use std::sync::Arc;

use crate::dtype::KernelError;
use crate::mmap::Mmap;

/// Where a matrix's bytes live.
#[derive(Clone)]
pub enum Storage {
    Owned(Vec<u8>),
    /// `len` bytes at `offset` of a shared read-only mapping (no copy).
    Mapped {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
    },
}

impl Storage {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned(v) => v,
            Storage::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }

    /// A mapped range, checked against the mapping's size.
    pub fn mapped(map: Arc<Mmap>, offset: usize, len: usize) -> Result<Storage, KernelError> {
        if offset.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(KernelError::BadMapRange {
                offset,
                len,
                file_len: map.len(),
            });
        }
        Ok(Storage::Mapped { map, offset, len })
    }
}

impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::Owned(v) => write!(f, "Owned({} bytes)", v.len()),
            Storage::Mapped { offset, len, .. } => write!(f, "Mapped({len} bytes at {offset})"),
        }
    }
}
