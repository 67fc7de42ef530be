//! On-disk cache of decoded stores, so a large ImageFolder is decoded once.
//!
//! File name: `<cache_dir>/bagssl-<format>-<split>-<key as 16 hex digits>.bin`, where the key
//! hashes the format, the canonical dataset path, the split, the resize target and, for every
//! source file, its relative name, size and mtime: editing, adding or touching a file makes a
//! new key. Layout (little-endian):
//!
//! ```text
//! magic "BAGSSLDC" | version u32 | key u64 | meta_len u64
//! meta: height u64 | width u64 | count u64 | mean 3 x f32 | std 3 x f32
//!       | classes u64 | per class: len u64, UTF-8 bytes | labels count x u32
//! pixels: count * height * width * 3 bytes
//! checksum u64 of meta and pixels
//! ```
//!
//! A file that is short, mismatched or fails its checksum is ignored (re-decoded), never an
//! error. Writes go to a temporary file in the same folder, renamed into place, so readers never
//! see a half-written cache.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use crate::ImageStore;

const MAGIC: &[u8; 8] = b"BAGSSLDC";
/// Bump when the file layout or anything that changes decoded pixels (e.g. resampling) changes.
pub(crate) const VERSION: u32 = 1;
const HEADER: u64 = 8 + 4 + 8 + 8;

/// FNV-1a, 64-bit: a hash whose value is fixed forever (std's `DefaultHasher` is not).
pub(crate) struct KeyHasher(u64);

impl KeyHasher {
    pub(crate) fn new() -> Self {
        KeyHasher(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        // Length prefix so that ("ab", "c") and ("a", "bc") differ.
        for &x in (b.len() as u64).to_le_bytes().iter().chain(b) {
            self.0 = (self.0 ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn finish(&self) -> u64 {
        self.0
    }
}

/// Adds (relative name, size, mtime in ns) of `file` to the key. A file that cannot be
/// stat'ed hashes as missing; decoding will report it properly.
pub(crate) fn hash_file(h: &mut KeyHasher, base: &Path, file: &Path) {
    let rel = file.strip_prefix(base).unwrap_or(file);
    h.bytes(rel.to_string_lossy().as_bytes());
    match fs::metadata(file) {
        Ok(m) => {
            let mtime = m.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
            h.u64(m.len()).bytes(&mtime.to_le_bytes());
        }
        Err(_) => {
            h.u64(u64::MAX);
        }
    }
}

pub(crate) fn cache_file(dir: &Path, format: &str, split: &str, key: u64) -> PathBuf {
    dir.join(format!("bagssl-{format}-{split}-{key:016x}.bin"))
}

/// Word-wise multiply-rotate hash: fast enough to check hundreds of MB of pixels per load.
fn checksum(seed: u64, data: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h = seed ^ data.len() as u64;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let v = u64::from_le_bytes(w.try_into().expect("8-byte chunk"));
        h = (h.rotate_left(5) ^ v).wrapping_mul(K);
    }
    for &b in words.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
    }
    h
}

fn encode_meta(store: &ImageStore) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + store.labels.len() * 4);
    for v in [store.height, store.width, store.len()] {
        m.extend_from_slice(&(v as u64).to_le_bytes());
    }
    for v in store.mean.iter().chain(&store.std) {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(&(store.classes.len() as u64).to_le_bytes());
    for c in &store.classes {
        m.extend_from_slice(&(c.len() as u64).to_le_bytes());
        m.extend_from_slice(c.as_bytes());
    }
    for l in &store.labels {
        m.extend_from_slice(&l.to_le_bytes());
    }
    m
}

/// Writes `store` under `path` (creating the folder), atomically.
pub(crate) fn write(path: &Path, key: u64, store: &ImageStore) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let meta = encode_meta(store);
    let tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        w.write_all(MAGIC)?;
        w.write_all(&VERSION.to_le_bytes())?;
        w.write_all(&key.to_le_bytes())?;
        w.write_all(&(meta.len() as u64).to_le_bytes())?;
        w.write_all(&meta)?;
        w.write_all(&store.pixels)?;
        w.write_all(&checksum(checksum(0, &meta), &store.pixels).to_le_bytes())?;
        w.flush()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Little-endian cursor over the meta block; `None` past the end.
struct Cur<'a>(&'a [u8]);

impl Cur<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if n > self.0.len() {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn usize(&mut self) -> Option<usize> {
        usize::try_from(self.u64()?).ok()
    }
    fn f32(&mut self) -> Option<f32> {
        Some(f32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// Reads the store cached under `path` for `key`; `None` when absent or not a valid cache.
pub(crate) fn read(path: &Path, key: u64) -> Option<ImageStore> {
    let file = File::open(path).ok()?;
    let file_len = file.metadata().ok()?.len();
    let mut r = BufReader::new(file);
    let mut header = [0u8; HEADER as usize];
    r.read_exact(&mut header).ok()?;
    let mut h = Cur(&header);
    if h.take(8)? != MAGIC || h.u32()? != VERSION || h.u64()? != key {
        return None;
    }
    let meta_len = h.u64()?;
    if meta_len > file_len.saturating_sub(HEADER) {
        return None;
    }
    let mut meta = vec![0u8; usize::try_from(meta_len).ok()?];
    r.read_exact(&mut meta).ok()?;

    let mut m = Cur(&meta);
    let (height, width, count) = (m.usize()?, m.usize()?, m.usize()?);
    let pixel_len = count.checked_mul(height)?.checked_mul(width)?.checked_mul(3)?;
    if HEADER.checked_add(meta_len)?.checked_add(pixel_len as u64)?.checked_add(8)? != file_len {
        return None;
    }
    let mut mean = [0f32; 3];
    let mut std = [0f32; 3];
    for v in mean.iter_mut().chain(std.iter_mut()) {
        *v = m.f32()?;
    }
    let n_classes = m.usize()?;
    let mut classes = Vec::with_capacity(n_classes.min(meta.len()));
    for _ in 0..n_classes {
        let len = m.usize()?;
        classes.push(String::from_utf8(m.take(len)?.to_vec()).ok()?);
    }
    if count.checked_mul(4)? != m.0.len() {
        return None;
    }
    let labels: Vec<u32> = (0..count).map(|_| m.u32()).collect::<Option<_>>()?;

    let mut pixels = vec![0u8; pixel_len];
    r.read_exact(&mut pixels).ok()?;
    let mut sum = [0u8; 8];
    r.read_exact(&mut sum).ok()?;
    if u64::from_le_bytes(sum) != checksum(checksum(0, &meta), &pixels) {
        return None;
    }
    ImageStore::new(height, width, pixels, labels, classes, mean, std).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_is_stable_and_length_prefixed() {
        // FNV-1a values computed independently (Python): keys must not depend on the toolchain.
        assert_eq!(KeyHasher::new().bytes(b"").finish(), 0xa8c7_f832_281a_39c5);
        assert_eq!(KeyHasher::new().bytes(b"abc").finish(), 0xc11a_b6d2_519b_c2b2);
        let ab_c = KeyHasher::new().bytes(b"ab").bytes(b"c").finish();
        let a_bc = KeyHasher::new().bytes(b"a").bytes(b"bc").finish();
        assert_ne!(ab_c, a_bc);
    }

    #[test]
    fn missing_or_foreign_file_reads_as_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(&dir.path().join("absent.bin"), 1).is_none());
        let store =
            ImageStore::new(1, 2, vec![1, 2, 3, 4, 5, 6], vec![0], vec!["a".into()], [0.5; 3], [0.25; 3]).unwrap();
        let path = dir.path().join("c.bin");
        write(&path, 7, &store).unwrap();
        let back = read(&path, 7).expect("round trip");
        assert_eq!(
            (back.pixels, back.labels, back.classes, back.mean, back.std),
            (store.pixels, store.labels, store.classes, store.mean, store.std)
        );
        assert!(read(&path, 8).is_none(), "another key must not match");
    }
}
