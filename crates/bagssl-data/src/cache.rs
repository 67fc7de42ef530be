//! On-disk cache of decoded stores: a dataset is decoded once, streamed into a file, and every
//! later load maps that file (its pixels never enter anonymous memory).
//!
//! File name: `<cache_dir>/bagssl-<format>-<split>-<key as 16 hex digits>.bin`, where the key
//! hashes the layout version, the format, the canonical dataset path (or shard pattern), the
//! split, the fit (resize or image_size) and, for every source file, its relative name, size and
//! mtime: editing, adding or touching a file makes a new key. Layout (little-endian):
//!
//! ```text
//! header, 4096 bytes: magic "BAGSSLDC" | version u32 | key u64 | height u64 | width u64
//!                     | count u64 | meta_len u64 | pixel checksum u64 | meta checksum u64 | zeros
//! pixels at 4096:     count * height * width * 3 bytes (page aligned, mapped as they are)
//! meta:               mean 3 x f32 | std 3 x f32 | classes u64 | per class: len u64, UTF-8 bytes
//!                     | labels count x u32
//! ```
//!
//! The pixel checksum combines one hash per MiB (checked in parallel); the meta checksum covers
//! the header fields and the meta. A file that is short, mismatched or fails a checksum is ignored
//! (re-decoded), never an error. A decode writes `<name>.partial` while holding an exclusive lock
//! on `<name>.lock`, fsyncs it and renames it into place: a reader never sees a half-written
//! cache, two processes never decode the same dataset at once (the second waits, then maps the
//! first one's file), and a decode that was killed leaves a `.partial` that the next one truncates
//! and rewrites. A cache file is only ever replaced (renamed over), never rewritten in place:
//! truncating a file that a running process maps would make its next read fault (SIGBUS).

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use rayon::prelude::*;

use crate::pixels::MappedBytes;
use crate::store::ChannelSums;
use crate::{ImageStore, Pixels};

const MAGIC: &[u8; 8] = b"BAGSSLDC";
/// Bump when the file layout or anything that changes decoded pixels (e.g. resampling) changes.
pub(crate) const VERSION: u32 = 3;
/// Where the pixels start: one page, so the mapped pixels are page aligned.
const PIXELS_AT: u64 = 4096;
/// Header fields: magic, version, key, height, width, count, meta_len, two checksums.
const HEADER_FIELDS: usize = 8 + 4 + 7 * 8;
/// The pixel checksum hashes blocks of this many bytes independently.
const BLOCK: usize = 1 << 20;

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

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
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

/// The pixel checksum from the per-block hashes, in order.
fn combine_blocks(blocks: &[u64]) -> u64 {
    blocks.iter().fold(checksum(0, &(blocks.len() as u64).to_le_bytes()), |h, b| checksum(h, &b.to_le_bytes()))
}

fn pixel_checksum(pixels: &[u8]) -> u64 {
    let blocks: Vec<u64> = pixels.par_chunks(BLOCK).map(|b| checksum(0, b)).collect();
    combine_blocks(&blocks)
}

/// The geometry fields of the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    key: u64,
    height: u64,
    width: u64,
    count: u64,
    meta_len: u64,
}

impl Geometry {
    fn bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_FIELDS);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        for v in [self.key, self.height, self.width, self.count, self.meta_len] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }
}

fn encode_meta(mean: [f32; 3], std: [f32; 3], classes: &[String], labels: &[u32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + labels.len() * 4);
    for v in mean.iter().chain(&std) {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(&(classes.len() as u64).to_le_bytes());
    for c in classes {
        m.extend_from_slice(&(c.len() as u64).to_le_bytes());
        m.extend_from_slice(c.as_bytes());
    }
    for l in labels {
        m.extend_from_slice(&l.to_le_bytes());
    }
    m
}

/// The normalisation a finished cache records: given, or the exact statistics of its pixels.
pub(crate) enum Normalization {
    Fixed([f32; 3], [f32; 3]),
    FromPixels,
}

/// Streams images into `<path>.partial` under the lock, then renames it to `path`. Dropped
/// before [`CacheWriter::finish`] (an error), it deletes the partial file.
pub(crate) struct CacheWriter {
    path: PathBuf,
    partial: PathBuf,
    file: Option<BufWriter<File>>,
    _lock: File,
    key: u64,
    height: usize,
    width: usize,
    count: u64,
    block: Vec<u8>,
    block_sums: Vec<u64>,
    sums: ChannelSums,
}

/// The exclusive decode lock of the cache file `path`: waits while another process holds it.
pub(crate) fn lock(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let lock = File::options().create(true).truncate(false).write(true).open(with_suffix(path, ".lock"))?;
    lock.lock()?;
    Ok(lock)
}

impl CacheWriter {
    /// Starts `<path>.partial` (truncating what a killed decode left) for `height x width`
    /// images, holding `lock` (from [`lock`]) until finished or dropped.
    pub(crate) fn create(path: &Path, lock: File, key: u64, height: usize, width: usize) -> std::io::Result<Self> {
        let partial = with_suffix(path, ".partial");
        let mut file = File::create(&partial)?;
        file.seek(SeekFrom::Start(PIXELS_AT))?;
        Ok(CacheWriter {
            path: path.to_path_buf(),
            partial,
            file: Some(BufWriter::with_capacity(BLOCK, file)),
            _lock: lock,
            key,
            height,
            width,
            count: 0,
            block: Vec::with_capacity(BLOCK),
            block_sums: Vec::new(),
            sums: ChannelSums::default(),
        })
    }

    pub(crate) fn image_size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// The partial file, for error messages.
    pub(crate) fn partial(&self) -> &Path {
        &self.partial
    }

    fn out(&mut self) -> &mut BufWriter<File> {
        self.file.as_mut().expect("writer is open until finish")
    }

    /// Appends whole images (`height * width * 3` bytes each).
    pub(crate) fn push(&mut self, images: &[u8]) -> std::io::Result<()> {
        let n = self.height * self.width * 3;
        assert!(n > 0 && images.len().is_multiple_of(n), "whole {}x{} images", self.height, self.width);
        self.sums.add_par(images);
        self.count += (images.len() / n) as u64;
        let mut rest = images;
        while !rest.is_empty() {
            let take = (BLOCK - self.block.len()).min(rest.len());
            self.block.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.block.len() == BLOCK {
                self.flush_block()?;
            }
        }
        Ok(())
    }

    fn flush_block(&mut self) -> std::io::Result<()> {
        let block = std::mem::take(&mut self.block);
        self.block_sums.push(checksum(0, &block));
        self.out().write_all(&block)?;
        self.block = block;
        self.block.clear();
        Ok(())
    }

    /// Writes the meta and header, fsyncs, renames into place and maps the result.
    pub(crate) fn finish(
        mut self,
        labels: Vec<u32>,
        classes: Vec<String>,
        norm: Normalization,
    ) -> std::io::Result<ImageStore> {
        assert_eq!(labels.len() as u64, self.count, "one label per pushed image");
        if !self.block.is_empty() {
            self.flush_block()?;
        }
        let (mean, std) = match norm {
            Normalization::Fixed(m, s) => (m, s),
            Normalization::FromPixels => self.sums.stats(),
        };
        let meta = encode_meta(mean, std, &classes, &labels);
        let geometry = Geometry {
            key: self.key,
            height: self.height as u64,
            width: self.width as u64,
            count: self.count,
            meta_len: meta.len() as u64,
        };
        let head = geometry.bytes();
        let pixel_sum = combine_blocks(&self.block_sums);
        let meta_sum = checksum(checksum(0, &head), &meta);
        let mut out = self.file.take().expect("open").into_inner().map_err(|e| e.into_error())?;
        out.write_all(&meta)?;
        out.seek(SeekFrom::Start(0))?;
        out.write_all(&head)?;
        out.write_all(&pixel_sum.to_le_bytes())?;
        out.write_all(&meta_sum.to_le_bytes())?;
        out.sync_all()?;
        drop(out);
        fs::rename(&self.partial, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable; not every filesystem lets a folder be fsynced.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        self.partial = PathBuf::new();
        open_mapped(&self.path, self.key).ok_or_else(|| {
            std::io::Error::other(format!("{}: the cache just written does not read back", self.path.display()))
        })
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        if !self.partial.as_os_str().is_empty() {
            self.file = None;
            let _ = fs::remove_file(&self.partial);
        }
    }
}

/// Writes an in-memory `store` under `path` (for formats decoded whole, e.g. CIFAR-10 binary) and
/// returns it mapped from there.
pub(crate) fn write_store(path: &Path, lock: File, key: u64, store: &ImageStore) -> std::io::Result<ImageStore> {
    let mut w = CacheWriter::create(path, lock, key, store.height, store.width)?;
    if store.image_bytes() > 0 {
        w.push(&store.contiguous_pixels())?;
    }
    w.finish(store.labels.clone(), store.classes.clone(), Normalization::Fixed(store.mean, store.std))
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

/// Maps the store cached under `path` for `key`; `None` when absent or not a valid cache.
pub(crate) fn open_mapped(path: &Path, key: u64) -> Option<ImageStore> {
    let mut file = File::open(path).ok()?;
    let file_len = file.metadata().ok()?.len();
    let mut header = [0u8; HEADER_FIELDS];
    file.read_exact(&mut header).ok()?;
    let mut h = Cur(&header);
    if h.take(8)? != MAGIC || h.u32()? != VERSION {
        return None;
    }
    let geometry = Geometry { key: h.u64()?, height: h.u64()?, width: h.u64()?, count: h.u64()?, meta_len: h.u64()? };
    let (pixel_sum, meta_sum) = (h.u64()?, h.u64()?);
    if geometry.key != key {
        return None;
    }
    let (height, width, count) = (
        usize::try_from(geometry.height).ok()?,
        usize::try_from(geometry.width).ok()?,
        usize::try_from(geometry.count).ok()?,
    );
    let pixel_len = count.checked_mul(height)?.checked_mul(width)?.checked_mul(3)?;
    let meta_at = PIXELS_AT.checked_add(pixel_len as u64)?;
    if meta_at.checked_add(geometry.meta_len)? != file_len {
        return None;
    }
    file.seek(SeekFrom::Start(meta_at)).ok()?;
    let mut meta = vec![0u8; usize::try_from(geometry.meta_len).ok()?];
    file.read_exact(&mut meta).ok()?;
    if checksum(checksum(0, &geometry.bytes()), &meta) != meta_sum {
        return None;
    }

    let mut m = Cur(&meta);
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

    let pixels = if pixel_len == 0 {
        Pixels::Owned(Vec::new())
    } else {
        Pixels::Mapped(MappedBytes::map(&file, path, PIXELS_AT as usize, pixel_len).ok()?)
    };
    if pixel_checksum(&pixels) != pixel_sum {
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
    fn round_trip_maps_and_rejects_another_key() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open_mapped(&dir.path().join("absent.bin"), 1).is_none());
        let store =
            ImageStore::new(1, 2, vec![1, 2, 3, 4, 5, 6], vec![0], vec!["a".into()], [0.5; 3], [0.25; 3]).unwrap();
        let path = dir.path().join("c.bin");
        let back = write_store(&path, lock(&path).unwrap(), 7, &store).unwrap();
        assert!(back.pixels.is_mapped());
        assert_eq!(
            (&back.pixels, &back.labels, &back.classes, back.mean, back.std),
            (&store.pixels, &store.labels, &store.classes, store.mean, store.std)
        );
        assert!(open_mapped(&path, 8).is_none(), "another key must not match");
        assert!(!with_suffix(&path, ".partial").exists(), "the partial file was renamed");
    }

    #[test]
    fn streamed_blocks_checksum_like_the_whole_buffer() {
        // Pushes of odd sizes across block boundaries give the checksum a reader computes at once.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        let (h, w) = (33, 41);
        let n = h * w * 3;
        let images = 300; // about 1.2 MiB: two blocks
        let px: Vec<u8> = (0..images * n).map(|i| (i * 7 % 251) as u8).collect();
        let mut wr = CacheWriter::create(&path, lock(&path).unwrap(), 3, h, w).unwrap();
        for chunk in px.chunks(n * 37) {
            wr.push(chunk).unwrap();
        }
        let store = wr.finish(vec![0; images], vec!["c".into()], Normalization::FromPixels).unwrap();
        assert_eq!(store.pixels, px);
        let whole = ImageStore::new(h, w, px, vec![0; images], vec!["c".into()], [0.0; 3], [1.0; 3]).unwrap();
        assert_eq!((store.mean, store.std), whole.channel_stats(), "streamed statistics are exact");
    }

    #[test]
    fn dropped_writer_leaves_no_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.bin");
        let mut wr = CacheWriter::create(&path, lock(&path).unwrap(), 3, 2, 2).unwrap();
        wr.push(&[9; 24]).unwrap();
        assert!(wr.partial().exists());
        drop(wr);
        assert!(!with_suffix(&path, ".partial").exists() && !path.exists());
    }
}
