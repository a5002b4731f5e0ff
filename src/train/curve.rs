//! The training curve: every step's loss and every epoch's validation loss, kept as the
//! checkpoint's metadata and drawn as `<out>.curve.png` beside the weights.
//!
//! The history travels with the checkpoint (not in a file of its own) so that it always
//! matches the step `--resume` continues from: a resumed run cuts the history back to the
//! checkpoint's step and appends to it, and its picture shows the whole run. The loss of every
//! step is kept unsmoothed (an `f32`, exact: the loop reads it as one); the smoothing the loop
//! logs is [`smooth`], replayed over it, so a resumed run also logs what the uninterrupted one
//! would have.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::eval::text::{picture, Area, Drawn, FAMILY};

/// Size of the curve picture.
const SIZE: (usize, usize) = (900, 540);

/// The losses of a training run so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Index `i`: the training loss of step `i + 1`; `None` for a step trained before the
    /// history was kept (a checkpoint from an older version).
    pub train: Vec<Option<f32>>,
    /// `(steps done, validation loss)` after each epoch.
    pub val: Vec<(usize, f64)>,
    /// What the validation loss measures (it need not be the training loss: a segmenter is
    /// validated by 1 − IoU).
    #[serde(default)]
    pub val_measure: String,
}

/// The moving average of the training loss the loop logs: `l` after `ema` (NaN: none yet).
pub fn smooth(ema: f64, l: f64) -> f64 {
    if ema.is_nan() {
        l
    } else {
        0.98 * ema + 0.02 * l
    }
}

impl History {
    /// The loss of step `step` (counted from 1).
    pub fn push_train(&mut self, step: usize, loss: f32) {
        if self.train.len() < step {
            self.train.resize(step, None);
        }
        self.train[step - 1] = Some(loss);
    }

    /// The validation loss after `step` steps.
    pub fn push_val(&mut self, step: usize, loss: f64) {
        self.val.retain(|&(s, _)| s < step);
        self.val.push((step, loss));
    }

    /// Forgets what came after `step` (a checkpoint written there does not know it).
    pub fn truncate(&mut self, step: usize) {
        self.train.truncate(step);
        self.val.retain(|&(s, _)| s <= step);
    }

    /// [`smooth`] over every known step, as the loop had it after the last one.
    pub fn ema(&self) -> f64 {
        self.train
            .iter()
            .flatten()
            .fold(f64::NAN, |e, &l| smooth(e, f64::from(l)))
    }
}

/// How many steps the drawn training curve averages: about a 60th of the run, so the line
/// follows the loss's course without its step-to-step noise.
fn window(points: usize) -> usize {
    (points / 60).max(1)
}

/// The mean of each point's centred window of `k` points (a moving average that, unlike the
/// logged [`smooth`], does not lag behind the loss).
fn centred_mean(points: &[(f64, f64)], k: usize) -> Vec<(f64, f64)> {
    let mut sum = vec![0.0];
    for p in points {
        sum.push(sum[sum.len() - 1] + p.1);
    }
    let n = points.len();
    (0..n)
        .map(|i| {
            let (a, b) = (i.saturating_sub(k / 2), (i + k - k / 2).min(n));
            (points[i].0, (sum[b] - sum[a]) / (b - a) as f64)
        })
        .collect()
}

/// An axis label with three significant digits and no float noise (0.35, 1.2e-4, 120).
fn tick(v: &f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let decimals = (2 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').into()
        } else {
            s
        }
    }
}

/// Where the curve of the weights `out` goes: `<out without extension>.curve.png`
/// (`denoise.safetensors` → `denoise.curve.png`).
pub fn curve_path(out: &Path) -> PathBuf {
    out.with_extension("curve.png")
}

/// Draws `history` and writes it to `path` (atomically). `title` heads the picture.
pub fn write_curve(path: &Path, history: &History, title: &str) -> Result<()> {
    let what = path.display().to_string();
    let img = draw_curve(history, title, &what)?;
    let png = crate::frame::encode_png(&img, &what)?;
    Ok(crate::runtime::write_atomic(path, &png)?)
}

/// The picture [`write_curve`] writes.
pub fn draw_curve(history: &History, title: &str, what: &str) -> Result<crate::frame::Planes> {
    let raw: Vec<(f64, f64)> = history
        .train
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|l| ((i + 1) as f64, f64::from(l))))
        .filter(|(_, l)| l.is_finite())
        .collect();
    let k = window(raw.len());
    let mean = centred_mean(&raw, k);
    let val: Vec<(f64, f64)> = history
        .val
        .iter()
        .map(|&(s, l)| (s as f64, l))
        .filter(|(_, l)| l.is_finite())
        .collect();
    let ys = || raw.iter().chain(&val).map(|p| p.1);
    let (lo, hi) = ys().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    // From the first known step (a history resumed from an older checkpoint begins late).
    let first = raw.first().or(val.first()).map_or(0.0, |p| p.0 - 1.0);
    let last = history
        .train
        .len()
        .max(val.last().map_or(0, |v| v.0 as usize));
    let x = first..(last as f64).max(first + 1.0);
    let train_label = if k > 1 {
        format!("train (mean of {k} steps; faint: each step)")
    } else {
        "train (each step)".to_string()
    };
    let val_label = match history.val_measure.as_str() {
        "" => "validation (each epoch)".to_string(),
        m => format!("validation {m} (each epoch)"),
    };
    let series = Series {
        raw: &raw,
        mean: &mean,
        val: &val,
        title,
        train_label: &train_label,
        val_label: &val_label,
    };
    picture(SIZE.0, SIZE.1, what, |area| {
        if !(lo.is_finite() && hi.is_finite()) {
            // Nothing trained yet: empty axes.
            return series.draw(area, x, 0.0..1.0, "loss");
        }
        // A loss that falls over decades reads best on a log axis; one that does not, or
        // that can be zero or negative (SURE), on a linear one.
        if lo > 0.0 && hi / lo >= 10.0 {
            let y = (lo / 1.2..hi * 1.2).log_scale();
            series.draw(area, x, y, "loss (log scale)")
        } else {
            let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
            series.draw(area, x, lo - pad..hi + pad, "loss")
        }
    })
}

/// The three series of a curve, their names and the title.
struct Series<'a> {
    raw: &'a [(f64, f64)],
    mean: &'a [(f64, f64)],
    val: &'a [(f64, f64)],
    title: &'a str,
    train_label: &'a str,
    val_label: &'a str,
}

impl Series<'_> {
    /// Draws the series on axes `x`, `y` (linear or log: any of plotters' f64 coordinates).
    fn draw<Y>(&self, area: &Area, x: std::ops::Range<f64>, y: Y, y_desc: &str) -> Drawn
    where
        Y: plotters::coord::ranged1d::AsRangedCoord<Value = f64>,
        Y::CoordDescType: plotters::coord::ranged1d::ValueFormatter<f64>,
    {
        let train_faint = RGBColor(31, 119, 180).mix(0.25);
        let train = RGBColor(31, 119, 180);
        let valc = RGBColor(214, 39, 40);
        let mut chart = ChartBuilder::on(area)
            .caption(self.title, (FAMILY, 22))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(78)
            .build_cartesian_2d(x, y)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_desc)
            .x_label_formatter(&tick)
            .y_label_formatter(&tick)
            .label_style((FAMILY, 14))
            .axis_desc_style((FAMILY, 16))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        chart.draw_series(LineSeries::new(self.raw.iter().copied(), train_faint))?;
        chart
            .draw_series(LineSeries::new(
                self.mean.iter().copied(),
                train.stroke_width(2),
            ))?
            .label(self.train_label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], train.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(
                self.val.iter().copied(),
                valc.stroke_width(2),
            ))?
            .label(self.val_label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], valc.stroke_width(2)));
        chart.draw_series(self.val.iter().map(|&p| Circle::new(p, 4, valc.filled())))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A falling loss over two epochs, seeded noise on each step.
    fn history() -> History {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut h = History::default();
        for s in 1..=400 {
            let l = 0.5 * (-(s as f64) / 80.0).exp() + 0.004 + rng.random::<f64>() * 0.01;
            h.push_train(s, l as f32);
            if s % 100 == 0 {
                h.push_val(s, l * 1.1);
            }
        }
        h
    }

    /// The picture is written, decodes at its size, and has drawing on it in both series'
    /// colours (not a blank page).
    #[test]
    fn curve_png_is_written_and_not_blank() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model.safetensors");
        let path = curve_path(&out);
        assert_eq!(path, dir.path().join("model.curve.png"));
        write_curve(&path, &history(), "tiny: training loss")?;
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (SIZE.0 as u32, SIZE.1 as u32));
        let count = |f: &dyn Fn(&image::Rgb<u8>) -> bool| img.pixels().filter(|p| f(p)).count();
        let dark = count(&|p| p.0.iter().all(|&c| c < 100));
        let blue = count(&|p| p.0[2] > 150 && p.0[0] < 80);
        let red = count(&|p| p.0[0] > 180 && p.0[1] < 80);
        assert!(dark > 500, "text and axes: {dark} dark pixels");
        assert!(blue > 300, "training series: {blue} blue pixels");
        assert!(red > 50, "validation series: {red} red pixels");
        Ok(())
    }

    /// Empty, flat, negative and single-step histories still draw (no panic, no error).
    #[test]
    fn degenerate_histories_draw() -> Result<()> {
        let mut flat = History::default();
        flat.push_train(1, 0.3);
        let mut neg = History::default();
        for s in 1..=5 {
            neg.push_train(s, -(s as f32));
        }
        neg.push_val(5, f64::NAN);
        let mut gap = History::default();
        gap.push_train(30, 0.1);
        for h in [History::default(), flat, neg, gap] {
            draw_curve(&h, "t", "test")?;
        }
        Ok(())
    }

    /// Cut back to a checkpoint's step and continued, the history is what an uninterrupted
    /// run records, and its moving average too.
    #[test]
    fn truncate_and_continue() {
        let full = history();
        let mut h = full.clone();
        h.truncate(150);
        assert_eq!(h.train.len(), 150);
        assert_eq!(h.val, vec![(100, full.val[0].1)]);
        for (i, l) in full.train.iter().enumerate().skip(150) {
            h.push_train(i + 1, l.unwrap());
        }
        for &(s, l) in &full.val[1..] {
            h.push_val(s, l);
        }
        assert_eq!(h, full);
        assert_eq!(h.ema(), full.ema());
        let mut fresh = History::default();
        fresh.push_train(3, 1.0);
        assert_eq!(fresh.train, vec![None, None, Some(1.0)]);
    }

    /// Axis labels read as numbers, not float noise; the drawn mean is centred (no lag).
    #[test]
    fn ticks_and_the_centred_mean() {
        let t = |v: f64| tick(&v);
        assert_eq!(
            [
                t(0.6000000001),
                t(0.35),
                t(120.0),
                t(0.0),
                t(2.5e-4),
                t(-1.5)
            ],
            ["0.6", "0.35", "120", "0", "2.5e-4", "-1.5"]
        );
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, i as f64)).collect();
        let m = centred_mean(&line, 3);
        assert_eq!(m[5], (5.0, 5.0));
        assert_eq!(m[0], (0.0, 0.5));
        assert_eq!(centred_mean(&line, 1), line);
    }
}
