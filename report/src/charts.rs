//! The report's charts, each an SVG string drawn by plotters.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::ReportError;

/// Width and height of a chart, in pixels.
const SIZE: (u32, u32) = (560, 340);

/// One line of a line chart: its name, colour and `(x, y)` points (non-finite ones are
/// left out).
pub(crate) struct Line {
    pub name: String,
    pub color: RGBColor,
    pub points: Vec<(f64, f64)>,
}

/// Colours for lines and points, in turn.
pub(crate) const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn failed(chart: &str) -> impl Fn(String) -> ReportError + '_ {
    move |reason| ReportError::Chart {
        chart: chart.to_string(),
        reason,
    }
}

/// The range of `values`, widened a little so that points do not sit on the frame (0..1
/// when there are none).
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// Draws with `draw` into a new SVG and returns it.
fn svg(
    chart: &str,
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), String>,
) -> Result<String, ReportError> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| failed(chart)(e.to_string()))?;
        draw(&root).map_err(failed(chart))?;
        root.present().map_err(|e| failed(chart)(e.to_string()))?;
    }
    Ok(out)
}

/// Every chart's frame: its title and room for the axes' labels.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56);
    builder
}

/// A line chart of `lines` against the epoch.
pub(crate) fn lines(
    chart: &str,
    title: &str,
    y: &str,
    lines: &[Line],
) -> Result<String, ReportError> {
    let finite: Vec<&(f64, f64)> = lines
        .iter()
        .flat_map(|l| &l.points)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    let (x0, x1) = range(finite.iter().map(|p| p.0));
    let (y0, y1) = range(finite.iter().map(|p| p.1));
    svg(chart, |root| {
        let mut c = frame(root, title)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|e| e.to_string())?;
        // Epochs are whole numbers: at most one label per epoch.
        let epochs = (x1 - x0).round().max(1.0) as usize + 1;
        c.configure_mesh()
            .x_desc("epoch")
            .y_desc(y)
            .x_labels(epochs.min(10))
            .x_label_formatter(&|x| format!("{}", x.round()))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| e.to_string())?;
        for line in lines {
            let points: Vec<(f64, f64)> = line
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            let color = line.color;
            c.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(line.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
            c.draw_series(points.iter().map(|&p| Circle::new(p, 2, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        if lines.len() > 1 {
            c.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// A confusion matrix: rows are true classes, columns predicted ones, each cell shaded by
/// its share of its row and labelled with its count.
pub(crate) fn confusion(
    chart: &str,
    title: &str,
    classes: &[String],
    matrix: &[Vec<usize>],
) -> Result<String, ReportError> {
    let n = matrix.len().max(1);
    svg(chart, |root| {
        let mut c = frame(root, title)
            // `a..b` segments every value of `a..=b`: `0..n - 1` is the n classes.
            .build_cartesian_2d((0..n - 1).into_segmented(), (0..n - 1).into_segmented())
            .map_err(|e| e.to_string())?;
        let name = |i: usize| classes.get(i).cloned().unwrap_or_else(|| i.to_string());
        // Row 0 at the top, as a matrix is read.
        let flip = |y: usize| n - 1 - y.min(n - 1);
        c.configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .x_labels(n.min(20))
            .y_labels(n.min(20))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => name(*i),
                _ => String::new(),
            })
            .y_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => name(flip(*i)),
                _ => String::new(),
            })
            .draw()
            .map_err(|e| e.to_string())?;
        for (row, counts) in matrix.iter().enumerate() {
            let total: usize = counts.iter().sum();
            let y = flip(row);
            for (col, &count) in counts.iter().enumerate().take(n) {
                let share = if total > 0 {
                    count as f64 / total as f64
                } else {
                    0.0
                };
                c.draw_series(std::iter::once(Rectangle::new(
                    [
                        (SegmentValue::Exact(col), SegmentValue::Exact(y)),
                        (SegmentValue::Exact(col + 1), SegmentValue::Exact(y + 1)),
                    ],
                    shade(share).filled(),
                )))
                .map_err(|e| e.to_string())?;
                if n <= 20 {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    let style = ("sans-serif", 11)
                        .into_font()
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    c.plotting_area()
                        .draw(&Text::new(
                            count.to_string(),
                            (SegmentValue::CenterOf(col), SegmentValue::CenterOf(y)),
                            style,
                        ))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    })
}

/// The cells' colour from white (`0`) to dark blue (`1`); labels on cells above `0.5`
/// are white.
fn shade(share: f64) -> RGBColor {
    let share = share.clamp(0.0, 1.0);
    RGBColor(
        (255.0 - 224.0 * share) as u8,
        (255.0 - 136.0 * share) as u8,
        (255.0 - 75.0 * share) as u8,
    )
}

/// A sweep's heat map: the values of one swept key across, another's down (`ys` may be a
/// single empty label for a sweep of one key), each cell a score, or nothing where no
/// configuration has those values. Cells are shaded from the worst score to the best
/// (`higher`: a higher score is better) and labelled with `label(score)`; `best` (x, y)
/// gets a frame.
#[allow(clippy::too_many_arguments)] // a chart's title, axes and cells
pub(crate) fn heat_map(
    chart: &str,
    title: &str,
    (x_desc, xs): (&str, &[String]),
    (y_desc, ys): (&str, &[String]),
    cells: &[Vec<Option<f64>>],
    higher: bool,
    best: Option<(usize, usize)>,
    label: &dyn Fn(f64) -> String,
) -> Result<String, ReportError> {
    let (nx, ny) = (xs.len().max(1), ys.len().max(1));
    let (lo, hi) = cells
        .iter()
        .flatten()
        .flatten()
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let goodness = |v: f64| -> f64 {
        if hi <= lo {
            return 1.0;
        }
        match higher {
            true => (v - lo) / (hi - lo),
            false => (hi - v) / (hi - lo),
        }
    };
    svg(chart, |root| {
        // Plain number axes, a cell from x to x + 1: plotters' segmented axes put every
        // cell of a one-value axis on one pixel.
        let mut c = frame(root, title)
            .build_cartesian_2d(0.0..nx as f64, 0.0..ny as f64)
            .map_err(|e| e.to_string())?;
        // The first value of `ys` at the top, as a table is read.
        let row = |y: usize| (ny - 1 - y.min(ny - 1)) as f64;
        c.configure_mesh()
            .disable_mesh()
            .x_labels(0)
            .y_labels(0)
            .x_desc(x_desc)
            .y_desc(y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        // Each value under or beside its column or row.
        let tick = |h: HPos, v: VPos| {
            ("sans-serif", 12)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(h, v))
        };
        for (i, name) in xs.iter().enumerate().take(24) {
            let (px, py) = c.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                name.clone(),
                (px, py + 6),
                tick(HPos::Center, VPos::Top),
            ))
            .map_err(|e| e.to_string())?;
        }
        for (j, name) in ys.iter().enumerate().take(24) {
            let (px, py) = c.backend_coord(&(0.0, row(j) + 0.5));
            root.draw(&Text::new(
                name.clone(),
                (px - 6, py),
                tick(HPos::Right, VPos::Center),
            ))
            .map_err(|e| e.to_string())?;
        }
        let cell = |x: usize, y: usize| [(x as f64, row(y)), (x as f64 + 1.0, row(y) + 1.0)];
        for (y, scores) in cells.iter().enumerate() {
            for (x, score) in scores.iter().enumerate().take(nx) {
                let Some(score) = score.filter(|s| s.is_finite()) else {
                    c.draw_series(std::iter::once(Rectangle::new(
                        cell(x, y),
                        RGBColor(240, 240, 240).filled(),
                    )))
                    .map_err(|e| e.to_string())?;
                    continue;
                };
                // The worst score stays tinted: a white cell would read as empty.
                let share = 0.15 + 0.85 * goodness(score);
                c.draw_series(std::iter::once(Rectangle::new(
                    cell(x, y),
                    shade(share).filled(),
                )))
                .map_err(|e| e.to_string())?;
                if nx <= 12 {
                    let ink = if share > 0.5 { WHITE } else { BLACK };
                    let style = ("sans-serif", 12)
                        .into_font()
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center));
                    c.plotting_area()
                        .draw(&Text::new(
                            label(score),
                            (x as f64 + 0.5, row(y) + 0.5),
                            style,
                        ))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        if let Some((x, y)) = best {
            c.draw_series(std::iter::once(Rectangle::new(
                cell(x, y),
                RGBColor(214, 39, 40).stroke_width(3),
            )))
            .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// Accuracy against parameters (log scale), one labelled point per model.
pub(crate) fn size_accuracy(
    chart: &str,
    title: &str,
    points: &[(String, usize, f64)],
) -> Result<String, ReportError> {
    let (lo, hi) = points.iter().fold((usize::MAX, 0), |(lo, hi), (_, p, _)| {
        (lo.min(*p), hi.max(*p))
    });
    let (lo, hi) = match lo <= hi {
        true => ((lo.max(1) as f64) / 2.0, (hi.max(1) as f64) * 2.0),
        false => (1.0, 10.0),
    };
    let (y0, y1) = range(points.iter().map(|p| p.2 * 100.0));
    svg(chart, |root| {
        let mut c = frame(root, title)
            .build_cartesian_2d((lo..hi).log_scale(), y0..y1)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .x_desc("parameters")
            .y_desc("accuracy %")
            .x_labels(6)
            .x_label_formatter(&|p| short_count(*p))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, params, accuracy)) in points.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let at = (*params as f64, accuracy * 100.0);
            let point = EmptyElement::at(at)
                + Circle::new((0, 0), 5, color.filled())
                + Text::new(
                    name.clone(),
                    (8, -14),
                    ("sans-serif", 13).into_font().color(&BLACK),
                );
            c.draw_series(std::iter::once(point))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// `12k`, `1.3M`: a parameter count on an axis.
fn short_count(n: f64) -> String {
    match n {
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e3 => format!("{:.0}k", n / 1e3),
        n => format!("{n:.0}"),
    }
}
