//! Text rendering for bitmap figures.
//!
//! plotters 0.3.7's ab_glyph renderer drops every glyph's left side bearing, which gives
//! visibly uneven letter spacing ("Sensit ivity"). [`GlyphBackend`] wraps a backend and
//! lays out text itself with ab_glyph (advances, kerning, bearings, baseline), keeping
//! plotters' size convention (`size` = ascent − descent in pixels), anchors and rotations.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
    FontStyle,
};

static SANS: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static SANS_BOLD: &[u8] = include_bytes!("../../assets/DejaVuSans-Bold.ttf");

/// The embedded font bytes for a style (bold, or regular for everything else).
pub(crate) fn font_bytes(style: FontStyle) -> &'static [u8] {
    match style {
        FontStyle::Bold => SANS_BOLD,
        _ => SANS,
    }
}

fn load(style: FontStyle) -> Result<FontRef<'static>, String> {
    FontRef::try_from_slice(font_bytes(style)).map_err(|e| format!("embedded DejaVu font: {e}"))
}

/// Width and height (ascent − descent) in pixels of `text` at `size`.
pub(crate) fn measure(font: &FontRef<'static>, size: f64, text: &str) -> (i32, i32) {
    let scaled = font.as_scaled(PxScale::from(size as f32));
    let mut width = 0.0f32;
    let mut previous = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = previous {
            width += scaled.kern(p, id);
        }
        width += scaled.h_advance(id);
        previous = Some(id);
    }
    (
        width.ceil() as i32,
        (scaled.ascent() - scaled.descent()).ceil() as i32,
    )
}

/// Rasterise `text` with its layout box's top-left corner at (0, 0); calls `plot(x, y, coverage)`.
fn rasterise(font: &FontRef<'static>, size: f64, text: &str, mut plot: impl FnMut(i32, i32, f32)) {
    let scaled = font.as_scaled(PxScale::from(size as f32));
    let baseline = scaled.ascent();
    let mut caret = 0.0f32;
    let mut previous = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(p) = previous {
            caret += scaled.kern(p, id);
        }
        let glyph = id.with_scale_and_position(scaled.scale(), point(caret, baseline));
        if let Some(outline) = scaled.outline_glyph(glyph) {
            let bounds = outline.px_bounds();
            outline.draw(|x, y, coverage| {
                plot(
                    bounds.min.x as i32 + x as i32,
                    bounds.min.y as i32 + y as i32,
                    coverage,
                )
            });
        }
        caret += scaled.h_advance(id);
        previous = Some(id);
    }
}

/// A drawing backend that delegates everything but text to `inner`.
pub(crate) struct GlyphBackend<B: DrawingBackend> {
    pub inner: B,
}

impl<B: DrawingBackend> DrawingBackend for GlyphBackend<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        (width, height): (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.inner.blit_bitmap(pos, (width, height), src)
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let color = style.color();
        if color.alpha == 0.0 || text.is_empty() {
            return Ok(());
        }
        let font = load(style.style()).map_err(|e| DrawingErrorKind::FontError(e.into()))?;
        let (width, height) = measure(&font, style.size(), text);
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -width / 2,
            HPos::Right => -width,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let (canvas_width, canvas_height) = self.get_size();
        let mut result = Ok(());
        rasterise(&font, style.size(), text, |x, y, coverage| {
            if result.is_err() || coverage <= 0.0 {
                return;
            }
            let (x, y) = transform.transform(x + dx, y + dy);
            let (x, y) = (pos.0 + x, pos.1 + y);
            if x >= 0 && y >= 0 && x < canvas_width as i32 && y < canvas_height as i32 {
                let pixel = BackendColor {
                    alpha: color.alpha * coverage.min(1.0) as f64,
                    rgb: color.rgb,
                };
                result = self.inner.draw_pixel((x, y), pixel);
            }
        });
        result
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let font = load(style.style()).map_err(|e| DrawingErrorKind::FontError(e.into()))?;
        let (width, height) = measure(&font, style.size(), text);
        Ok((width.max(0) as u32, height.max(0) as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glyphs_keep_their_side_bearings() {
        let font = load(FontStyle::Normal).unwrap();
        // "il" at 20 px: the 'l' must start right of the 'i' with a visible gap, as the
        // advance plus bearing dictate (plotters' own renderer glued them together).
        let mut columns = std::collections::BTreeSet::new();
        rasterise(&font, 20.0, "il", |x, _, c| {
            if c > 0.5 {
                columns.insert(x);
            }
        });
        let columns: Vec<i32> = columns.into_iter().collect();
        let gaps = columns.windows(2).filter(|w| w[1] - w[0] > 1).count();
        assert_eq!(gaps, 1, "{columns:?}");
        assert!(
            columns[0] >= 1,
            "the 'i' starts after its left bearing: {columns:?}"
        );
        let (w, h) = measure(&font, 20.0, "il");
        assert!(w > 8 && w < 16 && h == 20, "{w}x{h}");
    }
}
