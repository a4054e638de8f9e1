//! One 2D slice of a volume in grayscale with ground-truth and predicted boxes.
//!
//! # Conventions
//! - Axes: `axis` 0, 1, 2 slices along D, H, W. The slice shows the two remaining axes in
//!   volume order: rows × columns = H × W (axis 0), D × W (axis 1), D × H (axis 2).
//!   Row 0 is at the top (`flip_vertical` puts it at the bottom); there is no anatomical
//!   reorientation: the picture is the array as stored.
//! - Voxel `i` spans `[i, i + 1)` along every axis, matching half-open mask boxes
//!   (`min`, `max + 1`). A box `[d0, h0, w0, d1, h1, w1]` crosses slice `index` on axis `a`
//!   when `box_min[a] <= index + 0.5 < box_max[a]` (it contains the voxel centre); its
//!   projection on the two other axes is drawn.
//! - Box outlines are drawn just *outside* the box, so every voxel inside stays visible.
//! - Anisotropic spacing: `pixel_aspect` = displayed height / width of one pixel
//!   (row spacing / column spacing; [`slice_pixel_aspect`] computes it). Pixels are only
//!   ever enlarged, never dropped.
//! - Small slices are upscaled by an integer factor (nearest neighbour) to at least
//!   `min_size` pixels on the long side; 512² slices are drawn 1:1. Pixels are written
//!   straight into the bitmap; SVG output embeds the slice as a PNG `<image>` (at the slice's
//!   own resolution, scaled by the viewer with `image-rendering: pixelated`) and draws boxes,
//!   labels and text as vectors.
//! - Window: `window = (center, width)` maps `center ± width/2` to black..white; by default
//!   the `percentiles` (1st and 99th) of the finite voxels. NaN voxels are black.

use super::axis::font;
use super::output::{Figure, RgbImage, Underlay, render_rgb, render_svg, write_figure};
use super::{PlotError, PlotResult, draw_error, empty, invalid};
use crate::util::percentile;
use crate::volume::Volume;
use crate::volume::boxes::{Box3, validate};
use ndarray::{Array2, ArrayView2, Axis as NdAxis};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Options of [`plot_slice`] and [`plot_volume_slice`]: window, boxes, labels, size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SliceOptions {
    /// Figure title (empty: none).
    pub title: String,
    /// Channel of the volume ([`plot_volume_slice`] only).
    pub channel: usize,
    /// Slicing axis: 0 = D (axial for RAS-like volumes), 1 = H, 2 = W.
    pub axis: usize,
    /// Slice index along `axis`; [`plot_volume_slice`] defaults to the middle slice.
    /// Needed by [`plot_slice`] to decide which boxes cross the slice.
    pub index: Option<usize>,
    /// Intensity window `(center, width)`; default from `percentiles`.
    pub window: Option<(f64, f64)>,
    /// Percentiles (0–100) of the finite voxels mapped to black and white when `window` is unset.
    pub percentiles: (f64, f64),
    /// Displayed height / width of one pixel; [`plot_volume_slice`] derives it from the spacing.
    pub pixel_aspect: Option<f64>,
    /// Integer upscaling factor (1–32); default: the smallest reaching `min_size`.
    pub scale: Option<u32>,
    /// Smallest long side of the displayed slice in pixels when `scale` is unset.
    pub min_size: u32,
    /// Show row 0 at the bottom instead of the top.
    pub flip_vertical: bool,
    /// Ground-truth boxes `[d0, h0, w0, d1, h1, w1]` in voxels.
    pub gt_boxes: Vec<Box3>,
    /// Class of each ground-truth box (empty: unlabelled).
    pub gt_classes: Vec<usize>,
    /// Predicted boxes `[d0, h0, w0, d1, h1, w1]` in voxels.
    pub pred_boxes: Vec<Box3>,
    /// Score of each predicted box (empty: no scores shown).
    pub pred_scores: Vec<f64>,
    /// Class of each predicted box (empty: unlabelled).
    pub pred_classes: Vec<usize>,
    /// Class names, indexed by class; without them classes are shown as numbers.
    pub class_names: Vec<String>,
    /// Predictions scoring below this are not drawn.
    pub score_threshold: f64,
    /// At most this many predictions (the highest scoring) are drawn.
    pub max_predictions: usize,
    /// Draw class / score labels next to the boxes.
    pub labels: bool,
    /// Draw the colour legend and window information under the slice.
    pub legend: bool,
    /// Box outline width in pixels.
    pub line_width: u32,
    /// Outline colour of ground-truth boxes (RGB).
    pub gt_color: [u8; 3],
    /// Outline colour of predicted boxes (RGB).
    pub pred_color: [u8; 3],
}

impl Default for SliceOptions {
    fn default() -> Self {
        Self {
            title: String::new(),
            channel: 0,
            axis: 0,
            index: None,
            window: None,
            percentiles: (1.0, 99.0),
            pixel_aspect: None,
            scale: None,
            min_size: 384,
            flip_vertical: false,
            gt_boxes: Vec::new(),
            gt_classes: Vec::new(),
            pred_boxes: Vec::new(),
            pred_scores: Vec::new(),
            pred_classes: Vec::new(),
            class_names: Vec::new(),
            score_threshold: 0.0,
            max_predictions: 50,
            labels: true,
            legend: true,
            line_width: 2,
            gt_color: BoxColors::GT,
            pred_color: BoxColors::PREDICTION,
        }
    }
}

/// The default box colours of slice figures.
pub struct BoxColors;

impl BoxColors {
    /// Ground truth: green.
    pub const GT: [u8; 3] = [0, 220, 0];
    /// Predictions: orange-red.
    pub const PREDICTION: [u8; 3] = [255, 64, 0];
}

/// The (row axis, column axis) of a slice along `axis` (0 = D, 1 = H, 2 = W).
pub fn slice_axes(axis: usize) -> PlotResult<(usize, usize)> {
    match axis {
        0 => Ok((1, 2)),
        1 => Ok((0, 2)),
        2 => Ok((0, 1)),
        _ => Err(invalid(
            "SliceOptions.axis",
            format!("{axis} is not 0 (D), 1 (H) or 2 (W)"),
        )),
    }
}

/// Displayed height / width of one pixel of a slice along `axis`, from spacing `[sd, sh, sw]`.
pub fn slice_pixel_aspect(spacing: [f64; 3], axis: usize) -> PlotResult<f64> {
    let (r, c) = slice_axes(axis)?;
    let aspect = spacing[r] / spacing[c];
    if aspect.is_finite() && aspect > 0.0 {
        Ok(aspect)
    } else {
        Err(invalid(
            "spacing",
            format!("{spacing:?} gives no positive pixel aspect"),
        ))
    }
}

/// Whether box `b` crosses slice `index` along `axis`: `b_min <= index + 0.5 < b_max`.
pub fn box_crosses_slice(b: &Box3, axis: usize, index: usize) -> bool {
    let centre = index as f64 + 0.5;
    axis < 3 && b[axis] <= centre && centre < b[axis + 3]
}

/// The 2D rectangle `[row0, col0, row1, col1]` (voxels) where box `b` crosses slice `index`
/// along `axis`, or None if it does not cross it.
pub fn project_box(b: &Box3, axis: usize, index: usize) -> Option<[f64; 4]> {
    let (r, c) = slice_axes(axis).ok()?;
    box_crosses_slice(b, axis, index).then(|| [b[r], b[c], b[r + 3], b[c + 3]])
}

/// The boxes crossing slice `index` along `axis`, as `(box index, [row0, col0, row1, col1])`.
pub fn boxes_in_slice(boxes: &[Box3], axis: usize, index: usize) -> Vec<(usize, [f64; 4])> {
    boxes
        .iter()
        .enumerate()
        .filter_map(|(i, b)| Some((i, project_box(b, axis, index)?)))
        .collect()
}

/// Copy slice `index` of `channel` along `axis` (0 = D, 1 = H, 2 = W) out of a volume.
pub fn extract_slice(
    volume: &Volume,
    channel: usize,
    axis: usize,
    index: usize,
) -> PlotResult<Array2<f32>> {
    let [channels, d, h, w] = volume.shape();
    slice_axes(axis)?;
    if channel >= channels {
        return Err(invalid(
            "channel",
            format!("{channel} is out of range for a volume with {channels} channel(s)"),
        ));
    }
    let length = [d, h, w][axis];
    if index >= length {
        return Err(invalid(
            "slice index",
            format!(
                "{index} is out of range for axis {} of length {length}",
                ["D", "H", "W"][axis]
            ),
        ));
    }
    Ok(volume
        .data
        .index_axis(NdAxis(0), channel)
        .index_axis(NdAxis(axis), index)
        .to_owned())
}

/// Draw slice `options.index` (default: the middle) of a volume with its boxes; the pixel
/// aspect follows the volume's spacing unless `options.pixel_aspect` is set.
pub fn plot_volume_slice(
    path: impl AsRef<Path>,
    volume: &Volume,
    options: &SliceOptions,
) -> PlotResult<()> {
    let (slice, options) = volume_slice(volume, options)?;
    plot_slice(path, slice.view(), &options)
}

fn volume_slice(
    volume: &Volume,
    options: &SliceOptions,
) -> PlotResult<(Array2<f32>, SliceOptions)> {
    slice_axes(options.axis)?;
    let [_, d, h, w] = volume.shape();
    let index = options.index.unwrap_or([d, h, w][options.axis] / 2);
    let slice = extract_slice(volume, options.channel, options.axis, index)?;
    let mut options = options.clone();
    options.index = Some(index);
    if options.pixel_aspect.is_none() {
        options.pixel_aspect = Some(slice_pixel_aspect(volume.spacing, options.axis)?);
    }
    Ok((slice, options))
}

/// Draw a 2D slice (rows × columns) in grayscale with boxes into a `.png` or `.svg` file.
pub fn plot_slice(
    path: impl AsRef<Path>,
    slice: ArrayView2<f32>,
    options: &SliceOptions,
) -> PlotResult<()> {
    let figure = SliceFigure::new(slice, options)?;
    write_figure(path.as_ref(), &figure)
}

/// [`plot_slice`] for a flat row-major buffer of `rows × cols` values.
pub fn plot_slice_values(
    path: impl AsRef<Path>,
    values: &[f32],
    rows: usize,
    cols: usize,
    options: &SliceOptions,
) -> PlotResult<()> {
    if values.len() != rows * cols {
        return Err(PlotError::LengthMismatch {
            what: format!("plot_slice_values: values of a {rows}x{cols} slice"),
            expected: rows * cols,
            got: values.len(),
        });
    }
    let view = ArrayView2::from_shape((rows, cols), values)
        .map_err(|e| invalid("slice", e.to_string()))?;
    plot_slice(path, view, options)
}

/// Render a slice figure to RGB pixels (what [`plot_slice`] writes as PNG).
pub fn render_slice_rgb(slice: ArrayView2<f32>, options: &SliceOptions) -> PlotResult<RgbImage> {
    render_rgb(&SliceFigure::new(slice, options)?)
}

/// Render a slice figure as an SVG document (what [`plot_slice`] writes as SVG).
pub fn render_slice_svg(slice: ArrayView2<f32>, options: &SliceOptions) -> PlotResult<String> {
    render_svg(&SliceFigure::new(slice, options)?)
}

/// A box to draw, in slice voxel coordinates.
#[derive(Debug, Clone, PartialEq)]
struct SliceBox {
    rect: [f64; 4],
    color: RGBColor,
    label: String,
    label_below: bool,
}

/// Where things go on the figure (all in pixels).
#[derive(Debug, Clone, PartialEq)]
struct Layout {
    rows: usize,
    cols: usize,
    display_width: u32,
    display_height: u32,
    left: i32,
    top: i32,
    width: u32,
    height: u32,
}

impl Layout {
    /// Figure column of the left edge of (continuous) slice column `col`.
    fn x(&self, col: f64) -> i32 {
        self.left + (col * self.display_width as f64 / self.cols as f64 - 1e-9).ceil() as i32
    }
    /// Figure row of the top edge of (continuous) displayed row `row`.
    fn y(&self, row: f64) -> i32 {
        self.top + (row * self.display_height as f64 / self.rows as f64 - 1e-9).ceil() as i32
    }
}

struct SliceFigure {
    image: RgbImage,
    layout: Layout,
    boxes: Vec<SliceBox>,
    title: String,
    legend: Option<Legend>,
    line_width: i32,
}

struct Legend {
    gt: Option<RGBColor>,
    prediction: Option<(RGBColor, String)>,
    info: String,
}

const PAD: u32 = 16;

impl SliceFigure {
    fn new(slice: ArrayView2<f32>, options: &SliceOptions) -> PlotResult<Self> {
        let (rows, cols) = slice.dim();
        if rows == 0 || cols == 0 {
            return Err(empty(format!("plot_slice: a {rows}x{cols} slice")));
        }
        slice_axes(options.axis)?;
        let (lo, hi) = window_bounds(slice, options)?;
        let layout = layout(rows, cols, options)?;
        let image = grayscale(slice, lo, hi, options.flip_vertical);
        let boxes = slice_boxes(options, rows)?;
        let legend = options.legend.then(|| {
            let axis_name = ["d", "h", "w"][options.axis];
            let mut info = String::new();
            if let Some(index) = options.index {
                info.push_str(&format!("{axis_name} = {index}   "));
            }
            let (center, width) = ((lo + hi) / 2.0, hi - lo);
            info.push_str(&format!("W {}  L {}", short(width), short(center)));
            Legend {
                gt: (!options.gt_boxes.is_empty()).then(|| rgb(options.gt_color)),
                prediction: (!options.pred_boxes.is_empty()).then(|| {
                    let text = if options.score_threshold > 0.0 && !options.pred_scores.is_empty() {
                        format!("prediction ≥ {}", short(options.score_threshold))
                    } else {
                        "prediction".to_string()
                    };
                    (rgb(options.pred_color), text)
                }),
                info,
            }
        });
        Ok(Self {
            image,
            layout,
            boxes,
            title: options.title.clone(),
            legend,
            line_width: options.line_width.clamp(1, 16) as i32,
        })
    }
}

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// Up to 4 significant digits: enough for window values and thresholds.
fn short(value: f64) -> String {
    super::format_number(super::axis::round_significant(value, 4))
}

/// The intensities mapped to black and white.
fn window_bounds(slice: ArrayView2<f32>, options: &SliceOptions) -> PlotResult<(f64, f64)> {
    if let Some((center, width)) = options.window {
        if !(center.is_finite() && width.is_finite() && width > 0.0) {
            return Err(invalid(
                "SliceOptions.window",
                format!("({center}, {width}): need a finite center and width > 0"),
            ));
        }
        return Ok((center - width / 2.0, center + width / 2.0));
    }
    let (p_lo, p_hi) = options.percentiles;
    if !(0.0..=100.0).contains(&p_lo) || !(0.0..=100.0).contains(&p_hi) || p_lo >= p_hi {
        return Err(invalid(
            "SliceOptions.percentiles",
            format!("({p_lo}, {p_hi}): need 0 <= low < high <= 100"),
        ));
    }
    let mut values: Vec<f32> = slice.iter().copied().filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return Ok((0.0, 1.0));
    }
    values.sort_unstable_by(f32::total_cmp);
    let lo = percentile(&values, p_lo);
    let hi = percentile(&values, p_hi);
    // A flat slice shows mid gray instead of dividing by zero.
    Ok(if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    })
}

fn grayscale(slice: ArrayView2<f32>, lo: f64, hi: f64, flip: bool) -> RgbImage {
    let (rows, cols) = slice.dim();
    let mut image = RgbImage::filled(cols as u32, rows as u32, [0, 0, 0]);
    let scale = 255.0 / (hi - lo);
    for (r, row) in slice.outer_iter().enumerate() {
        let out_row = if flip { rows - 1 - r } else { r };
        for (c, &v) in row.iter().enumerate() {
            let gray = if v.is_finite() {
                ((v as f64 - lo) * scale).clamp(0.0, 255.0).round() as u8
            } else {
                0
            };
            let i = (out_row * cols + c) * 3;
            image.pixels[i..i + 3].copy_from_slice(&[gray, gray, gray]);
        }
    }
    image
}

fn layout(rows: usize, cols: usize, options: &SliceOptions) -> PlotResult<Layout> {
    let aspect = options.pixel_aspect.unwrap_or(1.0);
    if !(aspect.is_finite() && (0.01..=100.0).contains(&aspect)) {
        return Err(invalid(
            "SliceOptions.pixel_aspect",
            format!("{aspect} is outside 0.01..=100"),
        ));
    }
    // Enlarge the finer axis so no pixel is dropped.
    let (row_factor, col_factor) = if aspect >= 1.0 {
        (aspect, 1.0)
    } else {
        (1.0, 1.0 / aspect)
    };
    let base_width = cols as f64 * col_factor;
    let base_height = rows as f64 * row_factor;
    let scale = match options.scale {
        Some(s) if (1..=32).contains(&s) => s,
        Some(s) => {
            return Err(invalid(
                "SliceOptions.scale",
                format!("{s} is outside 1..=32"),
            ));
        }
        None => {
            ((options.min_size as f64 / base_width.max(base_height)).ceil() as u32).clamp(1, 32)
        }
    };
    let display_width = (base_width * scale as f64).round().max(1.0) as u32;
    let display_height = (base_height * scale as f64).round().max(1.0) as u32;
    if display_width > 8000 || display_height > 8000 {
        return Err(invalid(
            "SliceOptions.scale",
            format!(
                "the slice would be {display_width}x{display_height} pixels (at most 8000 per side)"
            ),
        ));
    }
    let title_height = if options.title.is_empty() { PAD } else { 44 };
    let legend_height = if options.legend { 40 } else { PAD };
    let min_width = if options.legend { 440 } else { 0 };
    let width = (display_width + 2 * PAD).max(min_width);
    Ok(Layout {
        rows,
        cols,
        display_width,
        display_height,
        left: ((width - display_width) / 2) as i32,
        top: title_height as i32,
        width,
        height: title_height + display_height + legend_height,
    })
}

fn class_text(class: usize, names: &[String]) -> String {
    names
        .get(class)
        .cloned()
        .unwrap_or_else(|| format!("class {class}"))
}

/// The boxes crossing the slice, in display order (ground truth, then predictions by
/// increasing score so the best is on top), as displayed-row rectangles.
fn slice_boxes(options: &SliceOptions, rows: usize) -> PlotResult<Vec<SliceBox>> {
    let has_boxes = !options.gt_boxes.is_empty() || !options.pred_boxes.is_empty();
    let index = match options.index {
        Some(i) => i,
        None if has_boxes => {
            return Err(invalid(
                "SliceOptions.index",
                "the slice index is needed to draw boxes",
            ));
        }
        None => return Ok(Vec::new()),
    };
    for (field, len) in [("gt_classes", options.gt_classes.len())] {
        if len != 0 && len != options.gt_boxes.len() {
            return Err(PlotError::LengthMismatch {
                what: format!("SliceOptions.{field} (one per gt box)"),
                expected: options.gt_boxes.len(),
                got: len,
            });
        }
    }
    for (field, len) in [
        ("pred_scores", options.pred_scores.len()),
        ("pred_classes", options.pred_classes.len()),
    ] {
        if len != 0 && len != options.pred_boxes.len() {
            return Err(PlotError::LengthMismatch {
                what: format!("SliceOptions.{field} (one per predicted box)"),
                expected: options.pred_boxes.len(),
                got: len,
            });
        }
    }
    let flip = |rect: [f64; 4]| {
        if options.flip_vertical {
            [
                rows as f64 - rect[2],
                rect[1],
                rows as f64 - rect[0],
                rect[3],
            ]
        } else {
            rect
        }
    };
    let mut out = Vec::new();
    for (i, b) in options.gt_boxes.iter().enumerate() {
        validate(b).map_err(|reason| invalid(&format!("SliceOptions.gt_boxes[{i}]"), reason))?;
        if let Some(rect) = project_box(b, options.axis, index) {
            let label = match options.gt_classes.get(i) {
                Some(&c) if options.labels => class_text(c, &options.class_names),
                _ => String::new(),
            };
            out.push(SliceBox {
                rect: flip(rect),
                color: rgb(options.gt_color),
                label,
                label_below: true,
            });
        }
    }
    let mut predictions = Vec::new();
    for (i, b) in options.pred_boxes.iter().enumerate() {
        validate(b).map_err(|reason| invalid(&format!("SliceOptions.pred_boxes[{i}]"), reason))?;
        let score = options.pred_scores.get(i).copied();
        // Below the threshold, or NaN: not drawn.
        if let Some(s) = score
            && (s.is_nan() || s < options.score_threshold)
        {
            continue;
        }
        predictions.push((i, score));
    }
    predictions.sort_by(|a, b| {
        b.1.unwrap_or(0.0)
            .total_cmp(&a.1.unwrap_or(0.0))
            .then(a.0.cmp(&b.0))
    });
    predictions.truncate(options.max_predictions);
    predictions.reverse();
    for (i, score) in predictions {
        if let Some(rect) = project_box(&options.pred_boxes[i], options.axis, index) {
            let mut parts = Vec::new();
            if options.labels {
                if let Some(&c) = options.pred_classes.get(i) {
                    parts.push(class_text(c, &options.class_names));
                }
                if let Some(s) = score {
                    parts.push(format!("{s:.2}"));
                }
            }
            out.push(SliceBox {
                rect: flip(rect),
                color: rgb(options.pred_color),
                label: parts.join(" "),
                label_below: false,
            });
        }
    }
    Ok(out)
}

/// Fill the half-open pixel rectangle `[x0, x1) × [y0, y1)`.
fn fill<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
    color: RGBColor,
) -> PlotResult<()> {
    if x1 <= x0 || y1 <= y0 {
        return Ok(());
    }
    root.draw(&Rectangle::new([(x0, y0), (x1, y1)], color.filled()))
        .map_err(draw_error)
}

impl Figure for SliceFigure {
    fn size(&self) -> (u32, u32) {
        (self.layout.width, self.layout.height)
    }

    fn underlay(&self) -> Option<Underlay> {
        Some(Underlay {
            image: self.image.clone(),
            left: self.layout.left,
            top: self.layout.top,
            display_width: self.layout.display_width,
            display_height: self.layout.display_height,
        })
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult<()> {
        let l = &self.layout;
        let t = self.line_width;
        let label_font = font(13.0);
        for b in &self.boxes {
            // Clip to the slice: a box reaching past the border is drawn up to it.
            let r0 = b.rect[0].clamp(0.0, l.rows as f64);
            let r1 = b.rect[2].clamp(0.0, l.rows as f64);
            let c0 = b.rect[1].clamp(0.0, l.cols as f64);
            let c1 = b.rect[3].clamp(0.0, l.cols as f64);
            if r1 <= r0 || c1 <= c0 {
                continue;
            }
            let (x0, x1, y0, y1) = (l.x(c0), l.x(c1), l.y(r0), l.y(r1));
            fill(root, x0 - t, y0 - t, x1 + t, y0, b.color)?;
            fill(root, x0 - t, y1, x1 + t, y1 + t, b.color)?;
            fill(root, x0 - t, y0, x0, y1, b.color)?;
            fill(root, x1, y0, x1 + t, y1, b.color)?;
            if !b.label.is_empty() {
                let (text_width, _) = root
                    .estimate_text_size(&b.label, &label_font.clone().into_text_style(root))
                    .map_err(draw_error)?;
                let (box_width, box_height) = (text_width as i32 + 8, 17);
                // Prediction labels go above the box and ground-truth labels below it, so
                // the two do not cover each other when a prediction matches its target.
                let above = y0 - t - box_height;
                let below = y1 + t;
                let mut ly = if b.label_below { below } else { above };
                if ly < 0 {
                    ly = below;
                } else if ly + box_height > l.height as i32 {
                    ly = above;
                }
                let mut lx = x0 - t;
                lx = lx.min(l.width as i32 - box_width).max(0);
                ly = ly.min(l.height as i32 - box_height).max(0);
                fill(root, lx, ly, lx + box_width, ly + box_height, b.color)?;
                let style = label_font
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Left, VPos::Center));
                root.draw_text(&b.label, &style, (lx + 4, ly + box_height / 2))
                    .map_err(draw_error)?;
            }
        }
        if !self.title.is_empty() {
            let style = super::axis::bold_font(19.0)
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Center));
            root.draw_text(&self.title, &style, (l.width as i32 / 2, l.top / 2 + 2))
                .map_err(draw_error)?;
        }
        if let Some(legend) = &self.legend {
            let y = l.top + l.display_height as i32 + 20;
            let text_style = font(14.0)
                .color(&RGBColor(40, 40, 40))
                .pos(Pos::new(HPos::Left, VPos::Center));
            let mut x = PAD as i32;
            let mut entries: Vec<(RGBColor, &str)> = Vec::new();
            if let Some(color) = legend.gt {
                entries.push((color, "ground truth"));
            }
            if let Some((color, text)) = &legend.prediction {
                entries.push((*color, text));
            }
            for (color, text) in entries {
                // An outlined square, like the boxes on the image.
                fill(root, x, y - 7, x + 14, y + 7, color)?;
                fill(root, x + 3, y - 4, x + 11, y + 4, WHITE)?;
                root.draw_text(text, &text_style, (x + 20, y))
                    .map_err(draw_error)?;
                let (w, _) = root
                    .estimate_text_size(text, &font(14.0).into_text_style(root))
                    .map_err(draw_error)?;
                x += 20 + w as i32 + 18;
            }
            let info_style = font(13.0)
                .color(&RGBColor(90, 90, 90))
                .pos(Pos::new(HPos::Right, VPos::Center));
            root.draw_text(&legend.info, &info_style, (l.width as i32 - PAD as i32, y))
                .map_err(draw_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
