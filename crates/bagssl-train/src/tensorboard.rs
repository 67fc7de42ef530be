//! TensorBoard event files (scalars only), so TensorBoard and W&B can import a run: TFRecord
//! framing (length, masked crc32c of the length, data, masked crc32c of the data) around `Event`
//! protobufs (tensorflow/core/util/event.proto), encoded by hand: five fields are all we write.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub struct EventWriter {
    path: PathBuf,
    file: std::fs::File,
}

impl EventWriter {
    /// A new `events.out.tfevents.<secs>.bagssl` in `dir`, opened with its file-version event.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        let secs = wall_time() as u64;
        let path = dir.join(format!("events.out.tfevents.{secs}.bagssl"));
        let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = EventWriter { path, file };
        let mut event = event_header(wall_time(), 0);
        bytes_field(&mut event, 3, b"brain.Event:2");
        w.record(&event)?;
        Ok(w)
    }

    /// One event holding `scalars` (tag, value) at `step`.
    pub fn scalars(&mut self, step: u64, scalars: &[(String, f64)]) -> Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        let mut summary = Vec::new();
        for (tag, v) in scalars {
            let mut value = Vec::new();
            bytes_field(&mut value, 1, tag.as_bytes());
            value.push(2 << 3 | 5); // simple_value: float, fixed32
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            bytes_field(&mut summary, 1, &value);
        }
        let mut event = event_header(wall_time(), step);
        bytes_field(&mut event, 5, &summary);
        self.record(&event)
    }

    /// The numbers of a `metrics.jsonl` line as scalars: a step line's under their key, an
    /// evaluation's as `eval/<model>/<key>`.
    pub fn metrics_line(&mut self, line: &serde_json::Value) -> Result<()> {
        let Some(obj) = line.as_object() else { return Ok(()) };
        let step = line["step"].as_u64().unwrap_or(0);
        let prefix = match line["event"].as_str() {
            Some("step") => String::new(),
            Some("eval") => format!("eval/{}/", line["model"].as_str().unwrap_or("model")),
            _ => return Ok(()),
        };
        let skip = ["step", "epoch", "event", "model"];
        let scalars: Vec<(String, f64)> = obj
            .iter()
            .filter(|(k, _)| !skip.contains(&k.as_str()))
            .filter_map(|(k, v)| Some((format!("{prefix}{k}"), v.as_f64()?)))
            .collect();
        self.scalars(step, &scalars)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc32c(data).to_le_bytes());
        self.file
            .write_all(&rec)
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `Event.wall_time` (1, double) and `Event.step` (2, int64).
fn event_header(wall_time: f64, step: u64) -> Vec<u8> {
    let mut e = vec![1 << 3 | 1];
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(2 << 3);
    varint(&mut e, step);
    e
}

/// A length-delimited field (strings, bytes, messages).
fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// CRC-32C (Castagnoli), bit by bit: records are small and few.
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { crc >> 1 ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// TFRecord's masking, so that a CRC of data holding CRCs stays a good check.
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let c = crc32c(bytes);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    /// Reads the records back: every length and data CRC checks, the first event is the file
    /// version and the scalars' tags and values are in the later ones.
    #[test]
    fn event_file_frames_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        let line = serde_json::json!({"event": "step", "step": 300, "loss": 17.25, "lr": 1e-3, "epoch": 1});
        w.metrics_line(&line).unwrap();
        w.metrics_line(&serde_json::json!({"event": "eval", "model": "trained", "step": 300, "knn": 0.5})).unwrap();
        w.metrics_line(&serde_json::json!({"event": "collapse", "step": 3})).unwrap();
        let bytes = std::fs::read(&w.path).unwrap();
        let mut records = Vec::new();
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(rest[8..12].try_into().unwrap()), masked_crc32c(&rest[..8]));
            let data = &rest[12..12 + len];
            assert_eq!(u32::from_le_bytes(rest[12 + len..16 + len].try_into().unwrap()), masked_crc32c(data));
            records.push(data.to_vec());
            rest = &rest[16 + len..];
        }
        assert_eq!(records.len(), 3, "file version, the step, the evaluation; no collapse scalars");
        let has = |r: &[u8], s: &[u8]| r.windows(s.len()).any(|w| w == s);
        assert!(has(&records[0], b"brain.Event:2"));
        assert!(has(&records[1], b"loss") && has(&records[1], &17.25f32.to_le_bytes()));
        assert!(!has(&records[1], b"epoch"));
        assert!(has(&records[1], &[2 << 3, 0xac, 0x02]), "step 300 as a varint");
        assert!(has(&records[2], b"eval/trained/knn") && has(&records[2], &0.5f32.to_le_bytes()));
    }
}
