//! WebDataset shards, variable-size folders (`image_size`) and the memory-mapped cache, on
//! datasets these tests build themselves.

use std::fs;
use std::path::{Path, PathBuf};

use bagssl_data::{
    center_crop_offset, detect_format, load, load_with_report, short_side_size, DataError, DatasetFormat, ImageStore,
    LoadOptions,
};
use image::{ImageBuffer, ImageFormat, Rgb, RgbImage};

fn rgb(h: u32, w: u32, seed: u32) -> RgbImage {
    ImageBuffer::from_fn(w, h, |x, y| Rgb([(x * 17 + seed * 5) as u8, (y * 29 + seed) as u8, (x * y + 3 * seed) as u8]))
}

fn encode(img: &RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A tar shard of `members` (name, bytes), as webdataset's `TarWriter` writes them.
fn write_tar(path: &Path, members: &[(String, Vec<u8>)]) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes.as_slice()).unwrap();
    }
    b.finish().unwrap();
}

/// One sample: key, label, image, and whether it is stored as JPEG (else PNG).
struct Sample {
    key: String,
    label: u32,
    image: RgbImage,
    jpeg: bool,
}

fn samples(n: u32) -> Vec<Sample> {
    (0..n).map(|i| Sample { key: format!("s{i:06}"), label: i % 3, image: rgb(6, 5, i), jpeg: i % 2 == 1 }).collect()
}

fn members(samples: &[Sample]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for s in samples {
        let (ext, fmt) = if s.jpeg { ("jpg", ImageFormat::Jpeg) } else { ("png", ImageFormat::Png) };
        out.push((format!("{}.{ext}", s.key), encode(&s.image, fmt)));
        out.push((format!("{}.cls", s.key), format!("{}\n", s.label).into_bytes()));
        out.push((format!("{}.json", s.key), b"{\"ignored\": true}".to_vec()));
    }
    out
}

/// `dir/train-000000.tar`, `dir/train-000001.tar`, ... holding `per_shard` samples each.
fn write_shards(dir: &Path, samples: &[Sample], per_shard: usize) -> Vec<PathBuf> {
    fs::create_dir_all(dir).unwrap();
    samples
        .chunks(per_shard)
        .enumerate()
        .map(|(i, chunk)| {
            let path = dir.join(format!("train-{i:06}.tar"));
            write_tar(&path, &members(chunk));
            path
        })
        .collect()
}

/// The same samples as an ImageFolder with class folders `0`, `1`, `2`.
fn write_folder(root: &Path, samples: &[Sample]) {
    for s in samples {
        let dir = root.join(s.label.to_string());
        fs::create_dir_all(&dir).unwrap();
        let (ext, fmt) = if s.jpeg { ("jpg", ImageFormat::Jpeg) } else { ("png", ImageFormat::Png) };
        fs::write(dir.join(format!("{}.{ext}", s.key)), encode(&s.image, fmt)).unwrap();
    }
}

/// (label, pixels) of every image, sorted: the content of a store whatever its order.
fn content(s: &ImageStore) -> Vec<(u32, Vec<u8>)> {
    let mut v: Vec<(u32, Vec<u8>)> = (0..s.len()).map(|i| (s.labels[i], s.image(i).to_vec())).collect();
    v.sort();
    v
}

fn err(path: &Path, opts: &LoadOptions) -> String {
    let e = load(path, opts).unwrap_err();
    println!("{e}");
    e.to_string()
}

fn no_partial_or_cache(dir: &Path) {
    let names: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(
        names.iter().all(|n| n.ends_with(".lock")),
        "only lock files may stay in the cache folder after a failed decode: {names:?}"
    );
}

#[test]
fn shards_load_like_the_same_image_folder_by_folder_file_and_pattern() {
    let tmp = tempfile::tempdir().unwrap();
    let all = samples(11);
    let shards = write_shards(&tmp.path().join("shards"), &all, 4);
    assert_eq!(shards.len(), 3);
    write_folder(&tmp.path().join("folder"), &all);

    let folder = load(&tmp.path().join("folder"), &LoadOptions::default()).unwrap();
    let dir = tmp.path().join("shards");
    assert_eq!(detect_format(&dir).unwrap(), DatasetFormat::WebDataset);
    let by_dir = load(&dir, &LoadOptions::default()).unwrap();
    assert_eq!((by_dir.len(), by_dir.height, by_dir.width), (11, 6, 5));
    assert_eq!(by_dir.classes, ["0", "1", "2"]);
    assert_eq!(by_dir.labels, all.iter().map(|s| s.label).collect::<Vec<_>>(), "shard order, then tar order");
    assert_eq!(by_dir.image(0), all[0].image.as_raw().as_slice(), "a PNG member decodes exactly, HWC");
    assert_eq!(content(&by_dir), content(&folder), "shards and ImageFolder of the same files agree");
    assert_eq!((by_dir.mean, by_dir.std), folder.channel_stats(), "normalised with their own statistics");

    let pattern = dir.join("train-{000000..000002}.tar");
    assert_eq!(detect_format(&pattern).unwrap(), DatasetFormat::WebDataset);
    let by_pattern = load(&pattern, &LoadOptions::default()).unwrap();
    assert_eq!((&by_pattern.pixels, &by_pattern.labels), (&by_dir.pixels, &by_dir.labels));

    let one = load(&shards[1], &LoadOptions::default()).unwrap();
    assert_eq!(one.labels, all[4..8].iter().map(|s| s.label).collect::<Vec<_>>());
    assert_eq!(one.image(2), by_dir.image(6));
}

#[test]
fn bad_shards_name_the_shard_the_key_or_the_pattern() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let opts = LoadOptions::default();
    let good = members(&samples(3));

    // A member that is not an image names the shard and the key.
    let mut corrupt = good.clone();
    corrupt[3].1 = b"\xff\xd8\xff garbage, not a JPEG".to_vec(); // s000001.jpg
    write_tar(&dir.join("corrupt.tar"), &corrupt);
    let m = err(&dir.join("corrupt.tar"), &opts);
    assert!(m.contains("corrupt.tar") && m.contains("s000001") && m.contains("not a readable"), "{m}");

    // A sample without its label.
    let unlabelled: Vec<_> = good.iter().filter(|(n, _)| n != "s000002.cls").cloned().collect();
    write_tar(&dir.join("unlabelled.tar"), &unlabelled);
    let m = err(&dir.join("unlabelled.tar"), &opts);
    assert!(m.contains("unlabelled.tar") && m.contains("s000002") && m.contains(".cls"), "{m}");
    match load(&dir.join("unlabelled.tar"), &opts) {
        Err(DataError::MissingLabel { key, .. }) => assert_eq!(key, "s000002"),
        other => panic!("{other:?}"),
    }

    // A label that is not a class index, and a key with no image.
    let mut badcls = good.clone();
    badcls[1].1 = b"cat".to_vec();
    write_tar(&dir.join("badcls.tar"), &badcls);
    let m = err(&dir.join("badcls.tar"), &opts);
    assert!(m.contains("s000000") && m.contains("\"cat\""), "{m}");
    let mut noimage = good.clone();
    noimage.push(("lonely.cls".into(), b"1".to_vec()));
    write_tar(&dir.join("noimage.tar"), &noimage);
    let m = err(&dir.join("noimage.tar"), &opts);
    assert!(m.contains("lonely") && m.contains("no .jpg"), "{m}");

    // A file that is not a tar archive.
    fs::write(dir.join("nottar.tar"), vec![7u8; 700]).unwrap();
    let m = err(&dir.join("nottar.tar"), &opts);
    assert!(m.contains("nottar.tar"), "{m}");

    // Patterns: nothing matches (names the pattern), some shards missing (names the first).
    let nothing = dir.join("train-{000000..000009}.tar");
    let m = err(&nothing, &opts);
    assert!(m.contains("train-{000000..000009}.tar") && m.contains("matches no shard"), "{m}");
    write_tar(&dir.join("part-0.tar"), &good);
    let m = err(&dir.join("part-{0..2}.tar"), &opts);
    assert!(m.contains("2 of its 3 shards are missing") && m.contains("part-1.tar"), "{m}");
    let m = err(&dir.join("part-{0..2.tar"), &opts);
    assert!(m.contains("without"), "{m}");
}

#[test]
fn cached_shards_are_mapped_and_splits_are_views() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shards");
    write_shards(&dir, &samples(40), 9);
    let cache = tmp.path().join("cache");
    let opts = LoadOptions { cache_dir: Some(cache.clone()), ..Default::default() };
    let owned = load(&dir, &LoadOptions::default()).unwrap();
    assert!(!owned.pixels.is_mapped());

    let (first, r) = load_with_report(&dir, &opts).unwrap();
    assert!(!r.from_cache && r.cache_write_error.is_none(), "{r:?}");
    assert!(first.pixels.is_mapped(), "a decode into the cache maps what it wrote");
    let (second, r) = load_with_report(&dir, &opts).unwrap();
    assert!(r.from_cache && second.pixels.is_mapped());
    let file = r.cache_file.unwrap();
    assert_eq!(second.pixels.mapped_file(), Some(file.as_path()));
    assert_eq!(
        (&second.pixels, &second.labels, second.mean, second.std),
        (&owned.pixels, &owned.labels, owned.mean, owned.std)
    );

    // A hold-out split of a mapped store copies no pixel and holds the same images.
    let (tr, te) = second.split_holdout(0.25, 12345);
    let (otr, ote) = owned.split_holdout(0.25, 12345);
    for (m, o) in [(&tr, &otr), (&te, &ote)] {
        assert!(m.pixels.is_mapped() && m.view().is_some());
        assert_eq!((m.len(), &m.labels), (o.len(), &o.labels));
        assert!((0..m.len()).all(|i| m.image(i) == o.image(i)));
        assert_eq!(*m.contiguous_pixels(), *o.pixels);
    }
    let nested = te.subset(&[2, 0]);
    assert_eq!((nested.image(0), nested.image(1)), (ote.image(2), ote.image(0)));

    // A killed decode's leftover `.partial` is rewritten, never taken as a cache.
    drop((first, second, tr, te, nested));
    fs::remove_file(&file).unwrap();
    let partial = PathBuf::from(format!("{}.partial", file.display()));
    fs::write(&partial, b"half a cache").unwrap();
    let (again, r) = load_with_report(&dir, &opts).unwrap();
    assert!(!r.from_cache, "a .partial is not a cache");
    assert_eq!(again.pixels, owned.pixels);
    assert!(!partial.exists(), "the .partial became the cache file");
    assert!(load_with_report(&dir, &opts).unwrap().1.from_cache);

    // A failed decode leaves neither a cache nor a partial file.
    let bad_dir = tmp.path().join("bad");
    fs::create_dir_all(&bad_dir).unwrap();
    let mut m = members(&samples(600)); // more than one decode chunk: the failure comes late
    let at = m.iter().position(|(n, _)| n == "s000591.jpg").unwrap();
    m[at].1.truncate(40);
    write_tar(&bad_dir.join("a.tar"), &m);
    let bad_cache = tmp.path().join("bad-cache");
    let e = load(&bad_dir, &LoadOptions { cache_dir: Some(bad_cache.clone()), ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("s000591"), "{e}");
    no_partial_or_cache(&bad_cache);
}

#[test]
fn variable_size_folders_fit_with_image_size() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // (h, w): a wide image whose short side is already the size (crop only), a tall one and a
    // square one to shrink, a flat colour to shrink.
    let wide = rgb(6, 13, 1);
    let sizes = [("a", wide.clone()), ("b", rgb(11, 7, 2)), ("c", rgb(9, 9, 3))];
    fs::create_dir_all(root.join("x")).unwrap();
    fs::create_dir_all(root.join("y")).unwrap();
    for (name, img) in &sizes {
        img.save(root.join(format!("x/{name}.png"))).unwrap();
    }
    let flat: RgbImage = ImageBuffer::from_pixel(17, 10, Rgb([12, 200, 99]));
    flat.save(root.join("y/flat.png")).unwrap();

    let m = err(root, &LoadOptions::default());
    assert!(m.contains("image_size") || m.contains("resize"), "the mixed-size error says how to fix it: {m}");
    let s = load(root, &LoadOptions { image_size: Some(6), ..Default::default() }).unwrap();
    assert_eq!((s.len(), s.height, s.width, s.labels.clone()), (4, 6, 6, vec![0, 0, 0, 1]));

    // The wide image: Resize(6) keeps 6x13, CenterCrop(6) keeps columns off..off+6, exactly.
    assert_eq!(short_side_size(6, 13, 6), (6, 13));
    let off = center_crop_offset(13 - 6);
    let want: Vec<u8> = (0..6u32)
        .flat_map(|y| (off..off + 6).map(move |x| (x as u32, y)))
        .flat_map(|(x, y)| wide.get_pixel(x, y).0)
        .collect();
    assert_eq!(s.image(0), want.as_slice());
    assert!(s.image(3).chunks(3).all(|p| p == [12, 200, 99]), "a flat colour stays flat through the resize");

    // The same tree in shards fits the same way.
    let mut ms = Vec::new();
    for (i, (_, img)) in sizes.iter().enumerate() {
        ms.push((format!("k{i}.png"), encode(img, ImageFormat::Png)));
        ms.push((format!("k{i}.cls"), b"0".to_vec()));
    }
    let shard = root.join("var.tar");
    write_tar(&shard, &ms);
    let sh = load(&shard, &LoadOptions { image_size: Some(6), ..Default::default() }).unwrap();
    assert!((0..3).all(|i| sh.image(i) == s.image(i)));
    assert!(load(&shard, &LoadOptions::default()).unwrap_err().to_string().contains("var.tar:k0"));

    let both = LoadOptions { image_size: Some(6), resize: Some((6, 6)), ..Default::default() };
    assert!(err(root, &both).contains("image_size"));
    assert!(err(root, &LoadOptions { image_size: Some(0), ..Default::default() }).contains("image_size"));
}
