//! The bytes of a decoded store: in memory, or a read-only map of a cache file (so a dataset
//! larger than RAM lives in the page cache, which the kernel evicts, not in anonymous memory).

use std::fmt;
use std::fs::File;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// u8 HWC pixels of every image of a store, back to back.
///
/// Derefs to `[u8]`. Mutable access to a mapped buffer first copies it into memory (the cache
/// file is never written through), so editing pixels in tests and tools keeps working.
#[derive(Clone)]
pub enum Pixels {
    Owned(Vec<u8>),
    Mapped(MappedBytes),
}

/// A byte range of a memory-mapped file, shared by every store (and subset) that reads it.
#[derive(Clone)]
pub struct MappedBytes {
    map: Arc<memmap2::Mmap>,
    offset: usize,
    len: usize,
    path: Arc<PathBuf>,
}

impl MappedBytes {
    /// Maps `len` bytes of `file` from `offset` (read-only). The file must not be truncated while
    /// mapped: cache files are only ever replaced by rename, which leaves a mapped inode intact.
    pub(crate) fn map(file: &File, path: &Path, offset: usize, len: usize) -> std::io::Result<MappedBytes> {
        // SAFETY: the map is read-only and cache files are written once, to a temporary name, then
        // renamed into place; nothing in this crate modifies or truncates a file after that, and a
        // later rename over the name leaves this inode's pages untouched.
        let map = unsafe { memmap2::MmapOptions::new().map(file)? };
        if offset.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "mapped range past the end of the file",
            ));
        }
        // Batches are random images: tell the kernel not to read ahead whole megabytes.
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Random);
        Ok(MappedBytes { map: Arc::new(map), offset, len, path: Arc::new(path.to_path_buf()) })
    }

    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Pixels {
    /// Whether the bytes are a map of a cache file rather than a copy in memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Pixels::Mapped(_))
    }

    /// The mapped file, if any.
    pub fn mapped_file(&self) -> Option<&Path> {
        match self {
            Pixels::Mapped(m) => Some(m.path()),
            Pixels::Owned(_) => None,
        }
    }
}

impl Default for Pixels {
    fn default() -> Self {
        Pixels::Owned(Vec::new())
    }
}

impl From<Vec<u8>> for Pixels {
    fn from(v: Vec<u8>) -> Self {
        Pixels::Owned(v)
    }
}

impl Deref for Pixels {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Pixels::Owned(v) => v,
            Pixels::Mapped(m) => &m.map[m.offset..m.offset + m.len],
        }
    }
}

impl DerefMut for Pixels {
    fn deref_mut(&mut self) -> &mut [u8] {
        if let Pixels::Mapped(m) = self {
            *self = Pixels::Owned(m.map[m.offset..m.offset + m.len].to_vec());
        }
        match self {
            Pixels::Owned(v) => v,
            Pixels::Mapped(_) => unreachable!("converted to owned above"),
        }
    }
}

impl PartialEq for Pixels {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Pixels {}

impl PartialEq<Vec<u8>> for Pixels {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == other[..]
    }
}

impl fmt::Debug for Pixels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pixels::Owned(v) => write!(f, "Pixels::Owned({} bytes)", v.len()),
            Pixels::Mapped(m) => write!(f, "Pixels::Mapped({} bytes of {})", m.len, m.path.display()),
        }
    }
}
