//! Times the CPU patch gather at the reference configuration (docs/DEFINITIONS.md §11).
//!
//! `cargo run -p bagssl-data --release --example gather_bench`
//!
//! Napkin math: one step is 256 images x 16 patches x 8*8*3 = 786k floats written (3.1 MB) from
//! 196k bytes read; the work is a few flops per float, so this should take well under a
//! millisecond per core and never be the bottleneck next to the encoder's GEMMs.

use std::time::Instant;

use bagssl_data::{gather_grid, gather_patches, grid_len, synthetic, PatchSampler, SyntheticSpec};

fn time(label: &str, reps: usize, floats: usize, mut f: impl FnMut()) {
    f(); // warm-up
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
    let rate = if floats > 0 { format!("{:6.2} GB/s written", floats as f64 * 4.0 / ms / 1e6) } else { "-".into() };
    println!("{label:<32} | {ms:8.3} ms | {rate}");
}

fn main() {
    let store = synthetic(&SyntheticSpec { images: 2048, ..Default::default() });
    let (b, n, p) = (256, 16, 8);
    let images: Vec<u32> = (0..b as u32).collect();
    for augment in [false, true] {
        let mut sampler = PatchSampler::new(0, augment);
        let specs = sampler.sample(&images, n, p, store.height, store.width);
        let mut out = vec![0f32; specs.len() * p * p * 3];
        time(&format!("gather_patches augment={augment}"), 50, out.len(), || {
            gather_patches(&store, &specs, p, &mut out)
        });
        time(&format!("sample augment={augment}"), 50, 0, || {
            std::hint::black_box(sampler.sample(&images, n, p, store.height, store.width));
        });
    }
    let (imgs, stride) = (256, 2);
    let mut out = vec![0f32; imgs * grid_len(store.height, store.width, p, stride) * p * p * 3];
    time("gather_grid 256 images stride 2", 20, out.len(), || gather_grid(&store, 0..imgs, p, stride, &mut out));
}
