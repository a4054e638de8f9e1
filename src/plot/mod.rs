//! Figures for tutorials and papers: volume slices with boxes, line charts, grouped bars,
//! FROC and precision-recall curves, bootstrap rank histograms and confidence intervals,
//! plus aligned plain-text tables.
//!
//! Every `plot_*` function writes one file; the format follows the extension (`.png` or
//! `.svg`, case-insensitive) and the write is atomic (a temporary sibling, then a rename).
//! Text uses the embedded DejaVu Sans font (`assets/`, licence in `assets/DejaVu-LICENSE.txt`),
//! so no system fonts are needed; SVG files name the `sans-serif` family and let the viewer
//! choose the font.
//!
//! Inputs are plain Rust values (the metrics module's results are passed as vectors), every
//! options struct has sensible defaults and can be deserialised from a script map
//! (unknown keys are rejected). NaN points are skipped, never drawn and never a panic.

mod axis;
mod bars;
mod lines;
mod output;
mod panels;
mod slice;
pub mod table;
mod text;

pub use axis::format_number;
pub use bars::{
    BarOptions, BarSeries, BootstrapCiOptions, Estimate, RankHistogramOptions, plot_bars,
    plot_bars_with_ci, plot_bootstrap_ci, plot_rank_histograms,
};
pub use lines::{
    FrocOptions, LegendPosition, LineOptions, PrOptions, Series, plot_froc, plot_lines, plot_pr,
};
pub use output::{OutputFormat, RgbImage};
pub use panels::{Panel, plot_panels};
pub use slice::{
    BoxColors, SliceOptions, box_crosses_slice, boxes_in_slice, extract_slice, plot_slice,
    plot_slice_values, plot_volume_slice, project_box, render_slice_rgb, render_slice_svg,
    slice_axes, slice_pixel_aspect,
};
pub use table::format_table;

use std::path::PathBuf;

/// Everything that can go wrong while making a figure; each message names the file,
/// series or option concerned.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The output path's extension is neither `.png` nor `.svg`.
    #[error("cannot write plot '{path}': unsupported extension, use .png or .svg")]
    UnsupportedFormat {
        /// The requested output path.
        path: PathBuf,
    },
    /// Nothing to draw (no series, no groups, an empty slice, ...).
    #[error("{what}: empty input")]
    EmptyInput {
        /// What was empty, e.g. `plot_lines: series list`.
        what: String,
    },
    /// Two inputs that must have the same length do not.
    #[error("{what}: expected {expected} values but got {got}")]
    LengthMismatch {
        /// Which input, e.g. `series 'loss': y (against x)`.
        what: String,
        /// The length required.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// An option or input value is out of its valid domain.
    #[error("invalid {field}: {reason}")]
    InvalidOption {
        /// The option or input, e.g. `SliceOptions.window`.
        field: String,
        /// Why it is invalid.
        reason: String,
    },
    /// Plotters failed while drawing (should not happen with valid inputs).
    #[error("drawing '{path}' failed: {message}")]
    Draw {
        /// The figure being drawn.
        path: PathBuf,
        /// The drawing backend's message.
        message: String,
    },
    /// Writing the output file failed.
    #[error("cannot write plot '{path}': {source}")]
    Io {
        /// The output path.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
}

/// Result type of the plot module.
pub type PlotResult<T> = Result<T, PlotError>;

/// A drawing failure while the output path is not known yet; `output` fills it in.
pub(crate) fn draw_error<E: std::fmt::Display>(error: E) -> PlotError {
    PlotError::Draw {
        path: PathBuf::new(),
        message: error.to_string(),
    }
}

pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> PlotError {
    PlotError::InvalidOption {
        field: field.to_string(),
        reason: reason.into(),
    }
}

pub(crate) fn empty(what: impl Into<String>) -> PlotError {
    PlotError::EmptyInput { what: what.into() }
}
