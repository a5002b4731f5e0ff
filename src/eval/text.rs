//! Pictures with words in them (training curves, montage row labels), drawn with plotters into
//! a pixel buffer.
//!
//! Text needs a font, and neither the machines aestream runs on nor CI are guaranteed to have
//! one installed, so one TTF (DejaVu Sans, `assets/fonts/`, Bitstream Vera licence) is embedded
//! in the binary and registered with plotters under [`FAMILY`] before anything is drawn.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::error::{Error, Result};
use crate::frame::{BitDepth, Planes};

/// The family name every drawing asks plotters for; it resolves to the embedded font.
pub const FAMILY: &str = "sans-serif";

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

/// A drawing area over an RGB pixel buffer.
pub type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// What a drawing closure returns: plotters' own error, turned into ours by [`picture`].
pub type Drawn = std::result::Result<
    (),
    plotters::drawing::DrawingAreaErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>,
>;

/// Registers the embedded font under [`FAMILY`], once per process.
fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    if *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok()) {
        Ok(())
    } else {
        Err(Error::Other("the embedded font does not parse".into()))
    }
}

/// Draws a `w`×`h` picture on white: `draw` gets the area, the result is 8-bit RGB planes.
/// `what` names the picture in errors.
pub fn picture(
    w: usize,
    h: usize,
    what: &str,
    draw: impl FnOnce(&Area) -> Drawn,
) -> Result<Planes> {
    ensure_font()?;
    let fail = |e: &dyn std::fmt::Display| Error::Other(format!("{what}: drawing failed: {e}"));
    let mut rgb = vec![255u8; w * h * 3];
    {
        let area = BitMapBackend::with_buffer(&mut rgb, (w as u32, h as u32)).into_drawing_area();
        draw(&area).map_err(|e| fail(&e))?;
        area.present().map_err(|e| fail(&e))?;
    }
    let plane = |c: usize| {
        rgb.iter()
            .skip(c)
            .step_by(3)
            .map(|&v| f32::from(v) / 255.0)
            .collect()
    };
    Ok(Planes {
        width: w,
        height: h,
        planes: vec![plane(0), plane(1), plane(2)],
        alpha: None,
        depth: BitDepth::Eight,
        yuv: None,
    })
}

/// `text` in black on white, `px` pixels high, in a grey picture just large enough for it
/// (width, height, values in [0, 1]).
pub fn label(text: &str, px: u32) -> Result<(usize, usize, Vec<f32>)> {
    ensure_font()?;
    let font = (FAMILY, f64::from(px)).into_font();
    let (tw, _) = font
        .box_size(text)
        .map_err(|e| Error::Other(format!("label {text:?}: {e}")))?;
    // The font's ascent and descent, not the box plotters estimates (one em), decide the
    // height, so that descenders and accents are not cut off.
    let (w, h) = (tw as usize + 2, (px as usize * 5).div_ceil(4) + 2);
    let style = TextStyle::from(font)
        .color(&BLACK)
        .pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Left,
            plotters::style::text_anchor::VPos::Center,
        ));
    let p = picture(w, h, &format!("label {text:?}"), |a| {
        a.draw_text(text, &style, (1, h as i32 / 2))
    })?;
    Ok((w, h, p.luma()))
}
