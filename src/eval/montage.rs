//! Montages for `eval --montage`: a grid of small grey tiles, one row per kind (clean,
//! corrupted, output, baseline), so a run's results can be looked at, not only measured.

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

/// Writes a grid: row r holds the tiles tagged r, in order; 4-pixel white gaps.
pub fn write_montage(path: &Path, tiles: &[(usize, Tile)], rows: usize) -> Result<()> {
    let gap = 4;
    let cols = (0..rows)
        .map(|r| tiles.iter().filter(|(t, _)| *t == r).count())
        .max()
        .unwrap_or(0);
    let cw = tiles.iter().map(|(_, t)| t.w).max().unwrap_or(1);
    let ch = tiles.iter().map(|(_, t)| t.h).max().unwrap_or(1);
    let used_rows: Vec<usize> = (0..rows)
        .filter(|r| tiles.iter().any(|(t, _)| t == r))
        .collect();
    let (w, h) = (cols * (cw + gap) + gap, used_rows.len() * (ch + gap) + gap);
    let mut img = vec![1f32; w * h];
    for (ri, r) in used_rows.iter().enumerate() {
        for (ci, (_, t)) in tiles.iter().filter(|(t, _)| t == r).enumerate() {
            let (x0, y0) = (gap + ci * (cw + gap), gap + ri * (ch + gap));
            for y in 0..t.h {
                for x in 0..t.w {
                    img[(y0 + y) * w + x0 + x] = t.data[y * t.w + x];
                }
            }
        }
    }
    let png = crate::frame::encode_png(&Planes::grey(w, h, img), &path.display().to_string())?;
    Ok(crate::runtime::write_atomic(path, &png)?)
}
