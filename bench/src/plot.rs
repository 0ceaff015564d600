//! SVG chart of a side-by-side run: one horizontal bar per metric with its ratio A/B,
//! the per-repetition range as a whisker, a line at 1.0 and the goal as a marker.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::compare::{Better, CompareReport};

pub fn write_svg(path: &Path, rep: &CompareReport) -> Result<()> {
    let rows: Vec<_> = rep.rows.iter().filter(|r| r.ratio.is_some()).collect();
    if rows.is_empty() {
        return Err(anyhow!("nothing to plot: no metric has a ratio"));
    }
    let n = rows.len();
    let xmax = rows
        .iter()
        .flat_map(|r| [r.ratio, r.ratio_max, r.goal.map(|g| g.ratio)])
        .flatten()
        .fold(1.0f64, f64::max)
        * 1.15;
    let height = 140 + 26 * n as u32;
    let root = SVGBackend::new(path, (960, height)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(e)?;
    let title = format!(
        "{} / {} (A/B; msgs/s: higher is better, latency/memory/CPU: lower is better)",
        rep.servers[0].name, rep.servers[1].name
    );
    let labels: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {}", r.scenario, r.metric))
        .collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(230)
        .build_cartesian_2d(0f64..xmax, 0f64..n as f64)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_desc("ratio A/B")
        .draw()
        .map_err(e)?;
    // Bars are drawn top-down in table order: row i sits at y = n - i - 1.
    for (i, r) in rows.iter().enumerate() {
        let y = (n - i - 1) as f64;
        let ratio = r.ratio.unwrap_or(0.0);
        let colour = match r.met {
            Some(true) => RGBColor(60, 160, 80),
            Some(false) => RGBColor(200, 70, 60),
            None => match r.better {
                Better::Higher => RGBColor(90, 130, 200),
                Better::Lower => RGBColor(150, 150, 170),
            },
        };
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y + 0.2), (ratio, y + 0.8)],
                colour.filled(),
            )))
            .map_err(e)?;
        if let (Some(lo), Some(hi)) = (r.ratio_min, r.ratio_max) {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(lo, y + 0.5), (hi, y + 0.5)],
                    BLACK.stroke_width(1),
                )))
                .map_err(e)?;
        }
        if let Some(g) = r.goal {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(g.ratio, y + 0.05), (g.ratio, y + 0.95)],
                    RGBColor(230, 140, 0).stroke_width(3),
                )))
                .map_err(e)?;
        }
        // Labels go left of the plotting area, so they are drawn on the root area at
        // the pixel position of the bar.
        let (px, py) = chart.backend_coord(&(0.0, y + 0.5));
        let style = ("sans-serif", 13)
            .into_font()
            .color(&BLACK)
            .pos(Pos::new(HPos::Right, VPos::Center));
        root.draw(&Text::new(
            format!("{}  {ratio:.2}", labels[i]),
            (px - 6, py),
            style,
        ))
        .map_err(e)?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(1.0, 0.0), (1.0, n as f64)],
            BLACK.stroke_width(2),
        )))
        .map_err(e)?;
    root.draw(&Text::new(
        "bar: median ratio A/B (green: goal met, red: goal missed); whisker: per-rep range; \
         orange mark: goal; black line: 1.0",
        (12, height as i32 - 14),
        ("sans-serif", 12).into_font().color(&BLACK),
    ))
    .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
