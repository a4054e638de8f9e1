//! Axis ranges, tick positions and labels, shared styling, and the chart frame used by the
//! line-type figures.
//!
//! Charts use plain `f64` plot coordinates; a logarithmic axis stores `log10(value)`, so one
//! coordinate type serves linear and log axes and tick labels are always the data values.

use super::{PlotResult, draw_error, invalid};
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::{FontDesc, FontFamily, FontStyle};
use std::ops::Range;

/// The chart coordinate system of all line-type figures.
pub(crate) type Chart2d = Cartesian2d<Ticked, Ticked>;

/// A linear `f64` coordinate with explicit tick (bold) and grid (light) positions.
/// (plotters' own `WithKeyPoints<RangedCoordf64>` cannot take a label formatter.)
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ticked {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
    minor: Vec<f64>,
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let fraction = (value - self.lo) / (self.hi - self.lo);
        let length = limit.1 - limit.0;
        if length == 0 || !fraction.is_finite() {
            return limit.1;
        }
        limit.0 + (length as f64 * fraction + 1e-3).floor() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// Series colours: matplotlib's tab10, distinguishable and familiar from papers.
pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The colour of the `i`-th series.
pub(crate) fn series_color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

pub(crate) fn font(size: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::SansSerif, size, FontStyle::Normal)
}

pub(crate) fn bold_font(size: f64) -> FontDesc<'static> {
    FontDesc::new(FontFamily::SansSerif, size, FontStyle::Bold)
}

/// A number as a short label: integers without decimals, up to 6 significant decimals,
/// scientific notation for very small or large magnitudes (`0.125`, `8`, `1e-5`).
pub fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return format!("{value}");
    }
    if value == 0.0 {
        return "0".into();
    }
    let magnitude = value.abs();
    if (1e-3..1e6).contains(&magnitude) {
        let digits = (6 - magnitude.log10().floor() as i32).clamp(0, 9) as usize;
        let text = format!("{value:.digits$}");
        let text = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.')
        } else {
            &text
        };
        if text == "-0" {
            "0".into()
        } else {
            text.to_string()
        }
    } else {
        let text = format!("{value:.3e}");
        // "1.500e-5" -> "1.5e-5"
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let mantissa = if mantissa.contains('.') {
            mantissa.trim_end_matches('0').trim_end_matches('.')
        } else {
            mantissa
        };
        format!("{mantissa}e{exponent}")
    }
}

/// One chart axis in plot coordinates (`log10` of the data for log axes).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Axis {
    pub log: bool,
    pub lo: f64,
    pub hi: f64,
    /// Labelled ticks (plot coordinates), inside `lo..=hi`.
    pub ticks: Vec<f64>,
    /// Unlabelled grid lines (plot coordinates).
    pub minor: Vec<f64>,
}

impl Axis {
    /// Plot coordinate of a data value, or None if it cannot be shown (NaN, or ≤ 0 on a log axis).
    pub fn to_plot(&self, value: f64) -> Option<f64> {
        if !value.is_finite() {
            return None;
        }
        if self.log {
            (value > 0.0).then(|| value.log10())
        } else {
            Some(value)
        }
    }

    /// Data value of a plot coordinate.
    pub fn to_data(&self, plot: f64) -> f64 {
        if self.log { 10f64.powf(plot) } else { plot }
    }

    /// The tick label of a plot coordinate.
    pub fn label(&self, plot: f64) -> String {
        let value = self.to_data(plot);
        // Log ticks are exact powers/multiples; round away floating noise (10^-0.30103 ≈ 0.5).
        let value = if self.log {
            round_significant(value, 6)
        } else {
            value
        };
        format_number(value)
    }

    /// The plotters range with the tick and grid positions bound.
    pub fn coord(&self) -> Ticked {
        Ticked {
            lo: self.lo,
            hi: self.hi,
            ticks: self.ticks.clone(),
            minor: self.minor.clone(),
        }
    }

    /// An axis spanning the data values, padded by `pad` of the span on each side, with
    /// automatic ticks; `fixed` (data units) overrides the range.
    pub fn fit(
        field: &str,
        values: impl IntoIterator<Item = f64>,
        log: bool,
        fixed: Option<(f64, f64)>,
        pad: f64,
    ) -> PlotResult<Self> {
        let (lo, hi) = match fixed {
            Some((a, b)) => {
                if !(a.is_finite() && b.is_finite() && a < b) {
                    return Err(invalid(
                        field,
                        format!("range ({a}, {b}) must be finite with min < max"),
                    ));
                }
                if log && a <= 0.0 {
                    return Err(invalid(
                        field,
                        format!("range ({a}, {b}) must be positive on a log axis"),
                    ));
                }
                if log { (a.log10(), b.log10()) } else { (a, b) }
            }
            None => {
                let mut lo = f64::INFINITY;
                let mut hi = f64::NEG_INFINITY;
                for v in values {
                    let p = if log {
                        if v.is_finite() && v > 0.0 {
                            v.log10()
                        } else {
                            continue;
                        }
                    } else if v.is_finite() {
                        v
                    } else {
                        continue;
                    };
                    lo = lo.min(p);
                    hi = hi.max(p);
                }
                if lo > hi {
                    // No drawable value at all: show a unit range rather than fail, so an
                    // all-NaN series still gives an (empty) figure.
                    (0.0, 1.0)
                } else if lo == hi {
                    let half = if log {
                        0.5
                    } else if lo == 0.0 {
                        1.0
                    } else {
                        lo.abs() * 0.1
                    };
                    (lo - half, hi + half)
                } else {
                    let span = hi - lo;
                    (lo - pad * span, hi + pad * span)
                }
            }
        };
        Ok(Self::with_range(log, lo, hi))
    }

    /// An axis over `lo..hi` (plot coordinates) with automatic ticks.
    pub fn with_range(log: bool, lo: f64, hi: f64) -> Self {
        let (ticks, minor) = if log {
            log_ticks(lo, hi)
        } else {
            (linear_ticks(lo, hi, 7), Vec::new())
        };
        Self {
            log,
            lo,
            hi,
            ticks,
            minor,
        }
    }

    /// Replace the labelled ticks by the given data values (those inside the range).
    pub fn with_ticks(mut self, data_ticks: &[f64]) -> Self {
        self.ticks = data_ticks
            .iter()
            .filter_map(|&v| self.to_plot(v))
            .filter(|p| *p >= self.lo - 1e-9 && *p <= self.hi + 1e-9)
            .collect();
        self.minor.clear();
        self
    }
}

pub(crate) fn round_significant(value: f64, digits: i32) -> f64 {
    if value == 0.0 || !value.is_finite() {
        return value;
    }
    let scale = 10f64.powi(digits - 1 - value.abs().log10().floor() as i32);
    (value * scale).round() / scale
}

/// "Nice" ticks (multiples of 1, 2, 2.5 or 5 × 10^k) inside `lo..=hi`, about `target` of them.
pub(crate) fn linear_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return vec![lo];
    }
    let raw = span / target.max(2) as f64;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// Decade ticks for a log axis (plot coordinates); with less than two decades in view the
/// 2× and 5× multiples are labelled as well. Minor lines at every integer multiple.
pub(crate) fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let inside = |p: &f64| *p >= lo - 1e-9 && *p <= hi + 1e-9;
    let first = lo.floor() as i32;
    let last = hi.ceil() as i32;
    let multiples: &[f64] = if hi - lo < 2.0 {
        &[1.0, 2.0, 5.0]
    } else {
        &[1.0]
    };
    let mut ticks = Vec::new();
    let mut minor = Vec::new();
    for k in first..=last {
        for m in 1..10 {
            let p = (m as f64 * 10f64.powi(k)).log10();
            if !inside(&p) {
                continue;
            }
            if multiples.contains(&(m as f64)) {
                ticks.push(p);
            } else {
                minor.push(p);
            }
        }
    }
    (ticks, minor)
}

/// Text and frame settings shared by the line-type charts.
pub(crate) struct Frame<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub x: &'a Axis,
    pub y: &'a Axis,
    /// Vertical grid lines at the x ticks.
    pub x_grid: bool,
    /// Horizontal grid lines at the y ticks.
    pub y_grid: bool,
    /// Width of the y tick-label area in pixels (before font scaling); None: automatic.
    pub y_label_area: Option<u32>,
    /// Tick labels for x / y instead of the numeric value (categorical axes).
    pub x_names: Option<&'a [String]>,
    pub y_names: Option<&'a [String]>,
    /// Keep the space of the axis descriptions even when they are empty, so that panels
    /// of a grid get identical plotting areas.
    pub reserve_descriptions: bool,
    /// Right margin in pixels (before font scaling); None: 22.
    pub right_margin: Option<u32>,
}

impl<'a> Frame<'a> {
    pub fn new(
        title: &'a str,
        x_label: &'a str,
        y_label: &'a str,
        x: &'a Axis,
        y: &'a Axis,
    ) -> Self {
        Self {
            title,
            x_label,
            y_label,
            x,
            y,
            x_grid: true,
            y_grid: true,
            y_label_area: None,
            x_names: None,
            y_names: None,
            reserve_descriptions: false,
            right_margin: None,
        }
    }
}

/// How a legend entry is marked: a filled square (bars) or a short line (curves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    Square,
    Line,
}

/// Draw the title and a centred, wrapping row of legend entries at the top of `root`;
/// returns the height used, where the chart should start.
pub(crate) fn draw_title_and_legend_row<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    entries: &[(String, RGBColor, Mark)],
    font_scale: f64,
) -> PlotResult<u32> {
    let (width, _) = root.dim_in_pixel();
    let mut y = (10.0 * font_scale) as i32;
    if !title.is_empty() {
        let style = bold_font(20.0 * font_scale)
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top));
        root.draw_text(title, &style, (width as i32 / 2, y))
            .map_err(draw_error)?;
        y += (32.0 * font_scale) as i32;
    }
    let text_font = font(14.0 * font_scale);
    let swatch = (22.0 * font_scale) as i32;
    let gap = (20.0 * font_scale) as i32;
    let row_height = (22.0 * font_scale) as i32;
    // Greedy line breaking of the entries into rows no wider than the figure.
    let mut rows: Vec<Vec<(usize, i32)>> = vec![Vec::new()];
    let mut row_width = 0;
    for (i, (name, _, _)) in entries.iter().enumerate() {
        let (text_width, _) = root
            .estimate_text_size(name, &text_font.clone().into_text_style(root))
            .map_err(draw_error)?;
        let entry_width = swatch + 6 + text_width as i32;
        let needed = if row_width == 0 {
            entry_width
        } else {
            row_width + gap + entry_width
        };
        if needed > width as i32 - 2 * gap && row_width > 0 {
            rows.push(Vec::new());
            row_width = entry_width;
        } else {
            row_width = needed;
        }
        rows.last_mut()
            .expect("at least one row")
            .push((i, entry_width));
    }
    let text_style = text_font
        .color(&RGBColor(30, 30, 30))
        .pos(Pos::new(HPos::Left, VPos::Center));
    for row in rows.iter().filter(|r| !r.is_empty()) {
        let total: i32 = row.iter().map(|(_, w)| w).sum::<i32>() + gap * (row.len() as i32 - 1);
        let mut x = (width as i32 - total) / 2;
        let centre = y + row_height / 2;
        for &(i, entry_width) in row {
            let (name, color, mark) = &entries[i];
            match mark {
                Mark::Square => {
                    let half = (6.0 * font_scale) as i32;
                    let left = x + swatch / 2 - half;
                    root.draw(&Rectangle::new(
                        [(left, centre - half), (left + 2 * half, centre + half)],
                        color.filled(),
                    ))
                    .map_err(draw_error)?;
                }
                Mark::Line => {
                    let style = color.stroke_width((3.0 * font_scale) as u32);
                    root.draw(&PathElement::new(
                        vec![(x, centre), (x + swatch, centre)],
                        style,
                    ))
                    .map_err(draw_error)?;
                }
            }
            root.draw_text(name, &text_style, (x + swatch + 6, centre))
                .map_err(draw_error)?;
            x += entry_width + gap;
        }
        y += row_height;
    }
    Ok((y + (4.0 * font_scale) as i32).max(0) as u32)
}

/// The category name at a plot coordinate of a categorical axis (categories at 0, 1, 2, ...).
fn category(names: &[String], p: f64) -> String {
    let i = p.round();
    if (p - i).abs() < 1e-6 && i >= 0.0 {
        names.get(i as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

/// Build a chart on `area` with title, axes, grid and tick labels drawn.
pub(crate) fn draw_frame<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    frame: &Frame<'_>,
    font_scale: f64,
) -> PlotResult<ChartContext<'a, DB, Chart2d>> {
    let mut builder = ChartBuilder::on(area);
    builder
        .margin_top((12.0 * font_scale) as i32)
        .margin_right((frame.right_margin.unwrap_or(22) as f64 * font_scale) as i32)
        .margin_left((6.0 * font_scale) as i32)
        .margin_bottom((6.0 * font_scale) as i32)
        .x_label_area_size(
            (if frame.x_label.is_empty() && !frame.reserve_descriptions {
                30.0
            } else {
                52.0
            } * font_scale) as i32,
        )
        .y_label_area_size(
            (frame.y_label_area.map(f64::from).unwrap_or(52.0)
                + if frame.y_label.is_empty() && !frame.reserve_descriptions {
                    0.0
                } else {
                    22.0
                })
                * font_scale,
        );
    if !frame.title.is_empty() {
        builder.caption(frame.title, bold_font(20.0 * font_scale));
    }
    let mut chart = builder
        .build_cartesian_2d(frame.x.coord(), frame.y.coord())
        .map_err(draw_error)?;
    let x_axis = frame.x.clone();
    let y_axis = frame.y.clone();
    let x_names = frame.x_names;
    let y_names = frame.y_names;
    let x_formatter = move |p: &f64| match x_names {
        Some(names) => category(names, *p),
        None => x_axis.label(*p),
    };
    let y_formatter = move |p: &f64| match y_names {
        Some(names) => category(names, *p),
        None => y_axis.label(*p),
    };
    let mut mesh = chart.configure_mesh();
    if !frame.x_grid {
        mesh.disable_x_mesh();
    }
    if !frame.y_grid {
        mesh.disable_y_mesh();
    }
    mesh.x_desc(frame.x_label)
        .y_desc(frame.y_label)
        .x_label_formatter(&x_formatter)
        .y_label_formatter(&y_formatter)
        .label_style(font(14.0 * font_scale))
        .axis_desc_style(font(15.0 * font_scale))
        .bold_line_style(RGBColor(215, 215, 215).stroke_width(1))
        .light_line_style(RGBColor(238, 238, 238).stroke_width(1))
        .axis_style(RGBColor(90, 90, 90).stroke_width(1))
        .draw()
        .map_err(draw_error)?;
    Ok(chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_format_short_and_exact() {
        assert_eq!(format_number(0.125), "0.125");
        assert_eq!(format_number(8.0), "8");
        assert_eq!(format_number(0.1 + 0.2), "0.3");
        assert_eq!(format_number(-2.5), "-2.5");
        assert_eq!(format_number(1234.5), "1234.5");
        assert_eq!(format_number(1e-5), "1e-5");
        assert_eq!(format_number(1.5e7), "1.5e7");
        assert_eq!(format_number(0.0), "0");
        assert_eq!(format_number(f64::NAN), "NaN");
    }

    #[test]
    fn linear_ticks_are_nice_and_inside() {
        assert_eq!(
            linear_ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let ticks = linear_ticks(-0.13, 2.7, 7);
        assert!(ticks.iter().all(|t| (-0.13..=2.7).contains(t)));
        assert_eq!(ticks.first().map(|t| format_number(*t)), Some("0".into()));
        assert!(ticks.len() >= 4 && ticks.len() <= 10, "{ticks:?}");
    }

    #[test]
    fn log_ticks_label_decades_or_multiples() {
        let (ticks, minor) = log_ticks(-4.0, 0.0);
        let labels: Vec<_> = ticks
            .iter()
            .map(|t| format_number(round_significant(10f64.powf(*t), 6)))
            .collect();
        assert_eq!(labels, ["1e-4", "0.001", "0.01", "0.1", "1"]);
        assert_eq!(minor.len(), 4 * 8);
        let (ticks, _) = log_ticks(0.0, 1.0);
        assert_eq!(ticks.len(), 4); // 1, 2, 5, 10
    }

    #[test]
    fn fit_skips_nan_and_nonpositive_on_log_axes() {
        let axis = Axis::fit("y", [f64::NAN, -1.0, 0.0, 10.0, 1000.0], true, None, 0.0).unwrap();
        assert_eq!((axis.lo, axis.hi), (1.0, 3.0));
        assert_eq!(axis.to_plot(0.0), None);
        assert_eq!(axis.label(2.0), "100");
        let flat = Axis::fit("y", [3.0, 3.0], false, None, 0.05).unwrap();
        assert!(flat.lo < 3.0 && flat.hi > 3.0);
        let err = Axis::fit("LineOptions.y_range", [], true, Some((0.0, 1.0)), 0.0).unwrap_err();
        assert!(err.to_string().contains("LineOptions.y_range"), "{err}");
    }

    #[test]
    fn fixed_ticks_are_labelled_with_data_values() {
        let axis = Axis::with_range(true, (0.1f64).log10(), 10f64.log10())
            .with_ticks(&[0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]);
        let labels: Vec<_> = axis.ticks.iter().map(|t| axis.label(*t)).collect();
        assert_eq!(labels, ["0.125", "0.25", "0.5", "1", "2", "4", "8"]);
    }
}
