//! Times the linear probe at the size a CIFAR-10 run uses (45k x 512 features, 10 classes,
//! 50 epochs): `cargo run --release -p bagssl-eval --example probe_timing`.

use bagssl_eval::{linear_probe, Labeled, Splits};

fn main() {
    let (n, dim, classes) = (45_000, 512, 10);
    let mut rng = bagssl_data::SeededRng::new(7);
    let centres: Vec<f32> = (0..classes * dim).map(|_| 4.0 * (rng.uniform() - 0.5)).collect();
    let total = n + 5_000;
    let mut x = Vec::with_capacity(total * dim);
    let y: Vec<u32> = (0..total).map(|i| (i % classes) as u32).collect();
    for &c in &y {
        x.extend((0..dim).map(|d| centres[c as usize * dim + d] + 2.0 * (rng.uniform() - 0.5)));
    }
    let t = std::time::Instant::now();
    let splits = Splits {
        train: Labeled { features: &x[..n * dim], labels: &y[..n] },
        test: Labeled { features: &x[n * dim..], labels: &y[n..] },
        dim,
        classes,
    };
    let acc = linear_probe(&splits, 50, 0).expect("probe");
    println!(
        "linear probe, {n} x {dim}, {classes} classes, 50 epochs: {:.2} s (accuracy {acc:.3})",
        t.elapsed().as_secs_f64()
    );
}
