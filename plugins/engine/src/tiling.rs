//! Overlapped tiles with seam-free blending, so images of any size restore with memory
//! bounded by the tile rather than the image.
//!
//! The image is covered by tiles of `tile × tile` pixels whose neighbours overlap by
//! `overlap` pixels (the last tile in a row/column is shifted back to end at the border,
//! so every tile has full size and no padding artefacts reach the interior). Each tile's
//! output is weighted by a separable raised-cosine window that ramps over the overlap and
//! is 1 elsewhere; the weighted sum divided by the summed weights is seam-free because the
//! weights of overlapping tiles cross-fade smoothly, where cropping the overlaps away
//! ("prepadding" only) leaves hard seams (docs/algorithm.md §6.2).
use tch::{Kind, Tensor};

/// Tile geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub tile: i64,
    pub overlap: i64,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling { tile: 256, overlap: 32 }
    }
}

/// Start offsets of tiles of length `tile` covering `0..len` with at least `overlap` overlap.
pub fn starts(len: i64, tile: i64, overlap: i64) -> Vec<i64> {
    if len <= tile {
        return vec![0];
    }
    let stride = (tile - overlap).max(1);
    let mut s: Vec<i64> = (0..).map(|i| i * stride).take_while(|&p| p + tile < len).collect();
    s.push(len - tile);
    s.dedup();
    s
}

/// 1-D blending window of length `n`: ramps up over `ramp_lo` samples at the start (0 when
/// the tile touches the image border there) and down over `ramp_hi` at the end.
fn window(n: i64, ramp_lo: i64, ramp_hi: i64) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let up = if ramp_lo > 0 && i < ramp_lo {
                let u = (i as f64 + 0.5) / ramp_lo as f64;
                0.5 - 0.5 * (std::f64::consts::PI * u).cos()
            } else {
                1.0
            };
            let down = if ramp_hi > 0 && i >= n - ramp_hi {
                let u = ((n - 1 - i) as f64 + 0.5) / ramp_hi as f64;
                0.5 - 0.5 * (std::f64::consts::PI * u).cos()
            } else {
                1.0
            };
            (up * down) as f32
        })
        .collect()
}

/// Pixels the network sees per call when tiles are batched: one 256×256 tile, the official
/// models' tile. Small-tile models (the shipped 32-pixel ones) then run up to 64 tiles per
/// network call, which on a CPU is many times faster than one call per tile, while the
/// working memory stays bounded by what one official tile needs.
pub const BATCH_PIXELS: i64 = 256 * 256;

/// Run `f` over tiles of `x` `(B, C, H, W)` and blend. `f` maps a batch of tiles to output
/// tiles of the same spatial size (any channel count); tiles are stacked along the batch
/// dimension, up to [`BATCH_PIXELS`] pixels per call. `progress(done, total)` (in tiles)
/// returns false to cancel; then `None` is returned.
pub fn map_tiles(
    x: &Tensor,
    tiling: Tiling,
    f: &mut dyn FnMut(&Tensor) -> Tensor,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Option<Tensor> {
    let (b, _, h, w) = x.size4().expect("4-D input");
    let (th, tw) = (tiling.tile.min(h), tiling.tile.min(w));
    let ys = starts(h, th, tiling.overlap);
    let xs = starts(w, tw, tiling.overlap);
    let total = ys.len() * xs.len();
    if total == 1 {
        if !progress(0, 1) {
            return None;
        }
        let out = f(x);
        return progress(1, 1).then_some(out);
    }
    let places: Vec<(usize, usize)> = (0..ys.len()).flat_map(|iy| (0..xs.len()).map(move |ix| (iy, ix))).collect();
    let per_call = ((BATCH_PIXELS / (th * tw * b).max(1)) as usize).clamp(1, total);
    let mut acc: Option<Tensor> = None;
    let wsum = Tensor::zeros([1, 1, h, w], (Kind::Float, x.device()));
    let mut done = 0;
    for group in places.chunks(per_call) {
        if !progress(done, total) {
            return None;
        }
        let tiles: Vec<Tensor> = group.iter().map(|&(iy, ix)| x.narrow(2, ys[iy], th).narrow(3, xs[ix], tw)).collect();
        let outs = f(&Tensor::cat(&tiles, 0)).to_kind(Kind::Float);
        for (k, &(iy, ix)) in group.iter().enumerate() {
            let (y0, x0) = (ys[iy], xs[ix]);
            let out = outs.narrow(0, k as i64 * b, b);
            // Ramps only where a neighbour overlaps this tile.
            let lo_y = iy.checked_sub(1).map(|i| (ys[i] + th - y0).max(0)).unwrap_or(0);
            let hi_y = ys.get(iy + 1).map(|&n| (y0 + th - n).max(0)).unwrap_or(0);
            let lo_x = ix.checked_sub(1).map(|i| (xs[i] + tw - x0).max(0)).unwrap_or(0);
            let hi_x = xs.get(ix + 1).map(|&n| (x0 + tw - n).max(0)).unwrap_or(0);
            let wy = Tensor::from_slice(&window(th, lo_y, hi_y)).view([1, 1, th, 1]);
            let wx = Tensor::from_slice(&window(tw, lo_x, hi_x)).view([1, 1, 1, tw]);
            let wt = (wy * wx).to_device(x.device());
            let a = acc.get_or_insert_with(|| Tensor::zeros([b, out.size()[1], h, w], (Kind::Float, x.device())));
            let mut region = a.narrow(2, y0, th).narrow(3, x0, tw);
            region += &out * &wt;
            let mut wr = wsum.narrow(2, y0, th).narrow(3, x0, tw);
            wr += &wt;
        }
        done += group.len();
    }
    if !progress(total, total) {
        return None;
    }
    Some(acc.expect("at least one tile") / wsum.clamp_min(1e-8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn starts_cover_and_overlap() {
        assert_eq!(starts(100, 256, 32), vec![0]);
        let s = starts(600, 256, 32);
        assert_eq!(s.first(), Some(&0));
        assert_eq!(*s.last().unwrap(), 600 - 256);
        for w in s.windows(2) {
            assert!(w[1] - w[0] <= 256 - 32);
        }
    }

    #[test]
    fn identity_map_is_reproduced_exactly_and_seam_free() {
        let x = Tensor::rand([2, 3, 70, 90], (Kind::Float, Device::Cpu));
        let (mut calls, mut tiles) = (0, 0);
        let out = map_tiles(
            &x,
            Tiling { tile: 32, overlap: 8 },
            &mut |t| {
                calls += 1;
                tiles += t.size()[0] / 2;
                t.shallow_clone()
            },
            &mut |_, _| true,
        )
        .unwrap();
        // 3 x 4 tiles of a batch of 2, all in one network call.
        assert_eq!((calls, tiles), (1, 12));
        let d = (out - &x).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn batches_stay_within_the_pixel_budget() {
        let x = Tensor::rand([1, 1, 300, 600], (Kind::Float, Device::Cpu));
        let mut sizes = Vec::new();
        let out = map_tiles(&x, Tiling { tile: 256, overlap: 32 }, &mut |t| { sizes.push(t.size()[0]); t * 2.0 }, &mut |_, _| true).unwrap();
        assert_eq!(sizes, vec![1; 6], "256-pixel tiles run one per call");
        assert!((out - &x * 2.0).abs().max().double_value(&[]) < 1e-5);
        let x = Tensor::rand([1, 1, 400, 400], (Kind::Float, Device::Cpu));
        let mut sizes = Vec::new();
        let _ = map_tiles(&x, Tiling { tile: 32, overlap: 8 }, &mut |t| { sizes.push(t.size()[0]); t.shallow_clone() }, &mut |_, _| true).unwrap();
        assert_eq!(sizes.iter().sum::<i64>(), 17 * 17);
        assert!(sizes.iter().all(|&n| n * 32 * 32 <= BATCH_PIXELS), "{sizes:?}");
    }

    #[test]
    fn cancel_stops() {
        let x = Tensor::rand([1, 1, 64, 64], (Kind::Float, Device::Cpu));
        let r = map_tiles(&x, Tiling { tile: 32, overlap: 8 }, &mut |t| t.shallow_clone(), &mut |d, _| d < 2);
        assert!(r.is_none());
    }
}
