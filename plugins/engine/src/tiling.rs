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
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use tch::{Kind, Tensor};

/// Tile geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    pub tile: i64,
    pub overlap: i64,
}

impl Default for Tiling {
    fn default() -> Self {
        Tiling {
            tile: 256,
            overlap: 32,
        }
    }
}

/// Start offsets of tiles of length `tile` covering `0..len` with at least `overlap` overlap.
pub fn starts(len: i64, tile: i64, overlap: i64) -> Vec<i64> {
    if len <= tile {
        return vec![0];
    }
    let stride = (tile - overlap).max(1);
    let mut s: Vec<i64> = (0..)
        .map(|i| i * stride)
        .take_while(|&p| p + tile < len)
        .collect();
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
/// models' tile. Small-tile models (the shipped 64-pixel ones) then run up to 16 tiles per
/// network call, which on a CPU is many times faster than one call per tile, while the
/// working memory stays bounded by what one official tile needs.
pub const BATCH_PIXELS: i64 = 256 * 256;

/// Where the tiles of one image go and how they are grouped into network calls.
struct TilePlan {
    /// Tile starts along H and W.
    ys: Vec<i64>,
    xs: Vec<i64>,
    /// Tile size (the tiling's, clipped to the image).
    th: i64,
    tw: i64,
    /// Images in the input batch.
    b: i64,
    /// Tiles in order (row-major), chunked into network calls.
    groups: Vec<Vec<(usize, usize)>>,
}

impl TilePlan {
    fn new(x: &Tensor, tiling: Tiling) -> TilePlan {
        let (b, _, h, w) = x.size4().expect("4-D input");
        let (th, tw) = (tiling.tile.min(h), tiling.tile.min(w));
        let ys = starts(h, th, tiling.overlap);
        let xs = starts(w, tw, tiling.overlap);
        let places: Vec<(usize, usize)> = (0..ys.len())
            .flat_map(|iy| (0..xs.len()).map(move |ix| (iy, ix)))
            .collect();
        let per_call = ((BATCH_PIXELS / (th * tw * b).max(1)) as usize).clamp(1, places.len());
        let groups = places.chunks(per_call).map(|g| g.to_vec()).collect();
        TilePlan {
            ys,
            xs,
            th,
            tw,
            b,
            groups,
        }
    }

    fn total(&self) -> usize {
        self.ys.len() * self.xs.len()
    }

    /// The input of one network call: the group's tiles stacked along the batch dimension.
    fn input(&self, x: &Tensor, group: usize) -> Tensor {
        let tiles: Vec<Tensor> = self.groups[group]
            .iter()
            .map(|&(iy, ix)| {
                x.narrow(2, self.ys[iy], self.th)
                    .narrow(3, self.xs[ix], self.tw)
            })
            .collect();
        Tensor::cat(&tiles, 0)
    }
}

/// The weighted sum of tile outputs and the summed weights.
struct Blend {
    acc: Option<Tensor>,
    wsum: Tensor,
}

impl Blend {
    fn new(x: &Tensor) -> Blend {
        let (_, _, h, w) = x.size4().expect("4-D input");
        Blend {
            acc: None,
            wsum: Tensor::zeros([1, 1, h, w], (Kind::Float, x.device())),
        }
    }

    /// Add the outputs of network call `group` (tiles stacked along the batch dimension).
    fn add(&mut self, plan: &TilePlan, group: usize, outs: &Tensor) {
        let (ys, xs, th, tw, b) = (&plan.ys, &plan.xs, plan.th, plan.tw, plan.b);
        let (h, w) = (self.wsum.size()[2], self.wsum.size()[3]);
        let device = self.wsum.device();
        for (k, &(iy, ix)) in plan.groups[group].iter().enumerate() {
            let (y0, x0) = (ys[iy], xs[ix]);
            let out = outs.narrow(0, k as i64 * b, b);
            // Ramps only where a neighbour overlaps this tile.
            let lo_y = iy
                .checked_sub(1)
                .map(|i| (ys[i] + th - y0).max(0))
                .unwrap_or(0);
            let hi_y = ys.get(iy + 1).map(|&n| (y0 + th - n).max(0)).unwrap_or(0);
            let lo_x = ix
                .checked_sub(1)
                .map(|i| (xs[i] + tw - x0).max(0))
                .unwrap_or(0);
            let hi_x = xs.get(ix + 1).map(|&n| (x0 + tw - n).max(0)).unwrap_or(0);
            let wy = Tensor::from_slice(&window(th, lo_y, hi_y)).view([1, 1, th, 1]);
            let wx = Tensor::from_slice(&window(tw, lo_x, hi_x)).view([1, 1, 1, tw]);
            let wt = (wy * wx).to_device(device);
            let a = self.acc.get_or_insert_with(|| {
                Tensor::zeros([b, out.size()[1], h, w], (Kind::Float, device))
            });
            let mut region = a.narrow(2, y0, th).narrow(3, x0, tw);
            region += &out * &wt;
            let mut wr = self.wsum.narrow(2, y0, th).narrow(3, x0, tw);
            wr += &wt;
        }
    }

    /// The weighted sum divided by the summed weights, in place (no image-sized temporary).
    fn finish(self) -> Tensor {
        let Blend { acc, mut wsum } = self;
        let mut acc = acc.expect("at least one tile");
        let _ = wsum.clamp_min_(1e-8);
        acc /= &wsum;
        acc
    }
}

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
    let plan = TilePlan::new(x, tiling);
    let total = plan.total();
    if total == 1 {
        if !progress(0, 1) {
            return None;
        }
        let out = f(x);
        return progress(1, 1).then_some(out);
    }
    let mut blend = Blend::new(x);
    let mut done = 0;
    for g in 0..plan.groups.len() {
        if !progress(done, total) {
            return None;
        }
        let outs = f(&plan.input(x, g)).to_kind(Kind::Float);
        blend.add(&plan, g, &outs);
        done += plan.groups[g].len();
    }
    if !progress(total, total) {
        return None;
    }
    Some(blend.finish())
}

/// A value shared with the tile workers of [`map_tiles_parallel`] although its type is not
/// `Sync`.
///
/// tch marks `Tensor` `Send` but not `Sync` because a few of its `&self` methods change the
/// tensor (autograd flags, some in-place operations). The workers only *read* what is
/// wrapped here — the input image they cut tiles from, and a network whose weights they
/// evaluate under no-grad — and every result they compute is a new tensor; libtorch's
/// reference counts are atomic and concurrent reads of a tensor are safe. Crate-private: the
/// promise is kept by the code that wraps, so it is not offered to safe code outside.
pub(crate) struct SharedRead<T>(pub(crate) T);

// SAFETY: see the type's documentation: wrapped values are only read while shared, by code
// that calls no mutating method on them.
unsafe impl<T> Sync for SharedRead<T> {}

impl<T> SharedRead<T> {
    /// The wrapped value (a method, so closures capture the whole wrapper, not the field).
    pub(crate) fn get(&self) -> &T {
        &self.0
    }
}

/// [`map_tiles`] with the network calls spread over `workers` threads, each running libtorch
/// with one intra-op thread, instead of one call at a time with libtorch's intra-op threads.
///
/// Why: the tile batches are independent, so `workers` of them run side by side without the
/// barriers that split every convolution of a small batch across OpenMP threads. When another
/// process takes a core, a worker that gets less CPU simply finishes fewer batches (the next
/// batch goes to whichever worker is free), where an intra-op team waits at every barrier for
/// its slowest thread. Outputs are blended on the calling thread in tile order, so the result
/// does not depend on which worker ran which batch, nor on `workers` (every batch runs with
/// one intra-op thread). Results equal [`map_tiles`] run with one intra-op thread.
///
/// Each worker enters no-grad itself. Setting one intra-op thread per worker goes through
/// `tch::set_num_threads`, which also sets libtorch's process-wide default that threads read
/// the first time they use libtorch; the caller's setting is restored on return.
/// `workers <= 1`, or a single network call, is [`map_tiles`].
pub fn map_tiles_parallel(
    x: &Tensor,
    tiling: Tiling,
    workers: usize,
    f: &(dyn Fn(&Tensor) -> Tensor + Sync),
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Option<Tensor> {
    let plan = TilePlan::new(x, tiling);
    let n = plan.groups.len();
    let workers = workers.min(n);
    if workers <= 1 || plan.total() == 1 {
        return map_tiles(x, tiling, &mut |t| f(t), progress);
    }
    let total = plan.total();
    if !progress(0, total) {
        return None;
    }
    let caller_threads = tch::get_num_threads();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let shared = SharedRead((x, &plan));
    let mut blend = Blend::new(x);
    let finished = std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel::<(usize, Tensor)>();
        for _ in 0..workers {
            let tx = tx.clone();
            let (next, stop, shared) = (&next, &stop, &shared);
            s.spawn(move || {
                tch::set_num_threads(1);
                tch::no_grad(|| {
                    let (x, plan) = *shared.get();
                    while !stop.load(Ordering::Relaxed) {
                        let g = next.fetch_add(1, Ordering::Relaxed);
                        if g >= plan.groups.len() {
                            break;
                        }
                        let out = f(&plan.input(x, g)).to_kind(Kind::Float);
                        if tx.send((g, out)).is_err() {
                            break;
                        }
                    }
                })
            });
        }
        drop(tx);
        // Blend strictly in tile order: a batch that finishes early waits here.
        let mut pending = BTreeMap::new();
        let (mut g, mut done) = (0, 0);
        for (i, out) in rx.iter() {
            pending.insert(i, out);
            while let Some(out) = pending.remove(&g) {
                blend.add(&plan, g, &out);
                done += plan.groups[g].len();
                g += 1;
                // The same calls as map_tiles: before each batch (here: once the previous one
                // is blended), and once at the end (below).
                if g < n && !progress(done, total) {
                    stop.store(true, Ordering::Relaxed);
                    return false;
                }
            }
        }
        g == n
    });
    tch::set_num_threads(caller_threads);
    (finished && progress(total, total)).then(|| blend.finish())
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
        let _rng = crate::test_rng::seeded(0);
        let x = Tensor::rand([2, 3, 70, 90], (Kind::Float, Device::Cpu));
        let (mut calls, mut tiles) = (0, 0);
        let out = map_tiles(
            &x,
            Tiling {
                tile: 32,
                overlap: 8,
            },
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
        let _rng = crate::test_rng::seeded(0);
        let x = Tensor::rand([1, 1, 300, 600], (Kind::Float, Device::Cpu));
        let mut sizes = Vec::new();
        let out = map_tiles(
            &x,
            Tiling {
                tile: 256,
                overlap: 32,
            },
            &mut |t| {
                sizes.push(t.size()[0]);
                t * 2.0
            },
            &mut |_, _| true,
        )
        .unwrap();
        assert_eq!(sizes, vec![1; 6], "256-pixel tiles run one per call");
        assert!((out - &x * 2.0).abs().max().double_value(&[]) < 1e-5);
        let x = Tensor::rand([1, 1, 400, 400], (Kind::Float, Device::Cpu));
        let mut sizes = Vec::new();
        let _ = map_tiles(
            &x,
            Tiling {
                tile: 32,
                overlap: 8,
            },
            &mut |t| {
                sizes.push(t.size()[0]);
                t.shallow_clone()
            },
            &mut |_, _| true,
        )
        .unwrap();
        assert_eq!(sizes.iter().sum::<i64>(), 17 * 17);
        assert!(
            sizes.iter().all(|&n| n * 32 * 32 <= BATCH_PIXELS),
            "{sizes:?}"
        );
    }

    #[test]
    fn parallel_workers_blend_in_tile_order_like_one_call_at_a_time() {
        let _rng = crate::test_rng::seeded(0);
        // 17 × 17 tiles of a batch of 2, 32 tiles per call: 10 calls.
        let x = Tensor::rand([2, 3, 400, 400], (Kind::Float, Device::Cpu));
        let tiling = Tiling {
            tile: 32,
            overlap: 8,
        };
        // A non-linear map, so that any mix-up of tiles would show.
        let f = |t: &Tensor| (t * 3.0).sin() + t.mean_dim(1, true, Kind::Float);
        let mut seen_one = Vec::new();
        let one = map_tiles(&x, tiling, &mut |t| f(t), &mut |d, n| {
            seen_one.push((d, n));
            true
        })
        .unwrap();
        assert_eq!(seen_one.len(), 11);
        for workers in [2, 3, 8] {
            let mut seen = Vec::new();
            let par = map_tiles_parallel(&x, tiling, workers, &f, &mut |d, n| {
                seen.push((d, n));
                true
            })
            .unwrap();
            assert_eq!(
                (&par - &one).abs().max().double_value(&[]),
                0.0,
                "{workers} workers"
            );
            assert_eq!(seen, seen_one, "the same progress calls");
        }
        // Cancelling stops the workers and returns nothing.
        let calls = AtomicUsize::new(0);
        let counted = |t: &Tensor| {
            calls.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(100));
            t.shallow_clone()
        };
        // 289 tiles, 64 per call: 5 calls; cancelled once the first is blended.
        let one_image = Tensor::rand([1, 1, 400, 400], (Kind::Float, Device::Cpu));
        assert!(map_tiles_parallel(&one_image, tiling, 2, &counted, &mut |d, _| d < 64).is_none());
        assert!(
            calls.load(Ordering::Relaxed) < 5,
            "{} of 5 calls ran",
            calls.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn cancel_stops() {
        let _rng = crate::test_rng::seeded(0);
        let x = Tensor::rand([1, 1, 64, 64], (Kind::Float, Device::Cpu));
        let r = map_tiles(
            &x,
            Tiling {
                tile: 32,
                overlap: 8,
            },
            &mut |t| t.shallow_clone(),
            &mut |d, _| d < 2,
        );
        assert!(r.is_none());
    }
}
