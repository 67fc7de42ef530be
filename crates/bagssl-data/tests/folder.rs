//! ImageFolder loading, its errors, and the decoded-store cache.

use std::fs;
use std::path::{Path, PathBuf};

use bagssl_data::{detect_format, load, load_with_report, DataError, DatasetFormat, LoadOptions, Split};
use image::{GrayImage, ImageBuffer, Rgb, RgbImage, Rgba, RgbaImage};

fn rgb(h: u32, w: u32, seed: u32) -> RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| Rgb([(x * 20 + seed) as u8, (y * 30 + seed) as u8, (x * y + 3 * seed) as u8]))
}

fn save_png_rgb(path: &Path, img: &RgbImage) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// `root/{train,test}/{cat,dog}` with RGB PNG, RGB JPEG, grayscale PNG and RGBA PNG, all 6x5.
fn write_tree(root: &Path) {
    save_png_rgb(&root.join("train/cat/a.png"), &rgb(6, 5, 1));
    let flat: RgbImage = ImageBuffer::from_pixel(5, 6, Rgb([200, 100, 50]));
    flat.save(root.join("train/cat/b.jpg")).unwrap();
    fs::create_dir_all(root.join("train/dog")).unwrap();
    GrayImage::from_fn(5, 6, |x, y| image::Luma([(x * 10 + y) as u8])).save(root.join("train/dog/c.png")).unwrap();
    RgbaImage::from_fn(5, 6, |x, y| Rgba([x as u8, y as u8, 7, 128])).save(root.join("train/dog/d.PNG")).unwrap();
    save_png_rgb(&root.join("test/cat/t.png"), &rgb(6, 5, 9));
    save_png_rgb(&root.join("test/dog/u.png"), &rgb(6, 5, 11));
}

fn err_msg(path: &Path, opts: &LoadOptions) -> (DataError, String) {
    let e = load(path, opts).unwrap_err();
    let m = e.to_string();
    println!("{m}");
    (e, m)
}

#[test]
fn loads_split_layout_with_gray_and_alpha() {
    let tmp = tempfile::tempdir().unwrap();
    write_tree(tmp.path());
    assert_eq!(detect_format(tmp.path()).unwrap(), DatasetFormat::ImageFolder);
    let s = load(tmp.path(), &LoadOptions::default()).unwrap();
    assert_eq!((s.len(), s.height, s.width), (4, 6, 5));
    assert_eq!(s.classes, vec!["cat", "dog"]);
    assert_eq!(s.labels, vec![0, 0, 1, 1]);
    assert_eq!(s.image(0), rgb(6, 5, 1).as_raw().as_slice(), "PNG decodes exactly, HWC");
    let jpeg_err = s.image(1).chunks(3).map(|p| (i32::from(p[0]) - 200).abs().max((i32::from(p[2]) - 50).abs())).max();
    assert!(jpeg_err.unwrap() <= 3, "flat JPEG decodes close to its colour");
    let (y, x) = (4, 3);
    let g = &s.image(2)[(y * 5 + x) * 3..][..3];
    assert_eq!(g, [(x * 10 + y) as u8; 3], "grayscale replicated to RGB");
    assert_eq!(&s.image(3)[(y * 5 + x) * 3..][..3], [x as u8, y as u8, 7], "alpha dropped");
    let (mean, std) = s.channel_stats();
    assert_eq!((s.mean, s.std), (mean, std), "ImageFolder normalises with its own statistics");

    let t = load(tmp.path(), &LoadOptions { split: Split::Test, progress: true, ..Default::default() }).unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(t.image(1), rgb(6, 5, 11).as_raw().as_slice());
}

#[test]
fn plain_class_root() {
    let tmp = tempfile::tempdir().unwrap();
    write_tree(tmp.path());
    let s = load(&tmp.path().join("test"), &LoadOptions::default()).unwrap();
    assert_eq!(s.len(), 2);
    // Stray files at the root and hidden files are ignored.
    fs::write(tmp.path().join("test/README.txt"), "hello").unwrap();
    fs::write(tmp.path().join("test/cat/.DS_Store"), "junk").unwrap();
    assert_eq!(load(&tmp.path().join("test"), &LoadOptions::default()).unwrap().len(), 2);
}

#[test]
fn non_image_and_corrupt_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_tree(tmp.path());
    fs::write(tmp.path().join("train/dog/notes.txt"), "not an image").unwrap();
    let (e, m) = err_msg(tmp.path(), &LoadOptions::default());
    assert!(matches!(e, DataError::Decode { .. }) && m.contains("notes.txt"), "{m}");

    fs::remove_file(tmp.path().join("train/dog/notes.txt")).unwrap();
    let good = fs::read(tmp.path().join("train/cat/a.png")).unwrap();
    fs::write(tmp.path().join("train/cat/broken.png"), &good[..good.len() / 2]).unwrap();
    let (e, m) = err_msg(tmp.path(), &LoadOptions::default());
    assert!(matches!(e, DataError::Decode { .. }) && m.contains("broken.png"), "{m}");
}

#[test]
fn empty_class_missing_path_no_classes_missing_split() {
    let tmp = tempfile::tempdir().unwrap();
    write_tree(tmp.path());
    fs::create_dir_all(tmp.path().join("train/zebra")).unwrap();
    let (e, m) = err_msg(tmp.path(), &LoadOptions::default());
    assert!(matches!(e, DataError::EmptyClass { .. }) && m.contains("zebra"), "{m}");

    let missing = tmp.path().join("nowhere");
    let (e, m) = err_msg(&missing, &LoadOptions::default());
    assert!(matches!(e, DataError::NotFound { .. }) && m.contains("nowhere"), "{m}");

    let empty = tmp.path().join("empty_root");
    fs::create_dir_all(&empty).unwrap();
    let (e, m) = err_msg(&empty, &LoadOptions::default());
    assert!(matches!(e, DataError::NoClasses { .. }) && m.contains("empty_root"), "{m}");

    let only_train = tmp.path().join("only_train");
    save_png_rgb(&only_train.join("train/a/x.png"), &rgb(4, 4, 0));
    let (e, m) = err_msg(&only_train, &LoadOptions { split: Split::Test, ..Default::default() });
    assert!(matches!(e, DataError::MissingSplit { .. }) && m.contains("test"), "{m}");

    let file = tmp.path().join("train/cat/a.png");
    let (e, _) = err_msg(&file, &LoadOptions::default());
    assert!(matches!(e, DataError::UnknownFormat { .. }));
}

#[test]
fn mixed_sizes_error_then_resize() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    save_png_rgb(&root.join("a/1.png"), &rgb(6, 5, 1));
    save_png_rgb(&root.join("a/2.png"), &rgb(8, 8, 2));
    save_png_rgb(&root.join("b/3.png"), &rgb(6, 5, 3));
    save_png_rgb(&root.join("b/4.png"), &rgb(10, 4, 4));
    let (e, m) = err_msg(root, &LoadOptions::default());
    assert!(matches!(&e, DataError::MixedSizes { sizes } if sizes.len() == 3), "{m}");
    for part in ["1.png", "2.png", "4.png", "6x5", "8x8", "10x4", "resize"] {
        assert!(m.contains(part), "missing {part:?} in: {m}");
    }
    assert!(!m.contains("3.png"), "only the first file of each size is named: {m}");

    let s = load(root, &LoadOptions { resize: Some((7, 9)), ..Default::default() }).unwrap();
    assert_eq!((s.len(), s.height, s.width, s.pixels.len()), (4, 7, 9, 4 * 7 * 9 * 3));
    let (e, _) = err_msg(root, &LoadOptions { resize: Some((0, 9)), ..Default::default() });
    assert!(matches!(e, DataError::InvalidResize { .. }));
}

fn cache_opts(dir: PathBuf) -> LoadOptions {
    LoadOptions { cache_dir: Some(dir), ..Default::default() }
}

#[test]
fn second_load_hits_cache() {
    let tmp = tempfile::tempdir().unwrap();
    write_tree(&tmp.path().join("data"));
    let data = tmp.path().join("data");
    let opts = cache_opts(tmp.path().join("cache"));
    let (a, r1) = load_with_report(&data, &opts).unwrap();
    assert!(!r1.from_cache && r1.cache_write_error.is_none(), "{r1:?}");
    let file = r1.cache_file.clone().unwrap();
    assert!(file.is_file() && file.starts_with(tmp.path().join("cache")));
    let (b, r2) = load_with_report(&data, &opts).unwrap();
    assert!(r2.from_cache, "{r2:?}");
    assert_eq!(r2.cache_file, r1.cache_file);
    assert_eq!((&a.pixels, &a.labels, &a.classes, a.mean, a.std), (&b.pixels, &b.labels, &b.classes, b.mean, b.std));
    assert_eq!((a.height, a.width), (b.height, b.width));

    // The test split is a different entry.
    let (_, r3) = load_with_report(&data, &LoadOptions { split: Split::Test, ..opts.clone() }).unwrap();
    assert!(!r3.from_cache && r3.cache_file != r1.cache_file);

    // Changing a file (size and mtime) invalidates the entry.
    save_png_rgb(&data.join("train/cat/a.png"), &rgb(6, 5, 77));
    let (c, r4) = load_with_report(&data, &opts).unwrap();
    assert!(!r4.from_cache && r4.cache_file != r1.cache_file);
    assert_eq!(c.image(0), rgb(6, 5, 77).as_raw().as_slice());
}

#[test]
fn corrupt_cache_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_tree(&data);
    let opts = cache_opts(tmp.path().join("cache"));
    let (a, r) = load_with_report(&data, &opts).unwrap();
    let file = r.cache_file.unwrap();
    assert!(a.pixels.is_mapped(), "a cached load maps the cache file");
    // The damage below rewrites the file in place, which a live map must not see (bagssl itself
    // only ever replaces cache files by renaming): keep the pixels in memory and drop the map.
    let expect = a.pixels.to_vec();
    drop(a);
    let good = fs::read(&file).unwrap();

    let flip = |at: usize| {
        let mut f = good.clone();
        f[at] ^= 0x40;
        f
    };
    let damaged: Vec<(&str, Vec<u8>)> = vec![
        ("short", good[..good.len() / 2].to_vec()),
        ("empty", Vec::new()),
        ("garbage", vec![0xAB; good.len()]),
        ("flipped pixel byte", flip(4096 + 7)), // pixels start at the first page
        ("flipped meta byte", flip(good.len() - 20)), // labels and classes follow them
        ("flipped header byte", flip(40)),
    ];
    for (what, bytes) in damaged {
        fs::write(&file, &bytes).unwrap();
        let (b, r) = load_with_report(&data, &opts).unwrap_or_else(|e| panic!("{what} cache: {e}"));
        assert!(!r.from_cache, "{what} cache must not be used");
        assert_eq!(b.pixels, expect, "{what}");
        drop(b);
        // ... and it is rewritten, so the next load hits again.
        assert!(load_with_report(&data, &opts).unwrap().1.from_cache, "{what}");
    }
}

#[test]
fn unwritable_cache_dir_is_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    write_tree(&data);
    let blocker = tmp.path().join("file_not_dir");
    fs::write(&blocker, "x").unwrap();
    let (s, r) = load_with_report(&data, &cache_opts(blocker.join("cache"))).unwrap();
    assert_eq!(s.len(), 4);
    assert!(!r.from_cache && r.cache_write_error.is_some(), "{r:?}");
}
