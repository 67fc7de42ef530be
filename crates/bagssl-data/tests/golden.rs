//! Golden vectors from the float64 PyTorch reference (`fixtures/golden/`): the oracle for the
//! patch vector (crop, flip, jitter, gray, normalise, HWC; docs/DEFINITIONS.md §3) and the evaluation grid (§8).

use bagssl_data::{gather_grid, gather_patches, grid_len, grid_positions, ImageStore, Jitter, PatchSpec};
use bagssl_testkit::{array, f32s, golden, usizes, verdict};
use serde_json::Value;

/// A golden spec: `oy`, `ox` and a `p x p` box (patches.json), or `top`, `left`, `height`, `width`
/// (resized_crop.json).
fn spec(v: &Value, p: u32) -> PatchSpec {
    let jitter = match &v["jitter"] {
        Value::Null => None,
        j => Some(Jitter {
            brightness: j["brightness"].as_f64().unwrap() as f32,
            contrast: j["contrast"].as_f64().unwrap() as f32,
            saturation: j["saturation"].as_f64().unwrap() as f32,
        }),
    };
    PatchSpec {
        flip: v["flip"].as_bool().unwrap(),
        jitter,
        gray: v["gray"].as_bool().unwrap(),
        ..match v.get("top") {
            None => PatchSpec::crop(u(&v["image"]), u(&v["oy"]), u(&v["ox"]), p),
            Some(top) => PatchSpec::boxed(u(&v["image"]), u(top), u(&v["left"]), u(&v["height"]), u(&v["width"])),
        }
    }
}

fn u(v: &Value) -> u32 {
    v.as_u64().unwrap() as u32
}

fn golden_store(g: &Value) -> ImageStore {
    let (shape, data) = array(&g["images"]);
    assert_eq!(shape.len(), 4);
    assert_eq!(shape[3], 3);
    let pixels: Vec<u8> = data.into_iter().map(|v| v as u8).collect();
    let mean = f32s(&g["mean"]);
    let std = f32s(&g["std"]);
    ImageStore::new(
        shape[1],
        shape[2],
        pixels,
        vec![0; shape[0]],
        vec!["x".into()],
        [mean[0], mean[1], mean[2]],
        [std[0], std[1], std[2]],
    )
    .unwrap()
}

#[test]
fn golden_patches() {
    let g = golden("patches.json");
    let p = g["patch"].as_u64().unwrap() as usize;
    let gw = f32s(&g["gray_weights"]);
    assert_eq!(gw, bagssl_data::GRAY_WEIGHTS.to_vec(), "gray weights differ from the golden file");
    let store = golden_store(&g);
    let specs: Vec<PatchSpec> = g["specs"].as_array().unwrap().iter().map(|v| spec(v, p as u32)).collect();
    let (shape, expect) = array(&g["patches"]);
    let d = p * p * 3;
    assert_eq!(shape, vec![specs.len(), d]);

    let mut out = vec![f32::NAN; specs.len() * d];
    gather_patches(&store, &specs, p, &mut out);
    let mut all_ok = true;
    for (i, s) in specs.iter().enumerate() {
        let diff = (0..d).map(|k| (f64::from(out[i * d + k]) - expect[i * d + k]).abs()).fold(0.0, f64::max);
        let ok = diff < 1e-5;
        all_ok &= ok;
        println!("{} patch {i} {s:?}: max abs diff {diff:.3e}", verdict(ok));
    }
    println!("overall: {}", if all_ok { "OK" } else { "NOT OK" });
    assert!(all_ok, "patch vectors differ from golden/patches.json");
}

#[test]
fn golden_grid() {
    let g = golden("grid.json");
    let (h, w) = (g["height"].as_u64().unwrap() as usize, g["width"].as_u64().unwrap() as usize);
    let (p, s) = (g["patch"].as_u64().unwrap() as usize, g["stride"].as_u64().unwrap() as usize);
    let expect: Vec<(usize, usize)> =
        g["positions"].as_array().unwrap().iter().map(|v| (usizes(v)[0], usizes(v)[1])).collect();
    let got = grid_positions(h, w, p, s);
    println!("{} grid {h}x{w} p={p} s={s}: {got:?}", if got == expect { "OK" } else { "NOT OK" });
    assert_eq!(got, expect);
    assert_eq!(grid_len(h, w, p, s), expect.len());
}

/// The grid gather must equal the spec gather at the grid positions with no augmentation.
#[test]
fn grid_gather_matches_spec_gather() {
    let store = golden_store(&golden("patches.json"));
    let (p, s) = (4usize, 3);
    let pos = grid_positions(store.height, store.width, p, s);
    let specs: Vec<PatchSpec> = (1..3u32)
        .flat_map(|image| pos.iter().map(move |&(oy, ox)| PatchSpec::crop(image, oy as u32, ox as u32, p as u32)))
        .collect();
    let d = p * p * 3;
    let mut a = vec![0.0; specs.len() * d];
    gather_patches(&store, &specs, p, &mut a);
    let mut b = vec![0.0; 2 * pos.len() * d];
    gather_grid(&store, 1..3, p, s, &mut b);
    assert_eq!(a, b);
}

/// Resized crops (docs/DEFINITIONS.md §3 step 1): integer boxes of every shape, larger and smaller
/// than the output, resized bilinearly with half-pixel centres, then flip / jitter / gray /
/// normalise, against the float64 golden `resized_crop.json`.
#[test]
fn golden_resized_crops() {
    let g = golden("resized_crop.json");
    let out = g["out"].as_u64().unwrap() as usize;
    let store = golden_store(&g);
    let specs: Vec<PatchSpec> = g["specs"].as_array().unwrap().iter().map(|v| spec(v, 0)).collect();
    let (shape, expect) = array(&g["patches"]);
    let d = out * out * 3;
    assert_eq!(shape, vec![specs.len(), d]);
    let mut got = vec![f32::NAN; specs.len() * d];
    gather_patches(&store, &specs, out, &mut got);
    let mut all_ok = true;
    for (i, s) in specs.iter().enumerate() {
        let diff = (0..d).map(|k| (f64::from(got[i * d + k]) - expect[i * d + k]).abs()).fold(0.0, f64::max);
        let ok = diff < 1e-5;
        all_ok &= ok;
        println!("{} resized crop {i} {}x{} -> {out}: max abs diff {diff:.3e}", verdict(ok), s.h, s.w);
    }
    println!("overall: {}", if all_ok { "OK" } else { "NOT OK" });
    assert!(all_ok, "resized crops differ from golden/resized_crop.json");
}
