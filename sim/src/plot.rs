//! The SVG timeline of a [`Report`]: processes, free slots, connections and queued connections
//! over time, one colour per series kind, one line style per service.

use plotters::prelude::*;

use crate::plan::Report;

const KINDS: [(&str, RGBColor); 4] = [
    ("processes", RGBColor(31, 119, 180)),
    ("free slots", RGBColor(44, 160, 44)),
    ("connections", RGBColor(255, 127, 14)),
    ("queued", RGBColor(214, 39, 40)),
];

/// Draws the report's time series as an SVG document.
pub fn timeline_svg(report: &Report) -> String {
    let mut svg = String::new();
    // Drawing into a String cannot fail for IO reasons; a plotters error here would be a bug
    // in the ranges computed below, and an empty chart says so better than a panic.
    let _ = draw(report, &mut svg);
    svg
}

fn draw(report: &Report, svg: &mut String) -> Result<(), String> {
    let root = SVGBackend::with_string(svg, (1000, 300 + 200 * report.names.len() as u32))
        .into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let x_end = report
        .samples
        .last()
        .map(|s| s.t_ms as f64 / 1000.0)
        .unwrap_or(1.0)
        .max(1.0);
    let y_end = report
        .samples
        .iter()
        .flat_map(|s| s.values.iter().flat_map(|v| v.iter().copied()))
        .max()
        .unwrap_or(1)
        .max(1);
    let panels = root.split_evenly((report.names.len().max(1), 1));
    for (index, (name, panel)) in report.names.iter().zip(panels.iter()).enumerate() {
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("service {name}"), ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..x_end, 0u32..y_end + 1)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("simulated seconds")
            .draw()
            .map_err(|e| e.to_string())?;
        for (kind, (label, colour)) in KINDS.iter().enumerate() {
            let points = report.samples.iter().map(|s| {
                (
                    s.t_ms as f64 / 1000.0,
                    s.values.get(index).map(|v| v[kind]).unwrap_or(0),
                )
            });
            chart
                .draw_series(LineSeries::new(points, colour))
                .map_err(|e| e.to_string())?
                .label(*label)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
