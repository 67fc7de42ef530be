//! Writes a PNG contact sheet of the synthetic dataset: one row per class, 8 images each,
//! scaled up 4x, so a person can see what the classes look like.
//!
//! `cargo run -p bagssl-data --example synthetic_preview -- synthetic.png [seed]`

use bagssl_data::{synthetic, SyntheticSpec};
use image::{Rgb, RgbImage};

fn main() {
    let mut args = std::env::args().skip(1);
    let out = args.next().unwrap_or_else(|| "synthetic.png".into());
    let seed = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let spec = SyntheticSpec { images: 200, seed, ..Default::default() };
    let s = synthetic(&spec);
    let (per_row, scale, gap) = (8u32, 4u32, 2u32);
    let (h, w) = (s.height as u32, s.width as u32);
    let cell = (w * scale + gap, h * scale + gap);
    let mut sheet = RgbImage::from_pixel(per_row * cell.0, s.classes.len() as u32 * cell.1, Rgb([255; 3]));
    for class in 0..s.classes.len() {
        let members = (0..s.len()).filter(|&i| s.labels[i] as usize == class).take(per_row as usize);
        for (col, i) in members.enumerate() {
            let img = s.image(i);
            for y in 0..h * scale {
                for x in 0..w * scale {
                    let p = &img[(((y / scale) * w + x / scale) * 3) as usize..][..3];
                    sheet.put_pixel(col as u32 * cell.0 + x, class as u32 * cell.1 + y, Rgb([p[0], p[1], p[2]]));
                }
            }
        }
    }
    sheet.save(&out).unwrap_or_else(|e| panic!("{out}: {e}"));
    println!("wrote {out}: classes {:?}", s.classes);
}
