//! Bar-type figures: grouped bars with confidence intervals, bootstrap rank histograms
//! (one small panel per method, as in the paper's Fig. 3) and confidence-interval forest plots.

use super::axis::{
    Axis, Frame, Mark, bold_font, draw_frame, draw_title_and_legend_row, font, series_color,
};
use super::lines::LegendPosition;
use super::output::{Figure, write_figure};
use super::{PlotError, PlotResult, draw_error, empty, invalid};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One bar series: a value per group, with an optional confidence interval per group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BarSeries {
    /// Legend text, e.g. the method.
    pub name: String,
    /// One value per group (NaN: no bar).
    pub values: Vec<f64>,
    /// Lower CI bound per group (empty: no error bars).
    pub ci_low: Vec<f64>,
    /// Upper CI bound per group (empty: no error bars).
    pub ci_high: Vec<f64>,
}

/// Options of [`plot_bars`] and [`plot_bars_with_ci`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BarOptions {
    /// Figure title (empty: none).
    pub title: String,
    /// X axis label (under the group names).
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Fixed y range (min, max); default: 0 and the data, with room for labels.
    pub y_range: Option<(f64, f64)>,
    /// Print each bar's value above it.
    pub value_labels: bool,
    /// Decimals of the value labels.
    pub decimals: usize,
    /// Legend placement.
    pub legend: LegendPosition,
    /// Figure width in pixels; default: from the number of bars.
    pub width: Option<u32>,
    /// Figure height in pixels.
    pub height: u32,
}

impl Default for BarOptions {
    fn default() -> Self {
        Self {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            y_range: None,
            value_labels: true,
            decimals: 2,
            legend: LegendPosition::Top,
            width: None,
            height: 500,
        }
    }
}

/// Options of [`plot_rank_histograms`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankHistogramOptions {
    /// Figure title (empty: none).
    pub title: String,
    /// Panels per row; default: up to 4.
    pub columns: Option<usize>,
    /// Width of one panel in pixels.
    pub panel_width: u32,
    /// Height of one panel in pixels.
    pub panel_height: u32,
    /// Show frequencies (counts / total) instead of raw counts.
    pub normalize: bool,
    /// Mark the mean rank with a line and print it in the panel title.
    pub show_mean: bool,
    /// X axis label (bottom row only).
    pub x_label: String,
    /// Y axis label (left column only); default from `normalize`.
    pub y_label: Option<String>,
    /// One note per method printed in its panel's corner, e.g. "ΔmAP +2.1" (empty: none).
    pub notes: Vec<String>,
}

impl Default for RankHistogramOptions {
    fn default() -> Self {
        Self {
            title: String::new(),
            columns: None,
            panel_width: 280,
            panel_height: 210,
            normalize: true,
            show_mean: true,
            x_label: "rank".into(),
            y_label: None,
            notes: Vec::new(),
        }
    }
}

/// A point estimate with its confidence interval, e.g. a method's bootstrapped mAP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Estimate {
    /// Row label, e.g. the method.
    pub name: String,
    /// Point estimate.
    pub value: f64,
    /// Lower CI bound.
    pub low: f64,
    /// Upper CI bound.
    pub high: f64,
}

impl Estimate {
    /// An estimate `value` with interval `[low, high]`.
    pub fn new(name: impl Into<String>, value: f64, low: f64, high: f64) -> Self {
        Self {
            name: name.into(),
            value,
            low,
            high,
        }
    }
}

/// Options of [`plot_bootstrap_ci`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapCiOptions {
    /// Figure title (empty: none).
    pub title: String,
    /// Value axis label, e.g. "mAP@0.1".
    pub x_label: String,
    /// Fixed value range (min, max); default: the intervals.
    pub x_range: Option<(f64, f64)>,
    /// A vertical reference line (e.g. the baseline's value).
    pub reference: Option<f64>,
    /// Print "value [low, high]" next to each interval.
    pub value_labels: bool,
    /// Decimals of the value labels.
    pub decimals: usize,
    /// Figure width in pixels.
    pub width: u32,
    /// Figure height in pixels; default: from the number of rows.
    pub height: Option<u32>,
}

impl Default for BootstrapCiOptions {
    fn default() -> Self {
        Self {
            title: String::new(),
            x_label: String::new(),
            x_range: None,
            reference: None,
            value_labels: true,
            decimals: 3,
            width: 760,
            height: None,
        }
    }
}

/// Grouped bar chart: one bar per series in each group (e.g. a metric per dataset and method).
pub fn plot_bars(
    path: impl AsRef<Path>,
    groups: &[String],
    series: &[(String, Vec<f64>)],
    options: &BarOptions,
) -> PlotResult<()> {
    let series: Vec<BarSeries> = series
        .iter()
        .map(|(name, values)| BarSeries {
            name: name.clone(),
            values: values.clone(),
            ..Default::default()
        })
        .collect();
    plot_bars_with_ci(path, groups, &series, options)
}

/// Grouped bar chart with optional error bars (confidence intervals) per bar.
pub fn plot_bars_with_ci(
    path: impl AsRef<Path>,
    groups: &[String],
    series: &[BarSeries],
    options: &BarOptions,
) -> PlotResult<()> {
    let figure = BarFigure::new(groups, series, options)?;
    write_figure(path.as_ref(), &figure)
}

/// Rank-distribution histograms from bootstrapping, one panel per method: `counts[r]` is how
/// often the method ranked `r + 1` (shared rank axis 1..M and shared y scale).
pub fn plot_rank_histograms(
    path: impl AsRef<Path>,
    methods: &[(String, Vec<u64>)],
    options: &RankHistogramOptions,
) -> PlotResult<()> {
    let figure = RankFigure::new(methods, options)?;
    write_figure(path.as_ref(), &figure)
}

/// Forest plot of point estimates with confidence intervals, one row per method.
pub fn plot_bootstrap_ci(
    path: impl AsRef<Path>,
    estimates: &[Estimate],
    options: &BootstrapCiOptions,
) -> PlotResult<()> {
    let figure = CiFigure::new(estimates, options)?;
    write_figure(path.as_ref(), &figure)
}

fn check_figure_size(field: &str, width: u32, height: u32) -> PlotResult<()> {
    if !(200..=8000).contains(&width) || !(150..=8000).contains(&height) {
        return Err(invalid(
            field,
            format!("{width}x{height} is outside 200x150 ..= 8000x8000 pixels"),
        ));
    }
    Ok(())
}

/// The number with `decimals` decimals.
fn fixed(value: f64, decimals: usize) -> String {
    format!("{value:.decimals$}")
}

struct BarFigure {
    groups: Vec<String>,
    series: Vec<BarSeries>,
    options: BarOptions,
    x: Axis,
    y: Axis,
    size: (u32, u32),
}

impl BarFigure {
    fn new(groups: &[String], series: &[BarSeries], options: &BarOptions) -> PlotResult<Self> {
        if groups.is_empty() {
            return Err(empty("plot_bars: group list"));
        }
        if series.is_empty() {
            return Err(empty("plot_bars: series list"));
        }
        for s in series {
            for (field, len, optional) in [
                ("values", s.values.len(), false),
                ("ci_low", s.ci_low.len(), true),
                ("ci_high", s.ci_high.len(), true),
            ] {
                if len != groups.len() && !(optional && len == 0) {
                    return Err(PlotError::LengthMismatch {
                        what: format!("plot_bars: series '{}' {field} (one per group)", s.name),
                        expected: groups.len(),
                        got: len,
                    });
                }
            }
            if s.ci_low.is_empty() != s.ci_high.is_empty() {
                return Err(invalid(
                    &format!("series '{}' confidence interval", s.name),
                    "give both ci_low and ci_high, or neither",
                ));
            }
        }
        let per_group = series.len() as u32;
        let width = match options.width {
            Some(w) => w,
            None => (150 + groups.len() as u32 * (per_group * 30 + 36).max(96)).clamp(520, 2400),
        };
        check_figure_size("BarOptions.width/height", width, options.height)?;
        let values = series
            .iter()
            .flat_map(|s| s.values.iter().chain(&s.ci_low).chain(&s.ci_high).copied());
        let y = match options.y_range {
            Some(range) => Axis::fit("BarOptions.y_range", [], false, Some(range), 0.0)?,
            None => {
                // Bars start at zero; leave headroom for value labels and the legend.
                let (mut lo, mut hi) = (0.0f64, 0.0f64);
                for v in values.filter(|v| v.is_finite()) {
                    lo = lo.min(v);
                    hi = hi.max(v);
                }
                if lo == hi {
                    hi = 1.0;
                }
                let span = hi - lo;
                let top = if hi > 0.0 { hi + span * 0.1 } else { 0.0 };
                let bottom = if lo < 0.0 { lo - span * 0.1 } else { 0.0 };
                Axis::with_range(false, bottom, top)
            }
        };
        let x = Axis {
            log: false,
            lo: -0.5,
            hi: groups.len() as f64 - 0.5,
            ticks: (0..groups.len()).map(|g| g as f64).collect(),
            minor: Vec::new(),
        };
        Ok(Self {
            groups: groups.to_vec(),
            series: series.to_vec(),
            options: options.clone(),
            x,
            y,
            size: (width, options.height),
        })
    }
}

impl Figure for BarFigure {
    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult<()> {
        let font_scale = (self.size.1 as f64 / 500.0).clamp(0.8, 2.5);
        let o = &self.options;
        let named: Vec<(String, RGBColor, Mark)> = self
            .series
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.name.is_empty())
            .map(|(i, s)| (s.name.clone(), series_color(i), Mark::Square))
            .collect();
        let top_legend = o.legend == LegendPosition::Top && !named.is_empty();
        let area = if top_legend {
            let used = draw_title_and_legend_row(root, &o.title, &named, font_scale)?;
            root.clone()
                .shrink((0, used), (self.size.0, self.size.1.saturating_sub(used)))
        } else {
            root.clone()
        };
        let title = if top_legend { "" } else { o.title.as_str() };
        let mut frame = Frame::new(title, &o.x_label, &o.y_label, &self.x, &self.y);
        frame.x_grid = false;
        frame.x_names = Some(&self.groups);
        let mut chart = draw_frame(&area, &frame, font_scale)?;
        let (lo, hi) = (self.y.lo, self.y.hi);
        let base = 0f64.clamp(lo, hi);
        let n = self.series.len() as f64;
        let bar = 0.8 / n;
        let label_style = font(12.0 * font_scale)
            .color(&RGBColor(50, 50, 50))
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        for (s, series) in self.series.iter().enumerate() {
            let color = series_color(s);
            let mut rects = Vec::new();
            let mut whiskers = Vec::new();
            let mut labels = Vec::new();
            for (g, &v) in series.values.iter().enumerate() {
                let left = g as f64 - 0.4 + s as f64 * bar;
                let centre = left + bar / 2.0;
                if v.is_finite() {
                    let top = v.clamp(lo, hi);
                    rects.push(Rectangle::new(
                        [(left + bar * 0.06, base), (left + bar * 0.94, top)],
                        color.filled(),
                    ));
                }
                let (l, h) = (
                    series.ci_low.get(g).copied(),
                    series.ci_high.get(g).copied(),
                );
                let mut label_at = v;
                if let (Some(l), Some(h)) = (l, h)
                    && l.is_finite()
                    && h.is_finite()
                {
                    let (l, h) = (l.clamp(lo, hi), h.clamp(lo, hi));
                    let cap = bar * 0.22;
                    whiskers.push(vec![(centre, l), (centre, h)]);
                    whiskers.push(vec![(centre - cap, h), (centre + cap, h)]);
                    whiskers.push(vec![(centre - cap, l), (centre + cap, l)]);
                    label_at = label_at.max(h);
                }
                if o.value_labels && v.is_finite() {
                    labels.push((
                        fixed(v, o.decimals),
                        (centre, label_at.max(base).clamp(lo, hi)),
                    ));
                }
            }
            let drawn = chart.draw_series(rects).map_err(draw_error)?;
            if !series.name.is_empty() {
                drawn.label(series.name.clone()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            }
            let dark = RGBColor(40, 40, 40);
            chart
                .draw_series(
                    whiskers
                        .into_iter()
                        .map(|points| PathElement::new(points, dark.stroke_width(2))),
                )
                .map_err(draw_error)?;
            chart
                .draw_series(labels.into_iter().map(|(text, at)| {
                    EmptyElement::at(at) + Text::new(text, (0, -3), label_style.clone())
                }))
                .map_err(draw_error)?;
        }
        if let (false, Some(position)) = (named.is_empty(), o.legend.to_plotters()) {
            chart
                .configure_series_labels()
                .position(position)
                .margin((10.0 * font_scale) as i32)
                .legend_area_size((24.0 * font_scale) as i32)
                .label_font(font(14.0 * font_scale))
                .background_style(WHITE.mix(0.9))
                .border_style(RGBColor(170, 170, 170))
                .draw()
                .map_err(draw_error)?;
        }
        Ok(())
    }
}

struct RankFigure {
    methods: Vec<(String, Vec<f64>, Option<f64>)>,
    ranks: usize,
    columns: usize,
    rows: usize,
    y: Axis,
    options: RankHistogramOptions,
    size: (u32, u32),
    title_height: u32,
}

impl RankFigure {
    fn new(methods: &[(String, Vec<u64>)], options: &RankHistogramOptions) -> PlotResult<Self> {
        let Some(first) = methods.first() else {
            return Err(empty("plot_rank_histograms: method list"));
        };
        let ranks = first.1.len();
        if ranks == 0 {
            return Err(empty(format!(
                "plot_rank_histograms: rank counts of '{}'",
                first.0
            )));
        }
        for (name, counts) in methods {
            if counts.len() != ranks {
                return Err(PlotError::LengthMismatch {
                    what: format!(
                        "plot_rank_histograms: rank counts of '{name}' (as many as of '{}')",
                        first.0
                    ),
                    expected: ranks,
                    got: counts.len(),
                });
            }
        }
        if !options.notes.is_empty() && options.notes.len() != methods.len() {
            return Err(PlotError::LengthMismatch {
                what: "RankHistogramOptions.notes (one per method)".into(),
                expected: methods.len(),
                got: options.notes.len(),
            });
        }
        let columns = match options.columns {
            Some(0) => {
                return Err(invalid(
                    "RankHistogramOptions.columns",
                    "must be at least 1",
                ));
            }
            Some(c) => c.min(methods.len()),
            None => methods.len().min(4),
        };
        let rows = methods.len().div_ceil(columns);
        let prepared: Vec<(String, Vec<f64>, Option<f64>)> = methods
            .iter()
            .map(|(name, counts)| {
                let total: u64 = counts.iter().sum();
                let heights = counts
                    .iter()
                    .map(|&c| {
                        if options.normalize {
                            if total > 0 {
                                c as f64 / total as f64
                            } else {
                                0.0
                            }
                        } else {
                            c as f64
                        }
                    })
                    .collect();
                let mean = (total > 0).then(|| {
                    counts
                        .iter()
                        .enumerate()
                        .map(|(r, &c)| (r + 1) as f64 * c as f64)
                        .sum::<f64>()
                        / total as f64
                });
                (name.clone(), heights, mean)
            })
            .collect();
        let max = prepared
            .iter()
            .flat_map(|m| m.1.iter().copied())
            .fold(0.0, f64::max);
        let top = if max > 0.0 { max * 1.12 } else { 1.0 };
        let y = Axis::with_range(false, 0.0, top);
        let y = Axis {
            ticks: super::axis::linear_ticks(0.0, top, 4),
            ..y
        };
        let title_height = if options.title.is_empty() { 0 } else { 44 };
        let width = options.panel_width.saturating_mul(columns as u32);
        let height = options.panel_height.saturating_mul(rows as u32) + title_height;
        if options.panel_width < 120 || options.panel_height < 100 {
            return Err(invalid(
                "RankHistogramOptions.panel_width/panel_height",
                "panels need at least 120x100 pixels",
            ));
        }
        check_figure_size("RankHistogramOptions panel size × grid", width, height)?;
        Ok(Self {
            methods: prepared,
            ranks,
            columns,
            rows,
            y,
            options: options.clone(),
            size: (width, height),
            title_height,
        })
    }
}

impl Figure for RankFigure {
    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult<()> {
        let o = &self.options;
        let area = if self.title_height > 0 {
            let style = bold_font(20.0)
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center));
            root.draw_text(
                &o.title,
                &style,
                (self.size.0 as i32 / 2, self.title_height as i32 / 2 + 4),
            )
            .map_err(draw_error)?;
            root.clone().shrink(
                (0, self.title_height),
                (self.size.0, self.size.1 - self.title_height),
            )
        } else {
            root.clone()
        };
        let panels = area.split_evenly((self.rows, self.columns));
        // Label every rank up to 12 ranks, then every k-th.
        let step = self.ranks.div_ceil(12);
        let x = Axis {
            log: false,
            lo: 0.4,
            hi: self.ranks as f64 + 0.6,
            ticks: (1..=self.ranks)
                .filter(|r| (r - 1) % step == 0)
                .map(|r| r as f64)
                .collect(),
            minor: Vec::new(),
        };
        let y_label = o.y_label.clone().unwrap_or_else(|| {
            if o.normalize {
                "frequency".into()
            } else {
                "count".into()
            }
        });
        for (i, (panel, (name, heights, mean))) in panels.iter().zip(&self.methods).enumerate() {
            let (row, column) = (i / self.columns, i % self.columns);
            let title = match mean {
                Some(m) if o.show_mean => format!("{name} (mean {m:.2})"),
                _ => name.clone(),
            };
            let bottom_row = row == self.rows - 1 || i + self.columns >= self.methods.len();
            let x_label = if bottom_row { o.x_label.as_str() } else { "" };
            let y_text = if column == 0 { y_label.as_str() } else { "" };
            let mut frame = Frame::new(&title, x_label, y_text, &x, &self.y);
            frame.x_grid = false;
            frame.y_label_area = Some(44);
            frame.reserve_descriptions = true;
            let mut chart = draw_frame(panel, &frame, 0.72)?;
            let color = series_color(i);
            chart
                .draw_series(heights.iter().enumerate().map(|(r, &h)| {
                    let centre = (r + 1) as f64;
                    Rectangle::new(
                        [(centre - 0.4, 0.0), (centre + 0.4, h.min(self.y.hi))],
                        color.filled(),
                    )
                }))
                .map_err(draw_error)?;
            if let (Some(m), true) = (mean, o.show_mean) {
                chart
                    .draw_series(std::iter::once(PathElement::new(
                        vec![(*m, 0.0), (*m, self.y.hi)],
                        RGBColor(70, 70, 70).stroke_width(1),
                    )))
                    .map_err(draw_error)?;
            }
            if let Some(note) = o.notes.get(i).filter(|n| !n.is_empty()) {
                // In the corner away from the mean line, which would cross the text.
                let right = mean.is_none_or(|m| m < (self.ranks as f64 + 1.0) / 2.0);
                let (h_pos, corner, offset) = if right {
                    (HPos::Right, x.hi, -6)
                } else {
                    (HPos::Left, x.lo, 6)
                };
                let style = font(12.0)
                    .color(&RGBColor(40, 40, 40))
                    .pos(Pos::new(h_pos, VPos::Top));
                chart
                    .draw_series(std::iter::once(
                        EmptyElement::at((corner, self.y.hi))
                            + Text::new(note.clone(), (offset, 4), style),
                    ))
                    .map_err(draw_error)?;
            }
        }
        Ok(())
    }
}

struct CiFigure {
    estimates: Vec<Estimate>,
    names: Vec<String>,
    options: BootstrapCiOptions,
    x: Axis,
    y: Axis,
    size: (u32, u32),
}

impl CiFigure {
    fn new(estimates: &[Estimate], options: &BootstrapCiOptions) -> PlotResult<Self> {
        if estimates.is_empty() {
            return Err(empty("plot_bootstrap_ci: estimate list"));
        }
        for e in estimates {
            let all = [e.low, e.value, e.high];
            if all.iter().all(|v| v.is_finite()) && !(e.low <= e.value && e.value <= e.high) {
                return Err(invalid(
                    &format!("estimate '{}'", e.name),
                    format!(
                        "need low <= value <= high, got {} <= {} <= {}",
                        e.low, e.value, e.high
                    ),
                ));
            }
        }
        let n = estimates.len();
        let height = options.height.unwrap_or(
            (110 + 40 * n as u32 + if options.title.is_empty() { 0 } else { 30 }).max(220),
        );
        check_figure_size("BootstrapCiOptions.width/height", options.width, height)?;
        let values = estimates
            .iter()
            .flat_map(|e| [e.low, e.value, e.high])
            .chain(options.reference);
        let x = Axis::fit(
            "BootstrapCiOptions.x_range",
            values,
            false,
            options.x_range,
            0.08,
        )?;
        // Rows from the top: the first estimate at y = n - 1.
        let names: Vec<String> = estimates.iter().rev().map(|e| e.name.clone()).collect();
        let y = Axis {
            log: false,
            lo: -0.6,
            hi: n as f64 - 0.4,
            ticks: (0..n).map(|i| i as f64).collect(),
            minor: Vec::new(),
        };
        Ok(Self {
            estimates: estimates.to_vec(),
            names,
            options: options.clone(),
            x,
            y,
            size: (options.width, height),
        })
    }
}

impl Figure for CiFigure {
    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult<()> {
        let o = &self.options;
        let measure = |text: &str, size: f64| -> PlotResult<u32> {
            Ok(root
                .estimate_text_size(text, &font(size).into_text_style(root))
                .map_err(draw_error)?
                .0)
        };
        let mut name_width = 0;
        for name in &self.names {
            name_width = name_width.max(measure(name, 14.0)?);
        }
        let texts: Vec<String> = self
            .estimates
            .iter()
            .map(
                |e| match (e.value.is_finite(), e.low.is_finite() && e.high.is_finite()) {
                    (true, true) => {
                        format!(
                            "{} [{}, {}]",
                            fixed(e.value, o.decimals),
                            fixed(e.low, o.decimals),
                            fixed(e.high, o.decimals)
                        )
                    }
                    (true, false) => fixed(e.value, o.decimals),
                    _ => "n/a".to_string(),
                },
            )
            .collect();
        let mut text_width = 0;
        if o.value_labels {
            for t in &texts {
                text_width = text_width.max(measure(t, 13.0)?);
            }
        }
        let mut frame = Frame::new(&o.title, &o.x_label, "", &self.x, &self.y);
        frame.y_grid = false;
        frame.y_names = Some(&self.names);
        frame.y_label_area = Some((name_width + 18).min(600));
        frame.right_margin = Some(if o.value_labels { text_width + 34 } else { 22 });
        let mut chart = draw_frame(root, &frame, 1.0)?;
        let n = self.estimates.len();
        let dark = RGBColor(40, 40, 40);
        if let Some(reference) = o
            .reference
            .filter(|r| r.is_finite() && *r >= self.x.lo && *r <= self.x.hi)
        {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(reference, self.y.lo), (reference, self.y.hi)],
                    RGBColor(150, 150, 150).stroke_width(2),
                )))
                .map_err(draw_error)?;
        }
        let label_style = font(13.0)
            .color(&RGBColor(50, 50, 50))
            .pos(Pos::new(HPos::Left, VPos::Center));
        for (i, e) in self.estimates.iter().enumerate() {
            let y = (n - 1 - i) as f64;
            let color = series_color(i);
            let clamp = |v: f64| v.clamp(self.x.lo, self.x.hi);
            if e.low.is_finite() && e.high.is_finite() {
                let (l, h) = (clamp(e.low), clamp(e.high));
                let cap = 0.15;
                let paths = [
                    vec![(l, y), (h, y)],
                    vec![(l, y - cap), (l, y + cap)],
                    vec![(h, y - cap), (h, y + cap)],
                ];
                chart
                    .draw_series(
                        paths
                            .into_iter()
                            .map(|p| PathElement::new(p, dark.stroke_width(2))),
                    )
                    .map_err(draw_error)?;
            }
            if e.value.is_finite() {
                chart
                    .draw_series(std::iter::once(Circle::new(
                        (clamp(e.value), y),
                        6,
                        color.filled(),
                    )))
                    .map_err(draw_error)?;
            }
            if o.value_labels {
                let (right, row) = chart.backend_coord(&(self.x.hi, y));
                root.draw_text(&texts[i], &label_style, (right + 14, row))
                    .map_err(draw_error)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::output::{assert_plot_file, render_rgb};
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn grouped_bars_write_png_and_svg_with_error_bars() {
        let dir = tempfile::tempdir().unwrap();
        let groups = names(&["D01", "D02", "D03", "D04"]);
        let series = vec![
            BarSeries {
                name: "scratch".into(),
                values: vec![0.73, 0.78, 0.78, 0.67],
                ci_low: vec![0.70, 0.75, 0.74, 0.62],
                ci_high: vec![0.76, 0.81, 0.82, 0.71],
            },
            BarSeries {
                name: "MAE".into(),
                values: vec![0.84, 0.80, f64::NAN, 0.69],
                ..Default::default()
            },
        ];
        let options = BarOptions {
            title: "mAP@0.1".into(),
            y_label: "mAP".into(),
            ..Default::default()
        };
        for ext in ["png", "svg"] {
            let path = dir.path().join(format!("bars.{ext}"));
            plot_bars_with_ci(&path, &groups, &series, &options).unwrap();
            assert_plot_file(&path, (520, 500));
        }
        let svg = std::fs::read_to_string(dir.path().join("bars.svg")).unwrap();
        assert!(svg.contains("D03") && svg.contains("0.84") && svg.contains("MAE"));
        let path = dir.path().join("plain.png");
        plot_bars(
            &path,
            &groups,
            &[("x".to_string(), vec![1.0, -2.0, 3.0, 4.0])],
            &BarOptions::default(),
        )
        .unwrap();
        assert_plot_file(&path, (520, 500));
    }

    #[test]
    fn bar_heights_follow_the_values() {
        let groups = names(&["a", "b"]);
        let series = vec![BarSeries {
            name: String::new(),
            values: vec![1.0, 2.0],
            ..Default::default()
        }];
        let options = BarOptions {
            value_labels: false,
            y_range: Some((0.0, 2.0)),
            ..Default::default()
        };
        let image = render_rgb(&BarFigure::new(&groups, &series, &options).unwrap()).unwrap();
        let blue = [31, 119, 180];
        // Count the bar pixels per column; the second bar is twice as tall as the first.
        let column_height = |x: u32| {
            (0..image.height)
                .filter(|&y| image.get(x, y) == blue)
                .count()
        };
        let heights: Vec<usize> = (0..image.width)
            .map(column_height)
            .filter(|&h| h > 0)
            .collect();
        let (short, tall) = (heights.iter().min().unwrap(), heights.iter().max().unwrap());
        assert!(
            (*tall as f64 / *short as f64 - 2.0).abs() < 0.03,
            "{short} vs {tall}"
        );
    }

    #[test]
    fn bar_errors_name_the_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.png");
        let groups = names(&["a", "b"]);
        let err = plot_bars(
            &path,
            &groups,
            &[("MT".to_string(), vec![1.0])],
            &BarOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("'MT' values"), "{err}");
        let bad_ci = [BarSeries {
            name: "S3D".into(),
            values: vec![1.0, 2.0],
            ci_low: vec![0.5, 1.5],
            ..Default::default()
        }];
        let err = plot_bars_with_ci(&path, &groups, &bad_ci, &BarOptions::default()).unwrap_err();
        assert!(err.to_string().contains("S3D"), "{err}");
        assert!(matches!(
            plot_bars(&path, &[], &[], &BarOptions::default()),
            Err(PlotError::EmptyInput { .. })
        ));
        let err = plot_bars(
            dir.path().join("b.gif"),
            &groups,
            &[("a".into(), vec![1.0, 2.0])],
            &BarOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, PlotError::UnsupportedFormat { .. }));
    }

    #[test]
    fn rank_histograms_share_axes_and_write_files() {
        let dir = tempfile::tempdir().unwrap();
        let methods: Vec<(String, Vec<u64>)> = vec![
            ("nnDet default".into(), vec![5, 40, 155, 300, 500]),
            ("fixed".into(), vec![20, 180, 400, 300, 100]),
            ("MT".into(), vec![150, 400, 300, 100, 50]),
            ("MAE".into(), vec![700, 250, 40, 10, 0]),
            ("VoCo".into(), vec![125, 130, 105, 290, 350]),
        ];
        let options = RankHistogramOptions {
            title: "D01: rank distribution (1000 bootstraps)".into(),
            ..Default::default()
        };
        let figure = RankFigure::new(&methods, &options).unwrap();
        assert_eq!((figure.columns, figure.rows), (4, 2));
        assert_eq!(figure.size, (4 * 280, 2 * 210 + 44));
        // Mean rank of MAE: (700·1 + 250·2 + 40·3 + 10·4) / 1000 = 1.36.
        assert!((figure.methods[3].2.unwrap() - 1.36).abs() < 1e-12);
        assert!((figure.methods[3].1[0] - 0.7).abs() < 1e-12);
        for ext in ["png", "svg"] {
            let path = dir.path().join(format!("ranks.{ext}"));
            plot_rank_histograms(&path, &methods, &options).unwrap();
            assert_plot_file(&path, (1120, 464));
        }
        let svg = std::fs::read_to_string(dir.path().join("ranks.svg")).unwrap();
        assert!(svg.contains("MAE (mean 1.36)"));
        let mismatched = vec![
            ("a".to_string(), vec![1, 2, 3]),
            ("b".to_string(), vec![1, 2]),
        ];
        let err =
            plot_rank_histograms(dir.path().join("x.png"), &mismatched, &options).unwrap_err();
        assert!(err.to_string().contains("'b'"), "{err}");
        assert!(plot_rank_histograms(dir.path().join("x.png"), &[], &options).is_err());
    }

    #[test]
    fn bootstrap_ci_forest_plot() {
        let dir = tempfile::tempdir().unwrap();
        let estimates = vec![
            Estimate::new("ResEnc-DefDETR fixed", 0.781, 0.752, 0.809),
            Estimate::new("ResEnc-DefDETR MAE", 0.812, 0.790, 0.833),
            Estimate::new("VoCo", f64::NAN, f64::NAN, f64::NAN),
        ];
        let options = BootstrapCiOptions {
            title: "LUNA16 CPM".into(),
            x_label: "CPM".into(),
            reference: Some(0.781),
            ..Default::default()
        };
        for ext in ["png", "svg"] {
            let path = dir.path().join(format!("ci.{ext}"));
            plot_bootstrap_ci(&path, &estimates, &options).unwrap();
            assert_plot_file(&path, (760, 220));
        }
        let svg = std::fs::read_to_string(dir.path().join("ci.svg")).unwrap();
        assert!(svg.contains("0.812 [0.790, 0.833]"));
        let bad = [Estimate::new("MG", 0.9, 0.5, 0.8)];
        let err = plot_bootstrap_ci(dir.path().join("x.png"), &bad, &options).unwrap_err();
        assert!(err.to_string().contains("'MG'"), "{err}");
    }
}
