//! A small PNG chart: grouped horizontal bars (p50, p99, p99.9) per transport on a log scale, text
//! drawn with an 8x8 bitmap font. No system fonts or graphics libraries needed.

use anyhow::Result;
use font8x8::UnicodeFonts;

/// One transport's latency percentiles (p50, p99, p99.9), ns.
#[derive(Debug, Clone)]
pub(super) struct Series {
    /// Transport name.
    pub label: String,
    /// p50, p99, p99.9 in ns.
    pub values: [f64; 3],
}

const WIDTH: usize = 1000;
const LEFT: usize = 250;
const RIGHT: usize = 40;
const TOP: usize = 70;
const BAR: usize = 14;
const GROUP: usize = 3 * BAR + 18;
const COLORS: [[u8; 3]; 3] = [[46, 125, 196], [240, 150, 40], [200, 60, 60]];
const NAMES: [&str; 3] = ["p50", "p99", "p99.9"];

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, c: [u8; 3]) {
        for yy in y..(y + h).min(self.h) {
            for xx in x..(x + w).min(self.w) {
                let i = (yy * self.w + xx) * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, s: &str, scale: usize, c: [u8; 3]) {
        for (n, ch) in s.chars().enumerate() {
            let glyph = font8x8::BASIC_FONTS.get(ch).unwrap_or([0; 8]);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    if bits & (1 << col) != 0 {
                        self.rect(x + (n * 8 + col) * scale, y + row * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    fn png(&self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut enc = png::Encoder::new(&mut out, self.w as u32, self.h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header()?.write_image_data(&self.px)?;
        Ok(out)
    }
}

/// Human form of a latency in ns.
pub(super) fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3}ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1}us", ns / 1e3)
    } else {
        format!("{ns:.0}ns")
    }
}

/// Draws the chart and returns PNG bytes. An empty `series` gives a chart saying so.
///
/// # Errors
///
/// When PNG encoding fails.
pub(super) fn latency_chart(title: &str, series: &[Series]) -> Result<Vec<u8>> {
    let h = TOP + series.len().max(1) * GROUP + 50;
    let mut c = Canvas::new(WIDTH, h);
    c.text(10, 10, title, 2, [0, 0, 0]);
    for (i, name) in NAMES.iter().enumerate() {
        let x = LEFT + i * 120;
        c.rect(x, 40, 14, 14, COLORS[i]);
        c.text(x + 20, 43, name, 1, [0, 0, 0]);
    }
    if series.is_empty() {
        c.text(LEFT, TOP + 20, "no latency figures measured", 2, [0, 0, 0]);
        return c.png();
    }
    let finite = || {
        series
            .iter()
            .flat_map(|s| s.values)
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let lo = finite().fold(f64::INFINITY, f64::min).max(1.0);
    let hi = finite().fold(1.0, f64::max);
    let (d0, d1) = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let span = (WIDTH - LEFT - RIGHT) as f64;
    let x_of = |v: f64| LEFT + ((v.max(1.0).log10() - d0) / (d1 - d0) * span) as usize;
    let bottom = TOP + series.len() * GROUP;
    let mut d = d0;
    while d <= d1 {
        let x = x_of(10f64.powf(d));
        c.rect(x, TOP - 4, 1, bottom - TOP + 8, [200, 200, 200]);
        c.text(
            x.saturating_sub(12),
            bottom + 10,
            &fmt_ns(10f64.powf(d)),
            1,
            [0, 0, 0],
        );
        d += 1.0;
    }
    for (g, s) in series.iter().enumerate() {
        let y0 = TOP + g * GROUP;
        let label: String = s.label.chars().take(14).collect();
        c.text(10, y0 + GROUP / 2 - 12, &label, 2, [0, 0, 0]);
        for (k, v) in s.values.iter().enumerate() {
            let y = y0 + k * BAR;
            let x = x_of(*v);
            c.rect(LEFT, y, x.saturating_sub(LEFT).max(1), BAR - 2, COLORS[k]);
            c.text(x + 4, y + 3, &fmt_ns(*v), 1, [60, 60, 60]);
        }
    }
    c.rect(LEFT, TOP - 4, 1, bottom - TOP + 8, [0, 0, 0]);
    c.png()
}
