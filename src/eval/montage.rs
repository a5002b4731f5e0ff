//! Montages for `eval --montage`: a grid of small grey tiles, one row per kind (clean,
//! corrupted, output, baseline), each row named in a label column at its left, so a run's
//! results can be looked at, not only measured.

use std::path::Path;

use crate::error::Result;
use crate::frame::Planes;

/// Frames per montage row.
pub const MONTAGE_COLUMNS: usize = 10;

/// One montage cell: a grey image.
#[derive(Debug, Clone)]
pub struct Tile {
    pub w: usize,
    pub h: usize,
    pub data: Vec<f32>,
}

/// A frame as a montage cell: large frames are shrunk to at most 160 pixels a side, small
/// ones enlarged by whole pixels (nearest) to at least 75.
pub fn tile_of(data: &[f32], w: usize, h: usize) -> Tile {
    let side = w.max(h);
    if side > 160 {
        let (nw, nh) = ((w * 160 / side).max(1), (h * 160 / side).max(1));
        return Tile {
            w: nw,
            h: nh,
            data: crate::frame::resize_plane(data, w, h, nw, nh),
        };
    }
    let k = 75usize.div_ceil(side).max(1);
    let (nw, nh) = (w * k, h * k);
    let mut out = vec![0f32; nw * nh];
    for y in 0..nh {
        for x in 0..nw {
            out[y * nw + x] = data[(y / k) * w + x / k];
        }
    }
    Tile {
        w: nw,
        h: nh,
        data: out,
    }
}

/// Height of the row labels' text, in pixels.
const LABEL_PX: u32 = 16;

/// Writes a grid: row r holds the tiles tagged r, in order, behind a column that names it
/// (`labels[r]`, as the lecture's figures do); 4-pixel white gaps. Rows without tiles are left
/// out.
pub fn write_montage(path: &Path, tiles: &[(usize, Tile)], labels: &[&str]) -> Result<()> {
    let img = montage(tiles, labels)?;
    let png = crate::frame::encode_png(&img, &path.display().to_string())?;
    Ok(crate::runtime::write_atomic(path, &png)?)
}

/// The grid [`write_montage`] writes, as a grey picture.
pub fn montage(tiles: &[(usize, Tile)], labels: &[&str]) -> Result<Planes> {
    let gap = 4;
    let rows = labels.len();
    let cols = (0..rows)
        .map(|r| tiles.iter().filter(|(t, _)| *t == r).count())
        .max()
        .unwrap_or(0);
    let cw = tiles.iter().map(|(_, t)| t.w).max().unwrap_or(1);
    let ch = tiles.iter().map(|(_, t)| t.h).max().unwrap_or(1);
    let used_rows: Vec<usize> = (0..rows)
        .filter(|r| tiles.iter().any(|(t, _)| t == r))
        .collect();
    let names = used_rows
        .iter()
        .map(|&r| super::text::label(labels[r], LABEL_PX))
        .collect::<Result<Vec<_>>>()?;
    let lw = names
        .iter()
        .map(|(w, _, _)| *w)
        .max()
        .map_or(0, |w| w + gap);
    let (w, h) = (
        lw + cols * (cw + gap) + gap,
        used_rows.len() * (ch + gap) + gap,
    );
    let mut img = vec![1f32; w * h];
    let mut paste = |x0: usize, y0: usize, tw: usize, th: usize, data: &[f32]| {
        for y in 0..th.min(h - y0) {
            for x in 0..tw.min(w - x0) {
                img[(y0 + y) * w + x0 + x] = data[y * tw + x];
            }
        }
    };
    for (ri, r) in used_rows.iter().enumerate() {
        let y0 = gap + ri * (ch + gap);
        let (nw, nh, name) = &names[ri];
        // Centred on the row's tiles, as a caption beside them.
        paste(gap, y0 + ch.saturating_sub(*nh) / 2, *nw, *nh, name);
        for (ci, (_, t)) in tiles.iter().filter(|(t, _)| t == r).enumerate() {
            paste(lw + gap + ci * (cw + gap), y0, t.w, t.h, &t.data);
        }
    }
    Ok(Planes::grey(w, h, img))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two rows of three mid-grey tiles: the labels add a column at the left (the picture is
    /// wider than the tiles and gaps alone, no taller), each row's strip has lettering in it,
    /// and the tiles keep their pixels, moved right by the strip.
    #[test]
    fn labels_add_a_strip_with_lettering() -> Result<()> {
        let (tw, th, gap) = (40, 30, 4);
        let tile = |v: f32| Tile {
            w: tw,
            h: th,
            data: vec![v; tw * th],
        };
        let tiles: Vec<(usize, Tile)> = (0..3)
            .flat_map(|_| [(0, tile(0.5)), (2, tile(0.25))])
            .collect();
        // Row 1 has no tiles: it is left out, label and all.
        let img = montage(&tiles, &["input", "unused", "output"])?;
        let bare_w = 3 * (tw + gap) + gap;
        assert_eq!(img.height, 2 * (th + gap) + gap);
        assert!(img.width > bare_w + 20, "{} wide", img.width);
        let strip = img.width - bare_w;
        let p = &img.planes[0];
        for row in 0..2 {
            let y0 = gap + row * (th + gap);
            let ink = (y0..y0 + th)
                .flat_map(|y| (0..strip).map(move |x| (x, y)))
                .filter(|&(x, y)| p[y * img.width + x] < 0.5)
                .count();
            assert!(ink > 20, "row {row}: {ink} dark pixels in the label strip");
            let (x, y) = (strip + gap + tw / 2, y0 + th / 2);
            assert_eq!(p[y * img.width + x], [0.5, 0.25][row]);
        }
        Ok(())
    }
}
