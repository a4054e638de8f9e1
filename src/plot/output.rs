//! Rendering a figure to RGB pixels, PNG bytes or SVG text, and writing it atomically.

use super::text::{GlyphBackend, font_bytes};
use super::{PlotError, PlotResult, draw_error};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Register the embedded DejaVu fonts as plotters' `sans-serif` family, once per process
/// (plotters measures text with them; PNG text itself is drawn by [`GlyphBackend`]).
pub(crate) fn ensure_fonts() -> PlotResult<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(
                "sans-serif",
                FontStyle::Normal,
                font_bytes(plotters_backend::FontStyle::Normal),
            )
            .map_err(|_| "embedded DejaVuSans.ttf is not a valid font".to_string())?;
            plotters::style::register_font(
                "sans-serif",
                FontStyle::Bold,
                font_bytes(plotters_backend::FontStyle::Bold),
            )
            .map_err(|_| "embedded DejaVuSans-Bold.ttf is not a valid font".to_string())
        })
        .clone()
        .map_err(|message| PlotError::Draw {
            path: PathBuf::new(),
            message,
        })
}

/// The file formats a plot can be written in, chosen by the output path's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A PNG bitmap (`.png`).
    Png,
    /// An SVG document (`.svg`); slice images are embedded as a PNG `<image>`.
    Svg,
}

impl OutputFormat {
    /// The format for `path` from its extension (case-insensitive), or an error naming the path.
    pub fn from_path(path: &Path) -> PlotResult<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("png") => Ok(Self::Png),
            Some("svg") => Ok(Self::Svg),
            _ => Err(PlotError::UnsupportedFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// An 8-bit RGB image, row-major, 3 bytes per pixel, row 0 at the top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// A `width × height` image filled with one colour.
    pub fn filled(width: u32, height: u32, rgb: [u8; 3]) -> Self {
        let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
        for _ in 0..width as usize * height as usize {
            pixels.extend_from_slice(&rgb);
        }
        Self {
            width,
            height,
            pixels,
        }
    }

    /// The colour at column `x`, row `y`, or None outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let i = (y as usize * self.width as usize + x as usize) * 3;
        self.pixels.get(i..i + 3).map(|p| [p[0], p[1], p[2]])
    }

    #[cfg(test)]
    pub(crate) fn get(&self, x: u32, y: u32) -> [u8; 3] {
        self.pixel(x, y)
            .unwrap_or_else(|| panic!("pixel ({x}, {y}) outside {}x{}", self.width, self.height))
    }

    /// Encode as PNG bytes.
    pub fn to_png(&self) -> PlotResult<Vec<u8>> {
        let mut bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut bytes, self.width, self.height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().map_err(draw_error)?;
            writer.write_image_data(&self.pixels).map_err(draw_error)?;
        }
        Ok(bytes)
    }
}

/// A bitmap painted under the plotters drawing (a slice image), in figure pixel coordinates.
pub(crate) struct Underlay {
    /// The image at its own resolution.
    pub image: RgbImage,
    /// Top-left corner in the figure.
    pub left: i32,
    pub top: i32,
    /// Size on the figure; nearest-neighbour scaling from `image`.
    pub display_width: u32,
    pub display_height: u32,
}

/// A figure that draws itself on any plotters backend; the background is white and painted
/// by the renderer, so `draw` must not fill the root area.
pub(crate) trait Figure {
    /// Figure size in pixels (width, height).
    fn size(&self) -> (u32, u32);
    /// A bitmap painted before `draw` (on top of the white background).
    fn underlay(&self) -> Option<Underlay> {
        None
    }
    /// Draw axes, curves, text, ... on `root`.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> PlotResult<()>;
}

/// Render a figure to RGB pixels (the PNG path, without encoding).
pub(crate) fn render_rgb<F: Figure>(figure: &F) -> PlotResult<RgbImage> {
    ensure_fonts()?;
    let (width, height) = figure.size();
    let mut image = RgbImage::filled(width, height, [255, 255, 255]);
    if let Some(underlay) = figure.underlay() {
        blit_scaled(&mut image, &underlay);
    }
    {
        let backend = BitMapBackend::with_buffer(&mut image.pixels, (width, height));
        let root = GlyphBackend { inner: backend }.into_drawing_area();
        figure.draw(&root)?;
        root.present().map_err(draw_error)?;
    }
    Ok(image)
}

/// Render a figure to an SVG document.
pub(crate) fn render_svg<F: Figure>(figure: &F) -> PlotResult<String> {
    ensure_fonts()?;
    let (width, height) = figure.size();
    let mut body = String::new();
    {
        let root = SVGBackend::with_string(&mut body, (width, height)).into_drawing_area();
        figure.draw(&root)?;
        root.present().map_err(draw_error)?;
    }
    // plotters writes the `<svg ...>` opening tag on the first line; the background and the
    // underlay go right after it so that everything plotters drew stays on top.
    let split = body.find('\n').map(|i| i + 1).unwrap_or(body.len());
    let mut svg = String::with_capacity(body.len() + 256);
    svg.push_str(&body[..split]);
    svg.push_str(&format!(
        "<rect x=\"0\" y=\"0\" width=\"{width}\" height=\"{height}\" fill=\"#FFFFFF\" stroke=\"none\"/>\n"
    ));
    if let Some(underlay) = figure.underlay() {
        let png = underlay.image.to_png()?;
        // `pixelated` keeps voxels crisp when the viewer scales the embedded image.
        svg.push_str(&format!(
            "<image x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" preserveAspectRatio=\"none\" \
             image-rendering=\"optimizeSpeed\" style=\"image-rendering:pixelated\" \
             href=\"data:image/png;base64,{}\"/>\n",
            underlay.left,
            underlay.top,
            underlay.display_width,
            underlay.display_height,
            base64(&png)
        ));
    }
    svg.push_str(&body[split..]);
    Ok(svg)
}

/// Render `figure` in the format chosen by `path`'s extension and write it atomically
/// (parent folders are created).
pub(crate) fn write_figure<F: Figure>(path: &Path, figure: &F) -> PlotResult<()> {
    let format = OutputFormat::from_path(path)?;
    let with_path = |e: PlotError| match e {
        PlotError::Draw { message, .. } => PlotError::Draw {
            path: path.to_path_buf(),
            message,
        },
        other => other,
    };
    let bytes = match format {
        OutputFormat::Png => render_rgb(figure)
            .and_then(|image| image.to_png())
            .map_err(with_path)?,
        OutputFormat::Svg => render_svg(figure).map_err(with_path)?.into_bytes(),
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| PlotError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    // Like every writer, a figure creates its parent folders.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| PlotError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    crate::util::atomic_write(path, &bytes).map_err(|source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Nearest-neighbour copy of the underlay onto the canvas, clipped to the canvas.
fn blit_scaled(canvas: &mut RgbImage, underlay: &Underlay) {
    let src = &underlay.image;
    if src.width == 0 || src.height == 0 {
        return;
    }
    for dy in 0..underlay.display_height {
        let y = underlay.top + dy as i32;
        if y < 0 || y >= canvas.height as i32 {
            continue;
        }
        let sy = (dy as u64 * src.height as u64 / underlay.display_height as u64) as usize;
        for dx in 0..underlay.display_width {
            let x = underlay.left + dx as i32;
            if x < 0 || x >= canvas.width as i32 {
                continue;
            }
            let sx = (dx as u64 * src.width as u64 / underlay.display_width as u64) as usize;
            let s = (sy * src.width as usize + sx) * 3;
            let d = (y as usize * canvas.width as usize + x as usize) * 3;
            canvas.pixels[d..d + 3].copy_from_slice(&src.pixels[s..s + 3]);
        }
    }
}

/// Standard base64 (RFC 4648, with padding), for embedding PNGs in SVG.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Width and height of a PNG from its IHDR chunk, or None if `bytes` is not a PNG.
#[cfg(test)]
pub(crate) fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.len() < 24 || &bytes[..8] != b"\x89PNG\r\n\x1a\n" || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(bytes[16..20].try_into().ok()?);
    let h = u32::from_be_bytes(bytes[20..24].try_into().ok()?);
    Some((w, h))
}

/// Decode an RGB PNG written by this module (tests only).
#[cfg(test)]
pub(crate) fn decode_png(bytes: &[u8]) -> RgbImage {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    buf.truncate(info.buffer_size());
    RgbImage {
        width: info.width,
        height: info.height,
        pixels: buf,
    }
}

/// Check a written plot file: PNG magic and plausible size, or an SVG document.
#[cfg(test)]
pub(crate) fn assert_plot_file(path: &Path, min_size: (u32, u32)) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match OutputFormat::from_path(path).unwrap() {
        OutputFormat::Png => {
            let (w, h) = png_size(&bytes).expect("PNG magic and IHDR");
            assert!(
                w >= min_size.0 && h >= min_size.1,
                "{}: {w}x{h}",
                path.display()
            );
            assert!(w <= 4096 && h <= 4096, "{}: {w}x{h}", path.display());
        }
        OutputFormat::Svg => {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.starts_with("<svg"), "{}", &text[..text.len().min(80)]);
            assert!(text.trim_end().ends_with("</svg>"));
        }
    }
    // The atomic write leaves no temporary sibling behind.
    let dir = path.parent().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp-"), "temporary file left: {name}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_extension_case_insensitively() {
        assert_eq!(
            OutputFormat::from_path(Path::new("a/b.PNG")).unwrap(),
            OutputFormat::Png
        );
        assert_eq!(
            OutputFormat::from_path(Path::new("b.svg")).unwrap(),
            OutputFormat::Svg
        );
        let err = OutputFormat::from_path(Path::new("out/figure.jpg")).unwrap_err();
        assert!(err.to_string().contains("out/figure.jpg"), "{err}");
        assert!(OutputFormat::from_path(Path::new("noext")).is_err());
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn png_round_trip_keeps_pixels_and_size() {
        let mut image = RgbImage::filled(5, 3, [10, 20, 30]);
        image.pixels[3..6].copy_from_slice(&[200, 100, 0]);
        let bytes = image.to_png().unwrap();
        assert_eq!(png_size(&bytes), Some((5, 3)));
        let back = decode_png(&bytes);
        assert_eq!(back, image);
        assert_eq!(back.pixel(1, 0), Some([200, 100, 0]));
        assert_eq!(back.pixel(5, 0), None);
    }

    #[test]
    fn blit_scales_by_nearest_neighbour() {
        let mut canvas = RgbImage::filled(6, 4, [255, 255, 255]);
        let mut image = RgbImage::filled(2, 1, [0, 0, 0]);
        image.pixels[3..6].copy_from_slice(&[9, 9, 9]);
        let underlay = Underlay {
            image,
            left: 1,
            top: 1,
            display_width: 4,
            display_height: 2,
        };
        blit_scaled(&mut canvas, &underlay);
        assert_eq!(canvas.get(0, 1), [255, 255, 255]);
        assert_eq!(canvas.get(1, 1), [0, 0, 0]);
        assert_eq!(canvas.get(2, 2), [0, 0, 0]);
        assert_eq!(canvas.get(3, 2), [9, 9, 9]);
        assert_eq!(canvas.get(4, 1), [9, 9, 9]);
        assert_eq!(canvas.get(5, 1), [255, 255, 255]);
        assert_eq!(canvas.get(3, 3), [255, 255, 255]);
    }
}
