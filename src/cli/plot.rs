//! Plots a person would rather look at than read (plotters): the training curves, `train
//! --auto`'s search, ROC
//! curves per label, and per-label F1 of two adapters side by side. The file's extension
//! picks the format: `.png` or `.svg`. Text is drawn with a TrueType font found on the
//! system (`EDGELORA_FONT`, else DejaVu Sans, Liberation Sans, Arial, Roboto in their usual
//! places). A plot is drawn into a temporary file beside the target and renamed into place.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

/// Where a sans-serif TrueType font is looked for when `EDGELORA_FONT` is not set.
const FONT_PATHS: [&str; 8] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
    "/system/fonts/Roboto-Regular.ttf",
];

/// Refuses a plot path that is neither `.png` nor `.svg`, and plots without a font, before
/// any work is done.
pub fn check_path(path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
    if ext != "png" && ext != "svg" {
        bail!("plot {}: the file must end in .png or .svg", path.display());
    }
    ensure_font()
}

/// Registers the font once per process as plotters' "sans-serif".
fn ensure_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let r = FONT.get_or_init(|| {
        let candidates: Vec<PathBuf> = match std::env::var_os("EDGELORA_FONT") {
            Some(p) => vec![PathBuf::from(p)],
            None => FONT_PATHS.iter().map(PathBuf::from).collect(),
        };
        for p in &candidates {
            let Ok(bytes) = std::fs::read(p) else { continue };
            // plotters keeps a 'static reference: the font lives as long as the process.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(p.clone());
            }
        }
        Err(format!(
            "plots need a TrueType font for their text and none was found (tried {}); set EDGELORA_FONT=FILE.ttf (Debian: apt-get install fonts-dejavu-core)",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    });
    r.as_ref().map(|_| ()).map_err(|e| anyhow!("{e}"))
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e:?}")
}

/// Draws with `draw` on a backend of the format `path`'s extension names, into a temporary
/// file beside `path`, then renames it into place.
macro_rules! render {
    ($path:expr, $size:expr, $draw:ident ( $($arg:expr),* )) => {{
        let path: &Path = $path;
        ensure_font()?;
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let stem = path.file_name().and_then(|n| n.to_str()).unwrap_or("plot");
        let tmp = dir.join(format!(".{stem}.tmp-{}.{ext}", std::process::id()));
        let drawn: Result<()> = (|| {
            match ext.as_str() {
                "png" => {
                    let root = BitMapBackend::new(&tmp, $size).into_drawing_area();
                    $draw(&root, $($arg),*)?;
                    root.present().map_err(plot_err)?;
                }
                "svg" => {
                    let root = SVGBackend::new(&tmp, $size).into_drawing_area();
                    $draw(&root, $($arg),*)?;
                    root.present().map_err(plot_err)?;
                }
                _ => bail!("plot {}: the file must end in .png or .svg", path.display()),
            }
            std::fs::rename(&tmp, path).with_context(|| format!("moving the plot into place at {}", path.display()))
        })();
        if drawn.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        drawn.with_context(|| format!("writing the plot {}", path.display()))
    }};
}

/// One training step's figures for [`training_curves`].
pub struct StepPoint {
    pub step: f64,
    pub loss: f64,
    pub lr: f64,
}

/// Training loss per step and validation loss where measured (top), learning rate (bottom).
pub fn training_curves(path: &Path, steps: &[StepPoint], eval: &[(f64, f64)], title: &str) -> Result<()> {
    if steps.is_empty() {
        bail!("plot {}: no training steps to draw", path.display());
    }
    render!(path, (900, 640), draw_training(steps, eval, title))
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

fn draw_training<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, steps: &[StepPoint], eval: &[(f64, f64)], title: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(410);
    let x_max = steps.iter().map(|s| s.step).chain(eval.iter().map(|e| e.0)).fold(1.0, f64::max);
    let (lo, hi) = range(steps.iter().map(|s| s.loss).chain(eval.iter().map(|e| e.1)));
    let mut c = ChartBuilder::on(&top).margin(12).x_label_area_size(36).y_label_area_size(64).build_cartesian_2d(0f64..x_max, lo..hi).map_err(plot_err)?;
    c.configure_mesh().x_desc("step").y_desc("loss").draw().map_err(plot_err)?;
    c.draw_series(LineSeries::new(steps.iter().map(|s| (s.step, s.loss)), BLUE.stroke_width(1))).map_err(plot_err)?.label("train loss (per step)").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
    if !eval.is_empty() {
        c.draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2))).map_err(plot_err)?;
        c.draw_series(eval.iter().map(|&p| Circle::new(p, 4, RED.filled()))).map_err(plot_err)?.label("validation loss").legend(|(x, y)| Circle::new((x + 9, y), 4, RED.filled()));
    }
    c.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).position(SeriesLabelPosition::UpperRight).draw().map_err(plot_err)?;
    let (lr_lo, lr_hi) = range(steps.iter().map(|s| s.lr));
    let mut l = ChartBuilder::on(&bottom).margin(12).x_label_area_size(36).y_label_area_size(64).build_cartesian_2d(0f64..x_max, lr_lo.min(0.0)..lr_hi).map_err(plot_err)?;
    l.configure_mesh().x_desc("step").y_desc("learning rate").y_label_formatter(&|v| format!("{v:.0e}")).draw().map_err(plot_err)?;
    l.draw_series(LineSeries::new(steps.iter().map(|s| (s.step, s.lr)), GREEN.stroke_width(2))).map_err(plot_err)?;
    Ok(())
}

/// One recipe's validation scores during `train --auto`'s search: (epoch, loss, exact share).
pub struct SearchCurve {
    pub label: String,
    pub points: Vec<(f64, f64, f64)>,
    pub chosen: bool,
}

/// `train --auto`'s search: validation loss (top) and exact-answer share (bottom) per
/// epoch (of the training split), a line per recipe, the chosen one drawn thick;
/// `final_epochs` marks the length chosen for the final run.
pub fn search_curves(path: &Path, curves: &[SearchCurve], final_epochs: f64, title: &str) -> Result<()> {
    if curves.iter().all(|c| c.points.is_empty()) {
        bail!("plot {}: the search scored nothing to draw", path.display());
    }
    render!(path, (900, 640), draw_search(curves, final_epochs, title))
}

fn draw_search<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, curves: &[SearchCurve], final_epochs: f64, title: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(380);
    let x_max = curves.iter().flat_map(|c| c.points.iter().map(|p| p.0)).chain([final_epochs]).fold(0.1, f64::max) * 1.05;
    let (lo, hi) = range(curves.iter().flat_map(|c| c.points.iter().map(|p| p.1)));
    let style = |i: usize, c: &SearchCurve| {
        let color = Palette99::pick(i).to_rgba();
        color.stroke_width(if c.chosen { 4 } else { 1 })
    };
    let label = |c: &SearchCurve| if c.chosen { format!("{} (chosen)", c.label) } else { c.label.clone() };
    let mut t = ChartBuilder::on(&top).margin(12).x_label_area_size(36).y_label_area_size(64).build_cartesian_2d(0f64..x_max, lo..hi).map_err(plot_err)?;
    t.configure_mesh().x_desc("epoch").y_desc("validation loss").draw().map_err(plot_err)?;
    for (i, c) in curves.iter().enumerate() {
        let st = style(i, c);
        t.draw_series(LineSeries::new(c.points.iter().map(|p| (p.0, p.1)), st)).map_err(plot_err)?.label(label(c)).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], st));
        t.draw_series(c.points.iter().map(|p| Circle::new((p.0, p.1), 3, st.filled()))).map_err(plot_err)?;
    }
    t.draw_series(LineSeries::new([(final_epochs, lo), (final_epochs, hi)], BLACK.stroke_width(2))).map_err(plot_err)?.label(format!("chosen length: {final_epochs:.2} epochs")).legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.stroke_width(2)));
    t.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).position(SeriesLabelPosition::UpperRight).draw().map_err(plot_err)?;
    let mut b = ChartBuilder::on(&bottom).margin(12).x_label_area_size(36).y_label_area_size(64).build_cartesian_2d(0f64..x_max, 0f64..1.0).map_err(plot_err)?;
    b.configure_mesh().x_desc("epoch").y_desc("exact answers (validation)").y_label_formatter(&|v| format!("{:.0}%", v * 100.0)).draw().map_err(plot_err)?;
    for (i, c) in curves.iter().enumerate() {
        let st = style(i, c);
        b.draw_series(LineSeries::new(c.points.iter().map(|p| (p.0, p.2)), st)).map_err(plot_err)?;
    }
    Ok(())
}

/// One ROC curve: its label, the (FPR, TPR) points and the area.
pub struct RocCurve {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub auc: f64,
}

/// ROC curves (one per label, one-vs-rest) against the diagonal of a random guess.
pub fn roc_curves(path: &Path, curves: &[RocCurve], title: &str) -> Result<()> {
    if curves.is_empty() {
        bail!("plot {}: no ROC curve to draw (every label needs records with and without it)", path.display());
    }
    render!(path, (640, 640), draw_roc(curves, title))
}

fn draw_roc<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, curves: &[RocCurve], title: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(plot_err)?;
    let mut c = ChartBuilder::on(root).caption(title, ("sans-serif", 20)).margin(14).x_label_area_size(40).y_label_area_size(50).build_cartesian_2d(0f64..1f64, 0f64..1f64).map_err(plot_err)?;
    c.configure_mesh().x_desc("false positive rate").y_desc("true positive rate").draw().map_err(plot_err)?;
    c.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.4))).map_err(plot_err)?.label("random (AUC 0.5)").legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.4)));
    for (i, curve) in curves.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        c.draw_series(LineSeries::new(curve.points.iter().copied(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("{} (AUC {:.3})", curve.label, curve.auc))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    c.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).position(SeriesLabelPosition::LowerRight).draw().map_err(plot_err)?;
    Ok(())
}

/// Per-label F1 of two arms as grouped bars.
pub fn f1_bars(path: &Path, labels: &[String], arms: [(&str, &[f64]); 2], title: &str) -> Result<()> {
    if labels.is_empty() {
        bail!("plot {}: no label to draw", path.display());
    }
    render!(path, (760, 480), draw_f1(labels, arms, title))
}

fn draw_f1<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, labels: &[String], arms: [(&str, &[f64]); 2], title: &str) -> Result<()>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(plot_err)?;
    let n = labels.len();
    let mut c = ChartBuilder::on(root).caption(title, ("sans-serif", 20)).margin(14).x_label_area_size(40).y_label_area_size(50).build_cartesian_2d(0f64..n as f64, 0f64..1.05f64).map_err(plot_err)?;
    let names = labels.to_vec();
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 && i < names.len() { names[i].clone() } else { String::new() }
        })
        .y_desc("F1")
        .draw()
        .map_err(plot_err)?;
    for (k, (name, f1)) in arms.iter().enumerate() {
        let color = if k == 0 { BLUE.mix(0.7) } else { RED.mix(0.7) };
        let bars = f1.iter().enumerate().map(move |(i, &v)| {
            let x0 = i as f64 + 0.1 + 0.4 * k as f64;
            Rectangle::new([(x0, 0.0), (x0 + 0.38, v)], color.filled())
        });
        c.draw_series(bars).map_err(plot_err)?.label(format!("{name}")).legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.filled()));
    }
    c.configure_series_labels().background_style(WHITE.mix(0.85)).border_style(BLACK).position(SeriesLabelPosition::UpperRight).draw().map_err(plot_err)?;
    Ok(())
}
