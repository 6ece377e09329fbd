//! The loss curve of a run as a PNG (train loss per logged step, eval loss where measured), with the mean reward
//! below it for the online trainers, which log one.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;

use crate::error::{CoreError, Result};

pub const LOSS_CURVE_FILE: &str = "loss_curve.png";

/// One line of a panel: its legend, colour, and (step, value) points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Draws `metrics.jsonl` records (objects with `step` and `loss` or `eval_loss`, and `reward` for an online
/// trainer) into `path`.
pub fn write_loss_curve(records: &[Value], path: &Path) -> Result<()> {
    // The font ships inside the binary, so drawing needs no system font library.
    static FONT: Once = Once::new();
    FONT.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
    let series = |key: &str| -> Vec<(f64, f64)> {
        records
            .iter()
            .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
            .filter(|p| p.1.is_finite())
            .collect()
    };
    let (train, eval, reward) = (series("loss"), series("eval_loss"), series("reward"));
    if train.is_empty() {
        return Ok(());
    }
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let height = if reward.is_empty() { 540 } else { 900 };
        let root = BitMapBackend::new(path, (900, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let losses = vec![("train", BLUE, train.clone()), ("eval", RED, eval.clone())];
        if reward.is_empty() {
            panel(&root, "loss", "nats / token", &losses)?;
        } else {
            let (top, bottom) = root.split_vertically(540);
            panel(&top, "loss", "loss", &losses)?;
            panel(&bottom, "reward", "mean reward", &[("reward", GREEN, reward.clone())])?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| CoreError::Invalid(format!("{}: cannot draw the loss curve: {e}", path.display())))
}

/// One chart over `area`: every non-empty line against the step (the first as a line, the others with points).
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    caption: &str,
    y_desc: &str,
    lines: &[Line<'_>],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let points = lines.iter().flat_map(|(_, _, points)| points.iter());
    let max_step = points.clone().map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) = points.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let margin = ((hi - lo) * 0.05).max(1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_step, (lo - margin)..(hi + margin))?;
    chart.configure_mesh().x_desc("step").y_desc(y_desc).draw()?;
    for (i, (label, color, points)) in lines.iter().enumerate().filter(|(_, line)| !line.2.is_empty()) {
        let color = *color;
        let series = LineSeries::new(points.iter().copied(), color.stroke_width(if i == 0 { 1 } else { 2 }));
        chart
            .draw_series(if i == 0 { series } else { series.point_size(3) })?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOSS_CURVE_FILE);
        let records: Vec<Value> = (1..=20)
            .map(|s| serde_json::json!({"step": s, "loss": 6.0 / (s as f64).sqrt()}))
            .chain([serde_json::json!({"step": 20, "eval_loss": 1.5})])
            .collect();
        write_loss_curve(&records, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        // With a reward, a second panel below the loss makes the image taller.
        let rewarded: Vec<Value> =
            (1..=20).map(|s| serde_json::json!({"step": s, "loss": 0.1, "reward": s as f64 / 20.0})).collect();
        write_loss_curve(&rewarded, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let height = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
        assert_eq!(height, 900, "the PNG header's height");
    }
}
