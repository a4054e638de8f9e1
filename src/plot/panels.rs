//! A row of titled grayscale panels in one PNG: what a pre-training method sees and produces
//! (input, mask, reconstruction, ...), side by side.

use std::path::Path;

use ndarray::Array2;

use super::output::RgbImage;
use super::slice::{SliceOptions, render_slice_rgb};
use super::{PlotError, PlotResult};

/// One panel: a 2D image, its title and its intensity window.
#[derive(Clone, Debug, PartialEq)]
pub struct Panel {
    /// Title above the image.
    pub title: String,
    /// The image (rows × columns).
    pub image: Array2<f32>,
    /// `(center, width)` of the grayscale window; `None`: the 1–99 % percentiles.
    pub window: Option<(f64, f64)>,
}

impl Panel {
    /// A panel windowed on its own percentiles.
    pub fn new(title: impl Into<String>, image: Array2<f32>) -> Self {
        Self {
            title: title.into(),
            image,
            window: None,
        }
    }

    /// A panel whose window maps `[low, high]` to black and white.
    pub fn with_range(title: impl Into<String>, image: Array2<f32>, low: f64, high: f64) -> Self {
        Self {
            title: title.into(),
            image,
            window: Some(((low + high) / 2.0, (high - low).max(1e-12))),
        }
    }
}

/// Render panels side by side (each scaled to about `panel_size` pixels) into a PNG.
pub fn plot_panels(path: impl AsRef<Path>, panels: &[Panel], panel_size: u32) -> PlotResult<()> {
    let path = path.as_ref();
    if panels.is_empty() {
        return Err(PlotError::InvalidOption {
            field: "panels".into(),
            reason: "at least one panel is needed".into(),
        });
    }
    let rendered: Vec<RgbImage> = panels
        .iter()
        .map(|p| {
            render_slice_rgb(
                p.image.view(),
                &SliceOptions {
                    title: p.title.clone(),
                    window: p.window,
                    min_size: panel_size,
                    legend: false,
                    ..SliceOptions::default()
                },
            )
        })
        .collect::<PlotResult<_>>()?;
    let gap = 8u32;
    let width = rendered.iter().map(|r| r.width).sum::<u32>() + gap * (rendered.len() as u32 - 1);
    let height = rendered.iter().map(|r| r.height).max().unwrap_or(1);
    let mut canvas = RgbImage::filled(width, height, [255, 255, 255]);
    let mut left = 0usize;
    for r in &rendered {
        for y in 0..r.height as usize {
            let src = y * r.width as usize * 3;
            let dst = (y * width as usize + left) * 3;
            canvas.pixels[dst..dst + r.width as usize * 3]
                .copy_from_slice(&r.pixels[src..src + r.width as usize * 3]);
        }
        left += (r.width + gap) as usize;
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| PlotError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let bytes = canvas.to_png()?;
    crate::util::atomic_write(path, &bytes).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_are_placed_side_by_side_in_one_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/panels.png");
        let a = Array2::from_shape_fn((8, 8), |(r, c)| (r * 8 + c) as f32);
        let panels = vec![
            Panel::new("a", a.clone()),
            Panel::with_range("b", Array2::zeros((2, 4)), 0.0, 1.0),
        ];
        plot_panels(&path, &panels, 64).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(plot_panels(&path, &[], 64).is_err());
    }
}
