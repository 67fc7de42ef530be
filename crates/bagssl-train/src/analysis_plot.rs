//! The figures of `analyze`: the whole-vs-bag curves and the accuracy bars as `plot::Figure`s,
//! and the nearest-neighbour mosaic, image crops blitted into an RGB buffer (nearest-neighbour
//! upscaling, so pixels stay pixels) with the labels drawn by plotters in the embedded font.

use std::path::Path;

use anyhow::{Context, Result};
use bagssl_data::ImageStore;
use bagssl_eval::analysis::{BagCurve, Locality, NeighbourReport, PatchRef};
use plotters::prelude::*;

use crate::commands::analyze::Accuracy;
use crate::plot::{draw_err, encode_png, register_font, Figure, Panel, Series, FONT, PALETTE};

pub fn whole_vs_bag(curves: &[BagCurve], label: &str) -> Figure {
    let series = |f: fn(&BagCurve) -> &Vec<f64>| {
        curves
            .iter()
            .map(|c| {
                let pts = c.k.iter().zip(f(c)).map(|(&k, &v)| (k as f64, v)).collect();
                Series::with_markers(&format!("{}px patches ({} per image)", c.side, c.grid), pts)
            })
            .collect::<Vec<_>>()
    };
    let images = curves.first().map_or(0, |c| c.images);
    let panel = |title: &str, y: &str, s| Panel {
        title: title.into(),
        x_label: "k, patches in the bag (log scale)".into(),
        y_label: y.into(),
        series: s,
        log2_x: true,
        empty_note: "no patch scale fits".into(),
        y_max: Some(1.0),
        ..Panel::default()
    };
    Figure {
        title: format!("{label}: whole image vs bag of k patches (mean over {images} held-out images)"),
        panels: vec![
            panel("cos(whole-image embedding, mean of k patches)", "mean cosine", series(|c| &c.cosine_whole)),
            panel("cos(mean of k patches, mean of all grid patches)", "mean cosine", series(|c| &c.cosine_full_bag)),
        ],
        grid: (1, 2),
        size: (1500, 600),
    }
}

pub fn accuracy(acc: &[Accuracy], title: &str) -> Figure {
    let top = acc.iter().map(|a| a.knn).fold(0.0, f64::max);
    Figure {
        title: title.into(),
        panels: vec![Panel {
            title: "kNN accuracy by aggregation".into(),
            x_label: "how an image becomes one embedding".into(),
            y_label: "accuracy".into(),
            bars: acc.iter().map(|a| (a.name.clone(), a.knn)).collect(),
            y_range: Some((0.0, (top * 1.15).clamp(0.05, 1.0))),
            ..Panel::default()
        }],
        grid: (1, 1),
        size: (260 + 170 * acc.len() as u32, 560),
    }
}

/// The neighbours' frame colour: the query's class or another.
const SAME: RGBColor = PALETTE[0];
const OTHER: RGBColor = PALETTE[1];
/// Crops are shown this many pixels wide (at least; integer upscaling).
const CELL: usize = 64;
const FRAME: usize = 3;
const PAD: usize = 8;
/// Under each crop: class name and position.
const CAPTION: usize = 34;
const GAP: usize = 36;
const HEADER: usize = 130;
const ROW_LABEL: usize = 24;

/// An RGB canvas with blits and rectangles.
struct Canvas {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: RGBColor) {
        for yy in y..(y + h).min(self.h) {
            for xx in x..(x + w).min(self.w) {
                self.rgb[(yy * self.w + xx) * 3..][..3].copy_from_slice(&[c.0, c.1, c.2]);
            }
        }
    }

    /// A frame of width `t` just outside the `w x h` box at (x, y).
    fn frame(&mut self, x: usize, y: usize, w: usize, h: usize, t: usize, c: RGBColor) {
        let (x0, y0) = (x.saturating_sub(t), y.saturating_sub(t));
        self.rect(x0, y0, w + 2 * t, t, c);
        self.rect(x0, y + h, w + 2 * t, t, c);
        self.rect(x0, y0, t, h + 2 * t, c);
        self.rect(x + w, y0, t, h + 2 * t, c);
    }

    /// The `(oy, ox, ph, pw)` crop of image `i`, each source pixel `scale`x`scale`, at (x, y).
    fn blit(
        &mut self,
        store: &ImageStore,
        i: usize,
        (oy, ox, ph, pw): (usize, usize, usize, usize),
        scale: f64,
        x: usize,
        y: usize,
    ) {
        let img = store.image(i);
        let (dw, dh) = ((pw as f64 * scale) as usize, (ph as f64 * scale) as usize);
        for dy in 0..dh {
            let sy = oy + ((dy as f64 / scale) as usize).min(ph - 1);
            for dx in 0..dw {
                let sx = ox + ((dx as f64 / scale) as usize).min(pw - 1);
                let (yy, xx) = (y + dy, x + dx);
                if yy < self.h && xx < self.w {
                    let s = (sy * store.width + sx) * 3;
                    self.rgb[(yy * self.w + xx) * 3..][..3].copy_from_slice(&img[s..s + 3]);
                }
            }
        }
    }
}

fn short(name: &str) -> String {
    name.chars().take(11).collect()
}

fn summary(name: &str, l: &Locality) -> String {
    format!(
        "{name}: offset {:.1} px, same position {:.0}%, same class {:.0}%",
        l.mean_offset_px,
        100.0 * l.same_position,
        100.0 * l.same_class
    )
}

/// The mosaic: one row per shown query: its image with the patch outlined, the patch, its h
/// neighbours, a gap, its z neighbours; every crop `CELL` pixels or more, framed by whether the
/// neighbour's class is the query's.
pub fn neighbours_png(r: &NeighbourReport, pool: &ImageStore, label: &str) -> Result<Vec<u8>> {
    register_font();
    let p = r.patch;
    let scale = CELL.div_ceil(p).max(1) as f64;
    let cell = (p as f64 * scale) as usize;
    let img_scale = cell as f64 / pool.height.max(pool.width) as f64;
    let step = cell + 2 * FRAME + PAD;
    let k = r.k;
    let (x_query, x_h) = (PAD + FRAME + step, PAD + FRAME + 2 * step + GAP);
    let x_z = x_h + k * step + GAP;
    let w = (x_z + k * step + PAD).max(900);
    let row_h = ROW_LABEL + cell + 2 * FRAME + CAPTION;
    let h = HEADER + r.shown.len() * row_h + PAD;
    let mut c = Canvas { w, h, rgb: vec![255; w * h * 3] };
    let class = |pr: &PatchRef| pool.classes.get(pr.label as usize).map_or_else(|| pr.label.to_string(), |s| short(s));
    let mut texts: Vec<(String, usize, usize, u32)> = Vec::new();
    for (row, q) in r.shown.iter().enumerate() {
        let y = HEADER + row * row_h + ROW_LABEL;
        // The query's whole image, the patch outlined.
        c.blit(pool, q.query.image, (0, 0, pool.height, pool.width), img_scale, PAD + FRAME, y);
        let (bx, by) =
            (PAD + FRAME + (q.query.ox as f64 * img_scale) as usize, y + (q.query.oy as f64 * img_scale) as usize);
        let bs = (p as f64 * img_scale) as usize;
        c.frame(bx, by, bs.saturating_sub(2), bs.saturating_sub(2), 2, crate::plot::ALERT);
        c.blit(pool, q.query.image, (q.query.oy, q.query.ox, p, p), scale, x_query, y);
        c.frame(x_query, y, cell, cell, FRAME, RGBColor(0, 0, 0));
        let yc = y + cell + FRAME + 2;
        texts.push((format!("query {}", row + 1), PAD, y - ROW_LABEL + 4, 15));
        texts.push((class(&q.query), x_query - FRAME, yc, 13));
        texts.push((format!("at y{} x{}", q.query.oy, q.query.ox), x_query - FRAME, yc + 15, 12));
        for (x0, list) in [(x_h, &q.h), (x_z, &q.z)] {
            for (j, n) in list.iter().enumerate() {
                let x = x0 + j * step;
                c.blit(pool, n.patch.image, (n.patch.oy, n.patch.ox, p, p), scale, x, y);
                c.frame(x, y, cell, cell, FRAME, if n.patch.label == q.query.label { SAME } else { OTHER });
                texts.push((class(&n.patch), x - FRAME, yc, 13));
                texts.push((format!("y{} x{} {:.2}", n.patch.oy, n.patch.ox, n.cosine), x - FRAME, yc + 15, 12));
            }
        }
    }
    let header = [
        (format!("{label}: nearest {p}px patches of other images (pool: {} held-out images)", r.pool_images), PAD, 8, 22),
        (
            format!(
                "over {} queries: {};  {};  {}",
                r.stat_queries,
                summary("h", &r.h),
                summary("z", &r.z),
                summary("chance", &r.chance)
            ),
            PAD,
            40,
            14,
        ),
        (
            "frame: blue = the query's class, orange = another class; under each patch: class, position (y, x pixels), cosine"
                .to_string(),
            PAD,
            62,
            14,
        ),
        ("image / query".to_string(), PAD, HEADER - 34, 16),
        (format!("h: encoder output, {k} nearest"), x_h, HEADER - 34, 18),
        (format!("z: projector output, {k} nearest"), x_z, HEADER - 34, 18),
    ];
    texts.extend(header.into_iter().map(|(t, x, y, s)| (t, x, y, s as u32)));
    {
        let root = BitMapBackend::with_buffer(&mut c.rgb, (w as u32, h as u32)).into_drawing_area();
        for (t, x, y, size) in &texts {
            root.draw(&Text::new(t.clone(), (*x as i32, *y as i32), (FONT, *size as f64).into_font().color(&BLACK)))
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    encode_png(c.rgb, w as u32, h as u32)
}

pub fn save_neighbours(r: &NeighbourReport, pool: &ImageStore, label: &str, path: &Path) -> Result<()> {
    let png = neighbours_png(r, pool, label).with_context(|| format!("drawing {}", path.display()))?;
    crate::setup::write_atomic(path, &png)
}
