//! Real data: the CIFAR-10 training JPEGs (an ImageFolder inside a .tar.xz, found by
//! `bagssl_testkit::cifar10_archive_or_skip`: `$BAGSSL_CIFAR10_ARCHIVE`, else
//! `../shared/data/cifar10-train-jpeg.tar.xz` beside the checkout; skipped with a reason when
//! neither exists), unpacked into a temporary folder (never into the repository), loaded, and
//! checked against what CIFAR-10 is: 50,000 32x32 images, 10 classes of 5,000, the usual channel
//! means.

use std::process::Command;

use bagssl_data::{load_with_report, DatasetFormat, LoadOptions, Split, CIFAR10_MEAN, CIFAR10_STD};
use bagssl_testkit::cifar10_archive_or_skip;

#[test]
fn shared_cifar10_jpegs_load_as_cifar10() {
    let Some(archive) = cifar10_archive_or_skip("shared_cifar10_jpegs_load_as_cifar10") else { return };
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("tar").arg("xJf").arg(&archive).arg("-C").arg(dir.path()).status().expect("tar runs");
    assert!(status.success(), "tar xJf {} failed", archive.display());

    let cache = dir.path().join("cache");
    let opts = LoadOptions {
        split: Split::Train,
        resize: None,
        cache_dir: Some(cache.clone()),
        progress: false,
        image_size: None,
    };
    let (store, report) = load_with_report(dir.path(), &opts).unwrap();
    assert_eq!(report.format, DatasetFormat::ImageFolder);
    assert!(!report.from_cache);
    assert_eq!(store.len(), 50_000);
    assert_eq!((store.height, store.width), (32, 32));
    assert_eq!(store.classes.len(), 10);
    assert_eq!(store.classes[0], "airplane");
    assert!(store.class_counts().iter().all(|&c| c == 5_000), "{:?}", store.class_counts());
    // JPEG re-encoding moves the statistics a little from the official binary release's.
    let (mean, std) = store.channel_stats();
    for c in 0..3 {
        assert!((mean[c] - CIFAR10_MEAN[c]).abs() < 0.01, "channel {c} mean {} vs {}", mean[c], CIFAR10_MEAN[c]);
        assert!((std[c] - CIFAR10_STD[c]).abs() < 0.01, "channel {c} std {} vs {}", std[c], CIFAR10_STD[c]);
    }

    // The second load comes from the decode cache and is identical.
    let (again, report) = load_with_report(dir.path(), &opts).unwrap();
    assert!(report.from_cache);
    assert!(again.pixels == store.pixels && again.labels == store.labels);
}
