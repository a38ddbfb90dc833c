//! The chart of `compare`: one panel per figure, a bar per system at its median with a whisker
//! from the minimum to the maximum round, on a log scale where the values differ by more than
//! a factor of 30. A replicated figure's panel has a bar for ours on the file log and one for
//! ours replicated. Drawn to PNG with the bitmap backend; the text uses an embedded DejaVu Sans,
//! so no system font is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::compare::{Better, Figure, fmt, summary};

const COLUMNS: usize = 4;
const PANEL: (u32, u32) = (420, 300);
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn register_font() -> anyhow::Result<()> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .map_err(|_| anyhow!("the embedded font does not load"));
    });
    result
}

/// Draws the figures that have a value into a PNG at `path`.
pub(crate) fn draw(path: &Path, figures: &[Figure], systems: &[String]) -> anyhow::Result<()> {
    register_font()?;
    let shown: Vec<&Figure> = figures.iter().filter(|f| !f.values.is_empty()).collect();
    let rows = shown.len().div_ceil(COLUMNS).max(1);
    let size = (PANEL.0 * COLUMNS as u32, PANEL.1 * rows as u32 + 40);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (title, body) = root.split_vertically(40);
    title
        .titled(
            "majordodo-bench compare: median per system, whiskers min–max of the rounds",
            ("sans-serif", 22),
        )
        .map_err(|e| anyhow!("{e}"))?;
    let panels = body.split_evenly((rows, COLUMNS));
    for (figure, area) in shown.iter().zip(panels.iter()) {
        let columns: Vec<(String, Option<&[f64]>, RGBColor)> = match &figure.versus {
            Some(key) => {
                let file = figures
                    .iter()
                    .find(|g| &g.key == key)
                    .and_then(|g| g.values.get("ours"))
                    .map(Vec::as_slice);
                vec![
                    ("ours, file log".into(), file, COLORS[0]),
                    (
                        "ours, replicated".into(),
                        figure.values.get("ours").map(Vec::as_slice),
                        COLORS[3],
                    ),
                ]
            }
            None => systems
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        s.clone(),
                        figure.values.get(s).map(Vec::as_slice),
                        COLORS[i % COLORS.len()],
                    )
                })
                .collect(),
        };
        panel(area, figure, &columns).with_context(|| format!("draw {}", figure.key))?;
    }
    root.present()
        .map_err(|e| anyhow!("write {}: {e}", path.display()))?;
    Ok(())
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    f: &Figure,
    columns: &[(String, Option<&[f64]>, RGBColor)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("{e:?}");
    let bars: Vec<(usize, (f64, f64, f64))> = columns
        .iter()
        .enumerate()
        .filter_map(|(i, (_, v, _))| v.and_then(summary).map(|m| (i, m)))
        .collect();
    let lo = bars
        .iter()
        .map(|(_, (_, lo, _))| *lo)
        .fold(f64::INFINITY, f64::min);
    let hi = bars.iter().map(|(_, (_, _, hi))| *hi).fold(0.0, f64::max);
    let log = lo > 0.0 && hi / lo > 30.0;
    let y = |v: f64| if log { v.max(1e-9).log10() } else { v };
    let (y0, y1) = if log {
        (y(lo).floor(), y(hi).ceil().max(y(lo).floor() + 1.0))
    } else {
        (0.0, if hi > 0.0 { hi * 1.15 } else { 1.0 })
    };
    let better = match f.better {
        Better::Higher => "higher is better",
        Better::Lower => "lower is better",
    };
    let caption = format!("{} · {}", f.workload, f.label);
    let caption: String = if caption.chars().count() > 52 {
        caption.chars().take(51).chain(['…']).collect()
    } else {
        caption
    };
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(8)
        .x_label_area_size(22)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5f64..columns.len() as f64 - 0.5, y0..y1)
        .map_err(err)?;
    let names: Vec<String> = columns.iter().map(|(name, _, _)| name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(columns.len())
        .y_labels(if log { (y1 - y0) as usize + 1 } else { 10 })
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(format!(
            "{}{} ({better})",
            f.unit,
            if log { ", log" } else { "" }
        ))
        .y_label_formatter(&|v| if log { fmt(10f64.powf(*v)) } else { fmt(*v) })
        .label_style(("sans-serif", 11))
        .axis_desc_style(("sans-serif", 11))
        .draw()
        .map_err(err)?;
    for (i, (median, min, max)) in &bars {
        let x = *i as f64;
        let color = columns[*i].2;
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x - 0.3, y0), (x + 0.3, y(*median))],
                color.mix(0.8).filled(),
            )))
            .map_err(err)?;
        let whisker = BLACK.stroke_width(2);
        chart
            .draw_series([
                PathElement::new(vec![(x, y(*min)), (x, y(*max))], whisker),
                PathElement::new(vec![(x - 0.1, y(*min)), (x + 0.1, y(*min))], whisker),
                PathElement::new(vec![(x - 0.1, y(*max)), (x + 0.1, y(*max))], whisker),
            ])
            .map_err(err)?;
        chart
            .draw_series(std::iter::once(Text::new(
                fmt(*median),
                (x + 0.12, y(*median)),
                ("sans-serif", 11),
            )))
            .map_err(err)?;
    }
    Ok(())
}
