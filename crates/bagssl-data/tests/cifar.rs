//! CIFAR-10 binary loading on tiny hand-written batch files.

use std::fs;
use std::path::Path;

use bagssl_data::{detect_format, load, load_with_report, DataError, DatasetFormat, LoadOptions, Split};

const PLANE: usize = 1024;

/// Record `k` of a batch: label, then R plane = (k + i) % 256, G = (2k + 7i) % 256, B = 255 - R.
fn record(label: u8, k: usize) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..PLANE).map(|i| ((k + i) % 256) as u8));
    r.extend((0..PLANE).map(|i| ((2 * k + 7 * i) % 256) as u8));
    r.extend((0..PLANE).map(|i| 255 - ((k + i) % 256) as u8));
    r
}

/// Writes `cifar-10-batches-bin/` under `parent`: 5 train batches of 2 records, a test batch of 3.
fn write_cifar(parent: &Path, meta: bool) -> std::path::PathBuf {
    let dir = parent.join("cifar-10-batches-bin");
    fs::create_dir_all(&dir).unwrap();
    for b in 1..=5 {
        let bytes: Vec<u8> = (0..2).flat_map(|j| record(((2 * b + j) % 10) as u8, 10 * b + j)).collect();
        fs::write(dir.join(format!("data_batch_{b}.bin")), bytes).unwrap();
    }
    let test: Vec<u8> = (0..3).flat_map(|j| record(j as u8, 100 + j)).collect();
    fs::write(dir.join("test_batch.bin"), test).unwrap();
    if meta {
        let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
        fs::write(dir.join("batches.meta.txt"), names).unwrap();
    }
    dir
}

#[test]
fn loads_train_and_test_from_parent_or_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar(tmp.path(), true);
    assert_eq!(detect_format(tmp.path()).unwrap(), DatasetFormat::CifarBinary);
    assert_eq!(detect_format(&dir).unwrap(), DatasetFormat::CifarBinary);

    let train = load(tmp.path(), &LoadOptions::default()).unwrap();
    assert_eq!((train.len(), train.height, train.width), (10, 32, 32));
    assert_eq!(train.classes[0], "airplane");
    assert_eq!(train.classes.len(), 10);
    assert_eq!(train.mean, bagssl_data::CIFAR10_MEAN);
    assert_eq!(train.std, bagssl_data::CIFAR10_STD);
    // Batch b, record j is image 2(b-1)+j with k = 10b + j.
    for b in 1..=5usize {
        for j in 0..2usize {
            let idx = 2 * (b - 1) + j;
            let k = 10 * b + j;
            assert_eq!(train.labels[idx], ((2 * b + j) % 10) as u32);
            let img = train.image(idx);
            for (y, x) in [(0, 0), (0, 31), (5, 17), (31, 0), (31, 31)] {
                let i = y * 32 + x;
                let px = &img[(y * 32 + x) * 3..][..3];
                assert_eq!(px, [((k + i) % 256) as u8, ((2 * k + 7 * i) % 256) as u8, 255 - ((k + i) % 256) as u8]);
            }
        }
    }

    let test = load(&dir, &LoadOptions { split: Split::Test, ..Default::default() }).unwrap();
    assert_eq!(test.len(), 3);
    assert_eq!(test.labels, vec![0, 1, 2]);
    assert_eq!(&test.image(2)[..3], &[102, 204, 153]);
}

#[test]
fn default_class_names_without_meta() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(tmp.path(), false);
    let s = load(tmp.path(), &LoadOptions::default()).unwrap();
    assert_eq!(s.classes, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[test]
fn truncated_batch_names_file_and_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar(tmp.path(), true);
    let bad = dir.join("data_batch_3.bin");
    let bytes = fs::read(&bad).unwrap();
    fs::write(&bad, &bytes[..bytes.len() - 100]).unwrap();
    let err = load(tmp.path(), &LoadOptions::default()).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(matches!(err, DataError::Truncated { .. }));
    assert!(msg.contains("data_batch_3.bin") && msg.contains(&(2 * 3073 - 100).to_string()), "{msg}");
    // The test split does not read that file.
    assert!(load(tmp.path(), &LoadOptions { split: Split::Test, ..Default::default() }).is_ok());
}

#[test]
fn missing_batch_and_bad_label_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = write_cifar(tmp.path(), true);
    fs::remove_file(dir.join("data_batch_4.bin")).unwrap();
    let msg = load(tmp.path(), &LoadOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("data_batch_4.bin"), "{msg}");

    fs::write(dir.join("test_batch.bin"), record(12, 0)).unwrap();
    let err = load(tmp.path(), &LoadOptions { split: Split::Test, ..Default::default() }).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::BadLabel { label: 12, .. }) && msg.contains("test_batch.bin"), "{msg}");
}

#[test]
fn resize_and_cache() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(tmp.path(), true);
    let cache = tmp.path().join("cache");
    let opts = LoadOptions { resize: Some((16, 24)), cache_dir: Some(cache.clone()), ..Default::default() };
    let (a, r1) = load_with_report(tmp.path(), &opts).unwrap();
    assert_eq!((a.height, a.width, a.pixels.len()), (16, 24, 10 * 16 * 24 * 3));
    assert!(!r1.from_cache && r1.cache_file.as_ref().unwrap().is_file(), "{r1:?}");
    let (b, r2) = load_with_report(tmp.path(), &opts).unwrap();
    assert!(r2.from_cache);
    assert_eq!((a.pixels, a.labels, a.classes, a.mean, a.std), (b.pixels, b.labels, b.classes, b.mean, b.std));
    // Another resize is another cache entry.
    let (_, r3) = load_with_report(tmp.path(), &LoadOptions { resize: None, ..opts.clone() }).unwrap();
    assert!(!r3.from_cache);
    assert_ne!(r3.cache_file, r1.cache_file);
}
