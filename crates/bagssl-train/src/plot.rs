//! Figures as PNG files: panels of line plots (and bars), drawn with plotters into an RGB buffer
//! and encoded with the workspace's `image` (plotters' own encoder would pull a second `image`).
//! Text uses an embedded font, DejaVu Sans subset to ASCII (assets/DejaVuSans-LICENSE.txt), so no
//! figure depends on the fonts of the machine.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

pub const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");

/// Colours that stay apart in print and for the common colour blindnesses (Okabe-Ito).
pub const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];
/// Thresholds and events.
pub const ALERT: RGBColor = RGBColor(200, 30, 30);

pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
            .unwrap_or_else(|_| panic!("the embedded font assets/DejaVuSans-subset.ttf does not parse"));
    });
}

/// One line (or, with `points`, markers joined by a line) of a panel.
#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub markers: bool,
}

impl Series {
    pub fn line(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points, markers: false }
    }
    pub fn with_markers(name: &str, points: Vec<(f64, f64)>) -> Series {
        Series { name: name.into(), points, markers: true }
    }
}

/// What one panel shows.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Logarithmic y axis (values <= 0 are left out).
    pub log_y: bool,
    /// Logarithmic x axis, base 2 (for k = 1, 2, 4, ...).
    pub log2_x: bool,
    /// Fixed y range (else the data's, padded).
    pub y_range: Option<(f64, f64)>,
    /// The padded data range stops here (a cosine never exceeds 1).
    pub y_max: Option<f64>,
    /// Horizontal reference lines with their legend names (thresholds).
    pub hlines: Vec<(f64, String)>,
    /// Vertical lines at these x (events), with one legend name for all.
    pub vlines: Vec<f64>,
    pub vline_name: String,
    /// Bars instead of lines: (category, value), one colour each.
    pub bars: Vec<(String, f64)>,
    /// Shown in the middle when there is nothing to plot.
    pub empty_note: String,
}

/// A figure: a title and a grid of panels, `rows x cols`, `size` pixels.
pub struct Figure {
    pub title: String,
    pub panels: Vec<Panel>,
    pub grid: (usize, usize),
    pub size: (u32, u32),
}

impl Figure {
    /// Draws the figure and returns the PNG bytes.
    pub fn render(&self) -> Result<Vec<u8>> {
        register_font();
        let (w, h) = self.size;
        let mut buf = vec![255u8; w as usize * h as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
            root.fill(&WHITE).map_err(draw_err)?;
            let body = root.titled(&self.title, (FONT, 26)).map_err(draw_err)?;
            let areas = body.split_evenly(self.grid);
            for (panel, area) in self.panels.iter().zip(areas.iter()) {
                draw_panel(area, panel)?;
            }
            root.present().map_err(draw_err)?;
        }
        encode_png(buf, w, h)
    }

    /// Draws the figure into `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let png = self.render().with_context(|| format!("drawing {}", path.display()))?;
        crate::setup::write_atomic(path, &png)
    }
}

/// An RGB buffer as PNG bytes.
pub fn encode_png(rgb: Vec<u8>, w: u32, h: u32) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_raw(w, h, rgb).ok_or_else(|| anyhow!("an RGB buffer of the wrong size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).context("encoding PNG")?;
    Ok(png)
}

pub fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

/// y as drawn: log10 on a log axis (None for values it cannot show).
fn y_of(panel: &Panel, y: f64) -> Option<f64> {
    match (y.is_finite(), panel.log_y) {
        (false, _) => None,
        (true, true) => (y > 0.0).then(|| y.log10()),
        (true, false) => Some(y),
    }
}

fn x_of(panel: &Panel, x: f64) -> Option<f64> {
    match (x.is_finite(), panel.log2_x) {
        (false, _) => None,
        (true, true) => (x > 0.0).then(|| x.log2()),
        (true, false) => Some(x),
    }
}

/// A label for a tick at `v`, in the axis' own units.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.0e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        // Three significant digits, so that neighbouring ticks differ (0.0025 and 0.003), no
        // trailing zeros.
        let decimals = (2 - a.log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{v:.decimals$}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

fn two_digits(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(1 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

/// The right-hand corner (upper or lower) whose quarter of the plot holds fewer points, so that
/// the legend hides as little of the data as it can.
fn legend_corner(pts: &[Vec<(f64, f64)>], (x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> SeriesLabelPosition {
    let right = x0 + 0.55 * (x1 - x0);
    let (low, high) = (y0 + 0.35 * (y1 - y0), y0 + 0.65 * (y1 - y0));
    let (mut upper, mut lower) = (0, 0);
    for &(_, y) in pts.iter().flatten().filter(|p| p.0 >= right) {
        upper += usize::from(y >= high);
        lower += usize::from(y <= low);
    }
    if lower < upper {
        SeriesLabelPosition::LowerRight
    } else {
        SeriesLabelPosition::UpperRight
    }
}

fn draw_panel(area: &DrawingArea<BitMapBackend<'_>, Shift>, panel: &Panel) -> Result<()> {
    if !panel.bars.is_empty() {
        return draw_bars(area, panel);
    }
    let pts: Vec<Vec<(f64, f64)>> = panel
        .series
        .iter()
        .map(|s| s.points.iter().filter_map(|&(x, y)| Some((x_of(panel, x)?, y_of(panel, y)?))).collect())
        .collect();
    let all = pts.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    for (y, _) in &panel.hlines {
        if let Some(y) = y_of(panel, *y) {
            (y0, y1) = (y0.min(y), y1.max(y));
        }
    }
    if !x0.is_finite() {
        area.draw(&Text::new(
            format!("{}: {}", panel.title, panel.empty_note),
            (20, 40),
            (FONT, 18).into_font().color(&BLACK),
        ))
        .map_err(draw_err)?;
        return Ok(());
    }
    if let Some((a, b)) = panel.y_range {
        (y0, y1) = (y_of(panel, a).unwrap_or(y0), y_of(panel, b).unwrap_or(y1));
    } else {
        let pad = ((y1 - y0) * 0.06).max(if panel.log_y { 0.05 } else { 1e-9 + y1.abs() * 0.05 });
        (y0, y1) = (y0 - pad, panel.y_max.map_or(y1 + pad, |m| (y1 + pad).min(m.max(y1))));
    }
    if x1 <= x0 {
        // One x value (an evaluation at the last step): a range that gives distinct ticks.
        let pad = (x0.abs() * 0.05).max(0.5);
        (x0, x1) = (x0 - pad, x1 + pad);
    }
    let (log_y, log2_x) = (panel.log_y, panel.log2_x);
    // Log ticks fall on arbitrary values: two significant digits say them well enough.
    let ylab = move |v: &f64| if log_y { tick(two_digits(10f64.powf(*v))) } else { tick(*v) };
    let xlab = move |v: &f64| if log2_x { tick(2f64.powf(*v)) } else { tick(*v) };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(74)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .x_label_formatter(&xlab)
        .y_label_formatter(&ylab)
        .x_labels(if log2_x { ((x1 - x0).round() as usize + 1).clamp(2, 12) } else { 8 })
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(draw_err)?;
    for (i, (s, p)) in panel.series.iter().zip(&pts).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(p.iter().copied(), style))
            .map_err(draw_err)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(3)));
        if s.markers {
            chart.draw_series(p.iter().map(|&q| Circle::new(q, 4, color.filled()))).map_err(draw_err)?;
        }
    }
    for (y, name) in &panel.hlines {
        if let Some(y) = y_of(panel, *y) {
            chart
                .draw_series(DashedLineSeries::new([(x0, y), (x1, y)], 8, 6, ALERT.stroke_width(2)))
                .map_err(draw_err)?
                .label(name.clone())
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], ALERT.stroke_width(2)));
        }
    }
    for (i, &x) in panel.vlines.iter().enumerate() {
        let Some(x) = x_of(panel, x) else { continue };
        let s = chart
            .draw_series(DashedLineSeries::new([(x, y0), (x, y1)], 4, 4, ALERT.stroke_width(1)))
            .map_err(draw_err)?;
        if i == 0 {
            s.label(panel.vline_name.clone())
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], ALERT.stroke_width(1)));
        }
    }
    if panel.series.len() + panel.hlines.len() + usize::from(!panel.vlines.is_empty()) > 1 {
        chart
            .configure_series_labels()
            .position(legend_corner(&pts, (x0, x1), (y0, y1)))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font((FONT, 15))
            .draw()
            .map_err(draw_err)?;
    }
    Ok(())
}

/// A bar per category, its value written above it.
fn draw_bars(area: &DrawingArea<BitMapBackend<'_>, Shift>, panel: &Panel) -> Result<()> {
    let n = panel.bars.len();
    let top = panel.y_range.map_or_else(|| panel.bars.iter().map(|b| b.1).fold(0.0, f64::max) * 1.15, |r| r.1);
    let names: Vec<String> = panel.bars.iter().map(|b| b.0.clone()).collect();
    let xlab = move |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
            names[i as usize].clone()
        } else {
            String::new()
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.6..n as f64 - 0.4, 0.0..top.max(1e-9))
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&xlab)
        .y_label_formatter(&|v| tick(*v))
        .x_desc(&panel.x_label)
        .y_desc(&panel.y_label)
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(draw_err)?;
    for (i, (_, v)) in panel.bars.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let x = i as f64;
        chart.draw_series([Rectangle::new([(x - 0.35, 0.0), (x + 0.35, *v)], color.filled())]).map_err(draw_err)?;
        chart
            .draw_series([Text::new(
                format!("{:.1}%", 100.0 * v),
                (x - 0.18, *v + top * 0.045),
                (FONT, 16).into_font().color(&BLACK),
            )])
            .map_err(draw_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_read_well() {
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(1500.0), "1500");
        assert_eq!(tick(0.25), "0.25");
        // A learning-rate axis: ticks 5e-4 apart stay apart.
        assert_eq!((tick(0.0025), tick(0.003), tick(0.0035)), ("0.0025".into(), "0.003".into(), "0.0035".into()));
        assert_eq!((tick(12.5), tick(0.123456), tick(17.99999)), ("12.5".into(), "0.123".into(), "18".into()));
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(1e-4), "1e-4");
        assert_eq!(two_digits(0.7943), 0.79);
        assert_eq!(two_digits(0.0251), 0.025);
        assert_eq!(two_digits(3981.0), 4000.0);
    }

    /// A figure with lines, a log axis, thresholds, events, bars and an empty panel renders to a
    /// PNG of the asked size, with text drawn (dark pixels beyond the lines' colours).
    #[test]
    fn a_figure_renders_to_png() {
        let line = (0..50).map(|i| (i as f64 * 10.0, (-(i as f64) / 10.0).exp())).collect::<Vec<_>>();
        let fig = Figure {
            title: "test figure".into(),
            panels: vec![
                Panel {
                    title: "decay".into(),
                    x_label: "step".into(),
                    y_label: "value".into(),
                    series: vec![Series::line("a", line.clone()), Series::with_markers("b", line[..5].to_vec())],
                    log_y: true,
                    hlines: vec![(0.01, "threshold".into())],
                    vlines: vec![120.0],
                    vline_name: "event".into(),
                    ..Panel::default()
                },
                Panel { bars: vec![("knn".into(), 0.5), ("linear".into(), 0.7)], ..Panel::default() },
                Panel { title: "nothing".into(), empty_note: "no data".into(), ..Panel::default() },
            ],
            grid: (1, 3),
            size: (900, 300),
        };
        let png = fig.render().unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (900, 300));
        let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 60)).count();
        assert!(dark > 500, "text and axes are drawn: {dark} dark pixels");
    }
}
