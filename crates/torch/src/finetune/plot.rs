//! `loss.svg`: training loss, smoothed loss and validation loss against the step.

use anyhow::Result;
use plotters::prelude::*;
use std::path::Path;

pub fn write_loss_svg(path: &Path, metrics: &[serde_json::Value]) -> Result<()> {
    let series = |key: &str| -> Vec<(f64, f64)> {
        metrics
            .iter()
            .filter_map(|m| Some((m.get("step")?.as_f64()?, m.get(key)?.as_f64()?)))
            .filter(|(_, y)| y.is_finite())
            .collect()
    };
    let (loss, avg, val) = (series("loss"), series("avg_loss"), series("val_loss"));
    let all: Vec<f64> = loss.iter().chain(&avg).chain(&val).map(|p| p.1).collect();
    let x_max = loss.iter().map(|p| p.0).fold(1.0, f64::max);
    let y_min = all.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
    let y_max = all.iter().copied().fold(0.0, f64::max).max(1e-3) * 1.05;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("finetune loss", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max, y_min..y_max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (data, color, label) in [
            (&loss, RGBColor(170, 190, 230), "loss"),
            (&avg, BLUE, "avg loss"),
            (&val, RED, "val loss"),
        ] {
            if data.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(data.iter().copied(), color))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    crate::weights::write_atomic(path, svg.as_bytes())
}
