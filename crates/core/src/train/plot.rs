//! The loss curve of a run as a PNG (train loss per logged step, eval loss where measured).

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;
use serde_json::Value;

use crate::error::{CoreError, Result};

pub const LOSS_CURVE_FILE: &str = "loss_curve.png";

/// Draws `metrics.jsonl` records (objects with `step` and `loss` or `eval_loss`) into `path`.
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
    let (train, eval) = (series("loss"), series("eval_loss"));
    if train.is_empty() {
        return Ok(());
    }
    let max_step = train.iter().chain(&eval).map(|p| p.0).fold(1.0, f64::max);
    let (lo, hi) =
        train.iter().chain(&eval).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
    let margin = ((hi - lo) * 0.05).max(1e-3);
    let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("loss", ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_step, (lo - margin)..(hi + margin))?;
        chart.configure_mesh().x_desc("step").y_desc("nats / token").draw()?;
        chart
            .draw_series(LineSeries::new(train.iter().copied(), &BLUE))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        if !eval.is_empty() {
            chart
                .draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)).point_size(3))?
                .label("eval")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| CoreError::Invalid(format!("{}: cannot draw the loss curve: {e}", path.display())))
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
    }
}
