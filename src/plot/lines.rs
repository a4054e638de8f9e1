//! Curves: generic line charts (loss curves, LR schedules), FROC and precision-recall curves.

use super::axis::{Axis, Frame, Mark, draw_frame, draw_title_and_legend_row, font, series_color};
use super::output::{Figure, write_figure};
use super::{PlotError, PlotResult, draw_error, empty, invalid};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One named curve: `y[i]` at `x[i]`; NaN points leave a gap in the line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Legend text (may be empty).
    pub name: String,
    /// X values.
    pub x: Vec<f64>,
    /// Y values, as many as `x`.
    pub y: Vec<f64>,
}

impl Series {
    /// A named series from its x and y values.
    pub fn new(name: impl Into<String>, x: Vec<f64>, y: Vec<f64>) -> Self {
        Self {
            name: name.into(),
            x,
            y,
        }
    }
}

/// Where the legend box goes inside the chart (`none` hides it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegendPosition {
    /// Top left corner.
    UpperLeft,
    /// Top right corner.
    #[default]
    UpperRight,
    /// Bottom left corner.
    LowerLeft,
    /// Bottom right corner.
    LowerRight,
    /// A row of entries between the title and the chart (never covers data).
    Top,
    /// No legend.
    None,
}

impl LegendPosition {
    /// The in-chart position, or None for `top` (drawn separately) and `none`.
    pub(crate) fn to_plotters(self) -> Option<SeriesLabelPosition> {
        match self {
            Self::UpperLeft => Some(SeriesLabelPosition::UpperLeft),
            Self::UpperRight => Some(SeriesLabelPosition::UpperRight),
            Self::LowerLeft => Some(SeriesLabelPosition::LowerLeft),
            Self::LowerRight => Some(SeriesLabelPosition::LowerRight),
            Self::Top | Self::None => None,
        }
    }
}

/// Options of [`plot_lines`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LineOptions {
    /// Figure title (empty: none).
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Logarithmic x axis (points with x ≤ 0 are skipped).
    pub log_x: bool,
    /// Logarithmic y axis (points with y ≤ 0 are skipped).
    pub log_y: bool,
    /// Fixed x range (min, max); default: the data range.
    pub x_range: Option<(f64, f64)>,
    /// Fixed y range (min, max); default: the data range.
    pub y_range: Option<(f64, f64)>,
    /// Draw a dot at every point.
    pub markers: bool,
    /// Line width in pixels.
    pub line_width: u32,
    /// Legend placement.
    pub legend: LegendPosition,
    /// Figure width in pixels.
    pub width: u32,
    /// Figure height in pixels.
    pub height: u32,
}

impl Default for LineOptions {
    fn default() -> Self {
        Self {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            log_x: false,
            log_y: false,
            x_range: None,
            y_range: None,
            markers: false,
            line_width: 2,
            legend: LegendPosition::UpperRight,
            width: 800,
            height: 500,
        }
    }
}

/// Options of [`plot_froc`]: FPPI on a log axis with the paper's 1/8 … 8 ticks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrocOptions {
    /// Figure title (empty: none).
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// FPPI values labelled on the x axis and marked on every curve.
    pub fppi_ticks: Vec<f64>,
    /// X (FPPI) range; must be positive.
    pub x_range: (f64, f64),
    /// Y (sensitivity) range.
    pub y_range: (f64, f64),
    /// Mark each curve at the `fppi_ticks` (linear interpolation between curve points).
    pub markers: bool,
    /// Append the mean marked sensitivity to each legend entry, e.g. "MAE (0.812)".
    pub mean_in_legend: bool,
    /// Line width in pixels.
    pub line_width: u32,
    /// Legend placement.
    pub legend: LegendPosition,
    /// Figure width in pixels.
    pub width: u32,
    /// Figure height in pixels.
    pub height: u32,
}

impl Default for FrocOptions {
    fn default() -> Self {
        Self {
            title: "FROC".into(),
            x_label: "False positives per image".into(),
            y_label: "Sensitivity".into(),
            fppi_ticks: vec![0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
            x_range: (0.1, 10.0),
            y_range: (0.0, 1.0),
            markers: true,
            mean_in_legend: false,
            line_width: 2,
            legend: LegendPosition::LowerRight,
            width: 760,
            height: 540,
        }
    }
}

/// Options of [`plot_pr`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrOptions {
    /// Figure title (empty: none).
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// X (recall) range.
    pub x_range: (f64, f64),
    /// Y (precision) range.
    pub y_range: (f64, f64),
    /// Draw a dot at every point.
    pub markers: bool,
    /// Line width in pixels.
    pub line_width: u32,
    /// Legend placement.
    pub legend: LegendPosition,
    /// Figure width in pixels.
    pub width: u32,
    /// Figure height in pixels.
    pub height: u32,
}

impl Default for PrOptions {
    fn default() -> Self {
        Self {
            title: "Precision-recall".into(),
            x_label: "Recall".into(),
            y_label: "Precision".into(),
            x_range: (0.0, 1.0),
            y_range: (0.0, 1.0),
            markers: false,
            line_width: 2,
            legend: LegendPosition::LowerLeft,
            width: 620,
            height: 560,
        }
    }
}

/// Draw curves (loss curves, learning-rate schedules, ...) into a `.png` or `.svg` file.
pub fn plot_lines(
    path: impl AsRef<Path>,
    series: &[Series],
    options: &LineOptions,
) -> PlotResult<()> {
    let figure = line_figure(series, options)?;
    write_figure(path.as_ref(), &figure)
}

/// Draw FROC curves (x: false positives per image, y: sensitivity) for several methods.
pub fn plot_froc(
    path: impl AsRef<Path>,
    curves: &[Series],
    options: &FrocOptions,
) -> PlotResult<()> {
    let figure = froc_figure(curves, options)?;
    write_figure(path.as_ref(), &figure)
}

/// Draw precision-recall curves (x: recall, y: precision) for several methods.
pub fn plot_pr(path: impl AsRef<Path>, curves: &[Series], options: &PrOptions) -> PlotResult<()> {
    let figure = pr_figure(curves, options)?;
    write_figure(path.as_ref(), &figure)
}

/// A curve ready to draw, in plot coordinates.
pub(crate) struct Curve {
    name: String,
    color: RGBColor,
    segments: Vec<Vec<(f64, f64)>>,
    markers: Vec<(f64, f64)>,
}

pub(crate) struct LineFigure {
    size: (u32, u32),
    title: String,
    x_label: String,
    y_label: String,
    x: Axis,
    y: Axis,
    curves: Vec<Curve>,
    legend: LegendPosition,
    line_width: u32,
    marker_radius: i32,
}

fn check_size(context: &str, width: u32, height: u32) -> PlotResult<(u32, u32)> {
    if !(200..=8000).contains(&width) || !(150..=8000).contains(&height) {
        return Err(invalid(
            &format!("{context}.width/height"),
            format!("{width}x{height} is outside 200x150 ..= 8000x8000 pixels"),
        ));
    }
    Ok((width, height))
}

/// Validate the series list: non-empty, each with points and matching x/y lengths.
fn check_series(context: &str, series: &[Series]) -> PlotResult<()> {
    if series.is_empty() {
        return Err(empty(format!("{context}: series list")));
    }
    for s in series {
        if s.x.len() != s.y.len() {
            return Err(PlotError::LengthMismatch {
                what: format!("{context}: series '{}' y (one per x)", s.name),
                expected: s.x.len(),
                got: s.y.len(),
            });
        }
        if s.x.is_empty() {
            return Err(empty(format!("{context}: series '{}'", s.name)));
        }
    }
    Ok(())
}

/// Split a series into drawable polylines in plot coordinates, clipped to the axes.
fn segments(series: &Series, x: &Axis, y: &Axis) -> Vec<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    for (&xv, &yv) in series.x.iter().zip(&series.y) {
        match (x.to_plot(xv), y.to_plot(yv)) {
            (Some(px), Some(py)) => current.push((px, py)),
            _ => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out.into_iter()
        .flat_map(|line| clip_polyline(&line, (x.lo, x.hi), (y.lo, y.hi)))
        .collect()
}

/// Clip a polyline to a rectangle (Liang–Barsky per segment), keeping connected runs.
pub(crate) fn clip_polyline(
    points: &[(f64, f64)],
    xr: (f64, f64),
    yr: (f64, f64),
) -> Vec<Vec<(f64, f64)>> {
    let inside = |p: (f64, f64)| p.0 >= xr.0 && p.0 <= xr.1 && p.1 >= yr.0 && p.1 <= yr.1;
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    if points.len() == 1 {
        if inside(points[0]) {
            out.push(vec![points[0]]);
        }
        return out;
    }
    for pair in points.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        let mut t0: f64 = 0.0;
        let mut t1: f64 = 1.0;
        let mut visible = true;
        for (p, q) in [
            (-dx, a.0 - xr.0),
            (dx, xr.1 - a.0),
            (-dy, a.1 - yr.0),
            (dy, yr.1 - a.1),
        ] {
            if p == 0.0 {
                if q < 0.0 {
                    visible = false;
                    break;
                }
            } else {
                let r = q / p;
                if p < 0.0 {
                    t0 = t0.max(r);
                } else {
                    t1 = t1.min(r);
                }
            }
        }
        if !visible || t0 > t1 {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            continue;
        }
        let start = (a.0 + t0 * dx, a.1 + t0 * dy);
        let end = (a.0 + t1 * dx, a.1 + t1 * dy);
        if current.is_empty() || t0 > 0.0 {
            if !current.is_empty() {
                out.push(std::mem::take(&mut current));
            }
            current.push(start);
        }
        current.push(end);
        if t1 < 1.0 {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn point_markers(series: &Series, x: &Axis, y: &Axis) -> Vec<(f64, f64)> {
    series
        .x
        .iter()
        .zip(&series.y)
        .filter_map(|(&xv, &yv)| Some((x.to_plot(xv)?, y.to_plot(yv)?)))
        .filter(|p| p.0 >= x.lo && p.0 <= x.hi && p.1 >= y.lo && p.1 <= y.hi)
        .collect()
}

pub(crate) fn line_figure(series: &[Series], options: &LineOptions) -> PlotResult<LineFigure> {
    check_series("plot_lines", series)?;
    let size = check_size("LineOptions", options.width, options.height)?;
    let x = Axis::fit(
        "LineOptions.x_range",
        series.iter().flat_map(|s| s.x.iter().copied()),
        options.log_x,
        options.x_range,
        0.0,
    )?;
    let y = Axis::fit(
        "LineOptions.y_range",
        series.iter().flat_map(|s| s.y.iter().copied()),
        options.log_y,
        options.y_range,
        0.05,
    )?;
    let curves = series
        .iter()
        .enumerate()
        .map(|(i, s)| Curve {
            name: s.name.clone(),
            color: series_color(i),
            segments: segments(s, &x, &y),
            markers: if options.markers {
                point_markers(s, &x, &y)
            } else {
                Vec::new()
            },
        })
        .collect();
    Ok(LineFigure {
        size,
        title: options.title.clone(),
        x_label: options.x_label.clone(),
        y_label: options.y_label.clone(),
        x,
        y,
        curves,
        legend: options.legend,
        line_width: options.line_width.max(1),
        marker_radius: 3,
    })
}

/// Linear interpolation of `y` at `at` over the finite points of a curve sorted by x, with
/// numpy `interp` semantics, as the FROC score reads its grid: left of the curve the first
/// value, right of it the last (highest at that x). None only for a curve without points.
pub(crate) fn interpolate(series: &Series, at: f64) -> Option<f64> {
    let mut points: Vec<(f64, f64)> = series
        .x
        .iter()
        .zip(&series.y)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(a, b)| (*a, *b))
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let first = *points.first()?;
    if at < first.0 {
        return Some(first.1);
    }
    // The last point at or before `at`, and the first after it; with repeated x values
    // (a vertical jump) the higher y at that x wins, as in a FROC step.
    let upto = points.partition_point(|p| p.0 <= at);
    let (x0, y0) = points[upto - 1];
    let at_x0 = points[..upto]
        .iter()
        .rev()
        .take_while(|p| p.0 == x0)
        .map(|p| p.1)
        .fold(y0, f64::max);
    match points.get(upto) {
        Some(&(x1, y1)) if x0 < at => Some(at_x0 + (y1 - at_x0) * (at - x0) / (x1 - x0)),
        _ => Some(at_x0),
    }
}

/// A FROC curve continued flat to `x_end`: beyond its last point the sensitivity stays at its
/// final value (that is how the FROC score reads FPPI values past the curve).
fn extend_right(series: &Series, x_end: f64) -> Series {
    let last = series
        .x
        .iter()
        .zip(&series.y)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .max_by(|a, b| a.0.total_cmp(b.0).then(a.1.total_cmp(b.1)))
        .map(|(a, b)| (*a, *b));
    let mut out = series.clone();
    if let Some((x_last, y_last)) = last
        && x_last < x_end
    {
        out.x.push(x_end);
        out.y.push(y_last);
    }
    out
}

pub(crate) fn froc_figure(curves: &[Series], options: &FrocOptions) -> PlotResult<LineFigure> {
    check_series("plot_froc", curves)?;
    let size = check_size("FrocOptions", options.width, options.height)?;
    let x = Axis::fit("FrocOptions.x_range", [], true, Some(options.x_range), 0.0)?;
    let x = if options.fppi_ticks.is_empty() {
        x
    } else {
        x.with_ticks(&options.fppi_ticks)
    };
    let y = Axis::fit("FrocOptions.y_range", [], false, Some(options.y_range), 0.0)?;
    let mut out = Vec::new();
    for (i, s) in curves.iter().enumerate() {
        let marked: Vec<(f64, f64)> = options
            .fppi_ticks
            .iter()
            .filter_map(|&t| Some((t, interpolate(s, t)?)))
            .collect();
        let mut name = s.name.clone();
        if options.mean_in_legend && !options.fppi_ticks.is_empty() {
            // The same number as the FROC score (mean sensitivity at the grid).
            let mean = marked.iter().map(|p| p.1).sum::<f64>() / options.fppi_ticks.len() as f64;
            name = format!("{name} ({mean:.3})");
        }
        let markers = if options.markers {
            marked
                .iter()
                .filter_map(|&(a, b)| Some((x.to_plot(a)?, y.to_plot(b)?)))
                .filter(|p| p.0 >= x.lo && p.0 <= x.hi && p.1 >= y.lo && p.1 <= y.hi)
                .collect()
        } else {
            Vec::new()
        };
        out.push(Curve {
            name,
            color: series_color(i),
            segments: segments(&extend_right(s, options.x_range.1), &x, &y),
            markers,
        });
    }
    Ok(LineFigure {
        size,
        title: options.title.clone(),
        x_label: options.x_label.clone(),
        y_label: options.y_label.clone(),
        x,
        y,
        curves: out,
        legend: options.legend,
        line_width: options.line_width.max(1),
        marker_radius: 4,
    })
}

pub(crate) fn pr_figure(curves: &[Series], options: &PrOptions) -> PlotResult<LineFigure> {
    check_series("plot_pr", curves)?;
    let size = check_size("PrOptions", options.width, options.height)?;
    let x = Axis::fit("PrOptions.x_range", [], false, Some(options.x_range), 0.0)?;
    let y = Axis::fit("PrOptions.y_range", [], false, Some(options.y_range), 0.0)?;
    let out = curves
        .iter()
        .enumerate()
        .map(|(i, s)| Curve {
            name: s.name.clone(),
            color: series_color(i),
            segments: segments(s, &x, &y),
            markers: if options.markers {
                point_markers(s, &x, &y)
            } else {
                Vec::new()
            },
        })
        .collect();
    Ok(LineFigure {
        size,
        title: options.title.clone(),
        x_label: options.x_label.clone(),
        y_label: options.y_label.clone(),
        x,
        y,
        curves: out,
        legend: options.legend,
        line_width: options.line_width.max(1),
        marker_radius: 3,
    })
}

impl Figure for LineFigure {
    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult<()> {
        let font_scale = (self.size.0.min(self.size.1) as f64 / 500.0).clamp(0.8, 2.5);
        let named: Vec<(String, RGBColor, Mark)> = self
            .curves
            .iter()
            .filter(|c| !c.name.is_empty())
            .map(|c| (c.name.clone(), c.color, Mark::Line))
            .collect();
        let top_legend = self.legend == LegendPosition::Top && !named.is_empty();
        let area = if top_legend {
            let used = draw_title_and_legend_row(root, &self.title, &named, font_scale)?;
            root.clone()
                .shrink((0, used), (self.size.0, self.size.1.saturating_sub(used)))
        } else {
            root.clone()
        };
        let title = if top_legend { "" } else { self.title.as_str() };
        let frame = Frame::new(title, &self.x_label, &self.y_label, &self.x, &self.y);
        let mut chart = draw_frame(&area, &frame, font_scale)?;
        let width = self.line_width;
        for curve in &self.curves {
            let color = curve.color;
            let style = color.stroke_width(width);
            for (k, segment) in curve.segments.iter().enumerate() {
                let drawn = chart
                    .draw_series(LineSeries::new(segment.iter().copied(), style))
                    .map_err(draw_error)?;
                if k == 0 && !curve.name.is_empty() {
                    drawn.label(curve.name.clone()).legend(move |(px, py)| {
                        PathElement::new(
                            vec![(px, py), (px + 22, py)],
                            color.stroke_width(width + 1),
                        )
                    });
                }
            }
            if curve.segments.is_empty() && !curve.name.is_empty() {
                // Keep an all-NaN series in the legend so it is visibly missing, not forgotten.
                chart
                    .draw_series(LineSeries::new(std::iter::empty::<(f64, f64)>(), style))
                    .map_err(draw_error)?
                    .label(format!("{} (no data)", curve.name))
                    .legend(move |(px, py)| {
                        PathElement::new(
                            vec![(px, py), (px + 22, py)],
                            color.stroke_width(width + 1),
                        )
                    });
            }
            let radius = self.marker_radius;
            chart
                .draw_series(
                    curve
                        .markers
                        .iter()
                        .map(|&p| Circle::new(p, radius, color.filled())),
                )
                .map_err(draw_error)?;
        }
        if let (false, Some(position)) = (named.is_empty(), self.legend.to_plotters()) {
            chart
                .configure_series_labels()
                .position(position)
                .margin((10.0 * font_scale) as i32)
                .legend_area_size((30.0 * font_scale) as i32)
                .label_font(font(14.0 * font_scale))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(170, 170, 170))
                .draw()
                .map_err(draw_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::output::{assert_plot_file, decode_png, render_rgb, render_svg};
    use super::*;

    fn loss_curves() -> Vec<Series> {
        let x: Vec<f64> = (0..50).map(|i| i as f64).collect();
        let train: Vec<f64> = x.iter().map(|e| 2.0 * (-e / 12.0).exp() + 0.1).collect();
        let mut val: Vec<f64> = x.iter().map(|e| 2.1 * (-e / 15.0).exp() + 0.2).collect();
        val[20] = f64::NAN; // a missing validation epoch leaves a gap, not a panic
        vec![
            Series::new("train loss", x.clone(), train),
            Series::new("validation loss", x, val),
        ]
    }

    #[test]
    fn lines_write_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let options = LineOptions {
            title: "Training".into(),
            x_label: "epoch".into(),
            y_label: "loss".into(),
            log_y: true,
            ..Default::default()
        };
        for name in ["loss.png", "loss.svg"] {
            let path = dir.path().join(name);
            plot_lines(&path, &loss_curves(), &options).unwrap();
            assert_plot_file(&path, (800, 500));
        }
        let png = decode_png(&std::fs::read(dir.path().join("loss.png")).unwrap());
        assert_eq!((png.width, png.height), (800, 500));
        // The first series' colour appears (the curve was drawn).
        let blue = png
            .pixels
            .chunks(3)
            .filter(|p| *p == [31, 119, 180])
            .count();
        assert!(blue > 200, "only {blue} curve pixels");
        let svg = std::fs::read_to_string(dir.path().join("loss.svg")).unwrap();
        assert!(svg.contains("train loss") && svg.contains("validation loss"));
    }

    #[test]
    fn all_nan_series_stay_in_the_legend_without_panicking() {
        let series = vec![
            Series::new("ok", vec![1.0, 2.0], vec![1.0, 2.0]),
            Series::new("diverged", vec![1.0, 2.0], vec![f64::NAN, f64::NAN]),
        ];
        let svg = render_svg(
            &line_figure(
                &series,
                &LineOptions {
                    log_x: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        )
        .unwrap();
        assert!(svg.contains("diverged (no data)"));
        let only_nan = vec![Series::new("nan", vec![f64::NAN], vec![f64::NAN])];
        let image = render_rgb(&line_figure(&only_nan, &LineOptions::default()).unwrap()).unwrap();
        assert_eq!((image.width, image.height), (800, 500));
    }

    #[test]
    fn nan_points_split_the_line() {
        let series = &loss_curves()[1];
        let x = Axis::with_range(false, 0.0, 49.0);
        let y = Axis::with_range(false, 0.0, 3.0);
        let parts = segments(series, &x, &y);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].len() + parts[1].len(), 49);
    }

    #[test]
    fn errors_name_the_series_and_the_case() {
        let dir = tempfile::tempdir().unwrap();
        let bad = vec![Series::new("val mAP", vec![1.0, 2.0, 3.0], vec![0.5, 0.6])];
        let err = plot_lines(dir.path().join("a.png"), &bad, &LineOptions::default()).unwrap_err();
        assert!(matches!(
            err,
            PlotError::LengthMismatch {
                expected: 3,
                got: 2,
                ..
            }
        ));
        assert!(err.to_string().contains("val mAP"), "{err}");
        let err = plot_lines(dir.path().join("a.png"), &[], &LineOptions::default()).unwrap_err();
        assert!(matches!(err, PlotError::EmptyInput { .. }), "{err}");
        let err = plot_lines(
            dir.path().join("a.pdf"),
            &loss_curves(),
            &LineOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, PlotError::UnsupportedFormat { .. }));
        assert!(err.to_string().contains("a.pdf"));
        let options = LineOptions {
            y_range: Some((1.0, 0.0)),
            ..Default::default()
        };
        let err = plot_lines(dir.path().join("a.png"), &loss_curves(), &options).unwrap_err();
        assert!(err.to_string().contains("y_range"), "{err}");
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "no file on error"
        );
    }

    #[test]
    fn options_deserialise_from_a_partial_map_and_reject_unknown_keys() {
        let options: LineOptions =
            serde_json::from_str(r#"{"title": "lr", "log_y": true, "legend": "lower_left"}"#)
                .unwrap();
        assert_eq!(options.title, "lr");
        assert!(options.log_y);
        assert_eq!(options.legend, LegendPosition::LowerLeft);
        assert_eq!(options.width, 800);
        assert!(serde_json::from_str::<LineOptions>(r#"{"titel": "x"}"#).is_err());
        let froc: FrocOptions = serde_json::from_str(r#"{"x_range": [0.05, 20]}"#).unwrap();
        assert_eq!(froc.x_range, (0.05, 20.0));
    }

    #[test]
    fn clipping_cuts_lines_at_the_frame() {
        let parts = clip_polyline(
            &[(-1.0, 0.5), (0.5, 0.5), (2.0, 0.5)],
            (0.0, 1.0),
            (0.0, 1.0),
        );
        assert_eq!(parts, vec![vec![(0.0, 0.5), (0.5, 0.5), (1.0, 0.5)]]);
        let parts = clip_polyline(
            &[(0.5, 0.5), (0.5, 2.0), (0.6, 0.5)],
            (0.0, 1.0),
            (0.0, 1.0),
        );
        assert_eq!(parts.len(), 2);
        assert!(clip_polyline(&[(2.0, 2.0), (3.0, 3.0)], (0.0, 1.0), (0.0, 1.0)).is_empty());
    }

    #[test]
    fn froc_interpolation_marks_the_fppi_grid() {
        let curve = Series::new(
            "m",
            vec![0.1, 0.25, 1.0, 1.0, 4.0],
            vec![0.2, 0.5, 0.7, 0.8, 0.9],
        );
        assert_eq!(interpolate(&curve, 0.25), Some(0.5));
        assert_eq!(interpolate(&curve, 1.0), Some(0.8)); // the step's top at a repeated x
        assert!((interpolate(&curve, 2.0).unwrap() - (0.8 + 0.1 / 3.0)).abs() < 1e-12);
        assert_eq!(interpolate(&curve, 8.0), Some(0.9)); // numpy interp: the final value
        assert_eq!(interpolate(&curve, 0.05), Some(0.2)); // and the first one on the left
        let options = FrocOptions {
            mean_in_legend: true,
            ..Default::default()
        };
        let figure = froc_figure(&[curve], &options).unwrap();
        // Every grid value is marked (8 reads the final sensitivity), and the legend's mean
        // is the FROC score: (0.25 + 0.5 + 0.5667 + 0.8 + 0.8333 + 0.9 + 0.9) / 7.
        assert_eq!(figure.curves[0].markers.len(), 7);
        assert_eq!(figure.curves[0].name, "m (0.679)");
        let labels: Vec<_> = figure.x.ticks.iter().map(|t| figure.x.label(*t)).collect();
        assert_eq!(labels, ["0.125", "0.25", "0.5", "1", "2", "4", "8"]);
    }

    #[test]
    fn froc_and_pr_write_png_and_svg() {
        let dir = tempfile::tempdir().unwrap();
        let fppi: Vec<f64> = (0..40).map(|i| 0.05 * 1.2f64.powi(i)).collect();
        let methods = ["scratch", "MAE", "VoCo"];
        let curves: Vec<Series> = methods
            .iter()
            .enumerate()
            .map(|(k, m)| {
                let sens = fppi
                    .iter()
                    .map(|f| 0.95 - (0.5 - 0.08 * k as f64) / (1.0 + f.ln().max(-3.0) + 3.0))
                    .collect();
                Series::new(*m, fppi.clone(), sens)
            })
            .collect();
        let recall: Vec<f64> = (0..=20).map(|i| i as f64 / 20.0).collect();
        let pr: Vec<Series> = methods
            .iter()
            .enumerate()
            .map(|(k, m)| {
                Series::new(
                    *m,
                    recall.clone(),
                    recall
                        .iter()
                        .map(|r| 1.0 - r.powf(3.0 - 0.5 * k as f64))
                        .collect(),
                )
            })
            .collect();
        for ext in ["png", "svg"] {
            let path = dir.path().join(format!("froc.{ext}"));
            plot_froc(
                &path,
                &curves,
                &FrocOptions {
                    mean_in_legend: true,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_plot_file(&path, (760, 540));
            let path = dir.path().join(format!("pr.{ext}"));
            plot_pr(&path, &pr, &PrOptions::default()).unwrap();
            assert_plot_file(&path, (620, 560));
        }
        let svg = std::fs::read_to_string(dir.path().join("froc.svg")).unwrap();
        assert!(
            svg.contains("\n0.125\n</text>") && svg.contains("\n8\n</text>"),
            "FPPI tick labels"
        );
        let image = render_rgb(&froc_figure(&curves, &FrocOptions::default()).unwrap()).unwrap();
        let orange = image
            .pixels
            .chunks(3)
            .filter(|p| *p == [255, 127, 14])
            .count();
        assert!(orange > 300, "second method drawn: {orange}");
    }
}
