//! Whole-image restoration through low-resolution context windows, for the tasks whose answer
//! depends on more of the picture than a tile holds.
//!
//! Tiles (see [`crate::tiling`]) suit local problems (deblur, denoise, super-resolution), but
//! a tile cannot know the colour of a sky it only sees a corner of, and a tile that lies wholly
//! inside an inpainting hole sees nothing at all: a tiled colorizer paints every tile its own
//! colour, and a tiled inpainter trained on holes "in the middle of its input" paints a hole
//! into every tile. A window model is trained on whole windows downscaled to its side `S`
//! (`ModelMeta::restore_window`) and restores like this:
//!
//! 1. **Windows.** Inpainting: one window per group of missing regions, around each hole's
//!    bounding box with as much context again on every side (at least `S` pixels), clipped to
//!    the image; windows that overlap are merged, so every missing pixel belongs to exactly
//!    one. Other operators: the whole image is one window.
//! 2. **One pass per window.** The lifted measurement of the window is area-downscaled so its
//!    longer side is at most `S` (never upscaled), padded to the network's size multiple, and
//!    restored with one network evaluation; the estimate is upscaled back (bicubic).
//! 3. **Projection onto the measurement.** `x̂ ← x̂ + A⁺(y − A x̂)`: for inpainting this keeps
//!    every observed pixel as measured and fills only the holes (nothing outside a hole is
//!    invented); for colorization it keeps the measured gray exactly and adds the estimated
//!    chroma, so colour is consistent across the image and detail is the measurement's.
//! 4. **The measured part, denoised** ([`clean_measured_part`]). The measurement is noisy
//!    (σ 0.05 at the official settings), and step 3 keeps its noise. A window model may carry a
//!    measurement denoiser (`ModelMeta::measurement_denoiser`, a tile generator trained to
//!    denoise at that σ): it runs once over the answer of step 3, and the measured part of the
//!    answer (`A⁺A`: the observed pixels, the gray) is taken from its output, the rest (the
//!    holes, the colour) from step 3: `x̂ ← x̂ + A⁺A(D(x̂) − x̂)` (`D` applied twice to a gray
//!    measurement's answer, [`denoiser_passes`]). Skipped when the measurement
//!    is known to be clean (noise σ 0), so a clean photograph's observed pixels stay as they
//!    are.
//!
//! One network evaluation per window (one for colorization), plus the denoiser's tiles.
use crate::error::{EngineError, Result};
use crate::operators::Operator;
use tch::{Kind, Tensor};

/// A rectangle of the image: rows `top..top+height`, columns `left..left+width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub top: i64,
    pub left: i64,
    pub height: i64,
    pub width: i64,
}

impl Window {
    fn bottom(&self) -> i64 {
        self.top + self.height
    }
    fn right(&self) -> i64 {
        self.left + self.width
    }
    fn overlaps(&self, o: &Window) -> bool {
        self.top < o.bottom()
            && o.top < self.bottom()
            && self.left < o.right()
            && o.left < self.right()
    }
    fn union(&self, o: &Window) -> Window {
        let (top, left) = (self.top.min(o.top), self.left.min(o.left));
        Window {
            top,
            left,
            height: self.bottom().max(o.bottom()) - top,
            width: self.right().max(o.right()) - left,
        }
    }
}

/// Bounding boxes of the 4-connected regions where `missing` (row-major `h × w`) is true.
pub fn missing_regions(missing: &[bool], h: usize, w: usize) -> Vec<Window> {
    let mut seen = vec![false; missing.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..missing.len() {
        if !missing[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut r0, mut r1, mut c0, mut c1) = (usize::MAX, 0, usize::MAX, 0);
        while let Some(i) = stack.pop() {
            let (r, c) = (i / w, i % w);
            r0 = r0.min(r);
            r1 = r1.max(r);
            c0 = c0.min(c);
            c1 = c1.max(c);
            let mut visit = |j: usize| {
                if missing[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if r > 0 {
                visit(i - w);
            }
            if r + 1 < h {
                visit(i + w);
            }
            if c > 0 {
                visit(i - 1);
            }
            if c + 1 < w {
                visit(i + 1);
            }
        }
        out.push(Window {
            top: r0 as i64,
            left: c0 as i64,
            height: (r1 - r0 + 1) as i64,
            width: (c1 - c0 + 1) as i64,
        });
    }
    out
}

/// The windows that cover `regions` of an `h × w` image: each region grown by its own larger
/// side on every side (so the hole is at most a third of its window), to at least `side`
/// pixels where the image allows, clipped; overlapping windows merged until none overlap.
pub fn context_windows(regions: &[Window], h: i64, w: i64, side: i64) -> Vec<Window> {
    let grow = |r: &Window| {
        let g = r.height.max(r.width);
        let span = |lo: i64, len: i64, full: i64| {
            let want = (len + 2 * g).max(side).min(full);
            let start = (lo + len / 2 - want / 2).clamp(0, full - want);
            (start, want)
        };
        let (top, height) = span(r.top, r.height, h);
        let (left, width) = span(r.left, r.width, w);
        Window {
            top,
            left,
            height,
            width,
        }
    };
    let mut wins: Vec<Window> = regions.iter().map(grow).collect();
    loop {
        let mut merged = false;
        'outer: for i in 0..wins.len() {
            for j in i + 1..wins.len() {
                if wins[i].overlaps(&wins[j]) {
                    let u = wins[i].union(&wins[j]);
                    wins.swap_remove(j);
                    wins[i] = u;
                    merged = true;
                    break 'outer;
                }
            }
        }
        if !merged {
            return wins;
        }
    }
}

/// The low-resolution size of a `h × w` window for a model of side `side` and size multiple
/// `m`: the longer side at most `side` (never enlarged), both rounded to multiples of `m`.
pub fn thumbnail_size(h: i64, w: i64, side: i64, m: i64) -> (i64, i64) {
    let scale = (side as f64 / h.max(w) as f64).min(1.0);
    let round = |v: i64| (((v as f64 * scale) / m as f64).round() as i64).max(1) * m;
    (round(h), round(w))
}

/// Restore `y` (the raw measurement of `op`) window by window. `one_pass` runs the generator
/// once on a lifted measurement `(B, C, h, w)` whose sides are multiples of `multiple` and
/// returns its estimate in [-1, 1]; `progress(done, total)` returns false to cancel.
pub fn restore_windowed(
    op: &dyn Operator,
    y: &Tensor,
    side: i64,
    multiple: i64,
    one_pass: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Tensor> {
    if side < multiple || side % multiple != 0 {
        return Err(EngineError::InvalidInput(format!(
            "restore window {side} must be a positive multiple of {multiple}"
        )));
    }
    tch::no_grad(|| {
        let y_img = op.lift(y).to_kind(Kind::Float);
        let (_, _, h, w) = y_img
            .size4()
            .map_err(|_| EngineError::InvalidInput("expected a (B, C, H, W) batch".into()))?;
        let keep = op.keep_mask();
        let (wins, hole) = match &keep {
            Some(k) => {
                let missing: Vec<bool> = Vec::<f32>::try_from(
                    &k.to_device(tch::Device::Cpu)
                        .to_kind(Kind::Float)
                        .reshape([-1]),
                )?
                .iter()
                .map(|v| *v == 0.0)
                .collect();
                let regions = missing_regions(&missing, h as usize, w as usize);
                (
                    context_windows(&regions, h, w, side),
                    Some(k.eq(0.0).to_kind(Kind::Float)),
                )
            }
            None => (
                vec![Window {
                    top: 0,
                    left: 0,
                    height: h,
                    width: w,
                }],
                None,
            ),
        };
        let est = y_img.copy();
        let total = wins.len();
        for (i, win) in wins.iter().enumerate() {
            let crop = y_img
                .narrow(2, win.top, win.height)
                .narrow(3, win.left, win.width);
            let (th, tw) = thumbnail_size(win.height, win.width, side, multiple);
            let thumb = crop.internal_upsample_bilinear2d_aa([th, tw], false, None, None);
            let low = one_pass(&thumb)?;
            let up = low
                .upsample_bicubic2d([win.height, win.width], false, None, None)
                .clamp(-1.0, 1.0);
            let mut region = est
                .narrow(2, win.top, win.height)
                .narrow(3, win.left, win.width);
            match &hole {
                Some(hm) => {
                    let m = hm
                        .narrow(2, win.top, win.height)
                        .narrow(3, win.left, win.width);
                    let filled = &up * &m + &region * (1.0 - &m);
                    region.copy_(&filled);
                }
                None => region.copy_(&up),
            }
            if !progress(i + 1, total) {
                return Err(EngineError::Cancelled);
            }
        }
        let projected = &est + op.pinv(&(y - op.forward(&est)));
        Ok(projected.clamp(-1.0, 1.0))
    })
}

/// How many times the measurement denoiser runs over an answer: once, or twice when the
/// measurement has fewer channels than the image (colorization's one gray channel). Then the
/// answer's noise is the same in all three channels: luminance noise √3 times what the
/// denoiser met in training (noise drawn per channel), which one pass leaves partly in place.
/// Measured on the 22 crops of docs/results.md: colorization SSIM 0.867 after one pass, 0.891
/// after two (docs/models.md, "Measurement denoiser").
pub fn denoiser_passes(op: &dyn Operator, answer: &Tensor) -> usize {
    let (_, c, h, w) = answer.size4().expect("a (B, C, H, W) answer");
    if op.measurement_shape(c, h, w).0 < c {
        2
    } else {
        1
    }
}

/// Step 4 of the module's recipe: `answer` with its measured part replaced by that of
/// `cleaned` (the answer after the measurement denoiser), `x̂ + A⁺A(x̃ − x̂)`, clamped to
/// [-1, 1]. For inpainting `A⁺A` keeps the observed pixels (the holes stay the window
/// model's); for colorization it is the gray component (the colour stays the window model's,
/// its luminance becomes the denoised one).
pub fn clean_measured_part(op: &dyn Operator, answer: &Tensor, cleaned: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let delta = cleaned - answer;
        (answer + op.pinv(&op.forward(&delta))).clamp(-1.0, 1.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators;
    use davi_sdk::OperatorSpec;
    use tch::Device;

    #[test]
    fn regions_are_connected_components() {
        // two holes: a 2x2 square and a single pixel
        let (h, w) = (6, 7);
        let mut m = vec![false; h * w];
        for (r, c) in [(1, 1), (1, 2), (2, 1), (2, 2), (4, 6)] {
            m[r * w + c] = true;
        }
        let mut got = missing_regions(&m, h, w);
        got.sort_by_key(|r| (r.top, r.left));
        assert_eq!(
            got,
            vec![
                Window {
                    top: 1,
                    left: 1,
                    height: 2,
                    width: 2
                },
                Window {
                    top: 4,
                    left: 6,
                    height: 1,
                    width: 1
                }
            ]
        );
    }

    #[test]
    fn windows_hold_context_and_never_overlap() {
        let regions = [
            Window {
                top: 100,
                left: 100,
                height: 20,
                width: 10,
            },
            Window {
                top: 130,
                left: 100,
                height: 5,
                width: 5,
            },
            Window {
                top: 900,
                left: 900,
                height: 30,
                width: 30,
            },
        ];
        let wins = context_windows(&regions, 1000, 1000, 64);
        for (i, a) in wins.iter().enumerate() {
            assert!(
                a.top >= 0 && a.left >= 0 && a.bottom() <= 1000 && a.right() <= 1000,
                "{a:?}"
            );
            for b in &wins[i + 1..] {
                assert!(!a.overlaps(b));
            }
        }
        for r in &regions {
            let inside = wins
                .iter()
                .filter(|w| {
                    w.top <= r.top
                        && w.left <= r.left
                        && w.bottom() >= r.bottom()
                        && w.right() >= r.right()
                })
                .count();
            assert_eq!(inside, 1, "{r:?} in {wins:?}");
        }
        // the far hole: 30 px grown by 30 on every side
        assert!(wins
            .iter()
            .any(|w| w.height == 90 && w.width == 90 && w.bottom() == 960));
    }

    #[test]
    fn thumbnails_shrink_only_and_keep_the_multiple() {
        assert_eq!(thumbnail_size(256, 256, 64, 4), (64, 64));
        assert_eq!(thumbnail_size(768, 1024, 64, 4), (48, 64));
        assert_eq!(thumbnail_size(30, 50, 64, 4), (32, 52));
    }

    #[test]
    fn inpainting_keeps_observed_pixels_and_fills_only_the_hole() {
        let _rng = crate::test_rng::seeded(0);
        let spec = OperatorSpec::for_task("inpaint").unwrap();
        let (h, w) = (96, 128);
        let op = operators::build(&spec, 3, h, w, Device::Cpu).unwrap();
        let x = Tensor::rand([1, 3, h, w], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let y = op.forward(&x);
        // a stand-in network that answers a constant 0.5 everywhere
        let mut calls = 0;
        let mut pass = |t: &Tensor| {
            calls += 1;
            Ok::<Tensor, EngineError>(t.ones_like() * 0.5)
        };
        let out = restore_windowed(op.as_ref(), &y, 64, 4, &mut pass, &mut |_, _| true).unwrap();
        assert_eq!(calls, 1);
        let keep = op.keep_mask().unwrap();
        let outside = ((&out - &y) * &keep).abs().max().double_value(&[]);
        assert!(outside < 1e-6, "{outside}");
        let hole: Tensor = 1.0 - &keep;
        let inside = ((&out - 0.5) * hole).abs().max().double_value(&[]);
        assert!(inside < 1e-5, "{inside}");
    }

    #[test]
    fn the_measured_part_comes_from_the_denoised_answer() {
        let _rng = crate::test_rng::seeded(0);
        let (h, w) = (40, 56);
        let rand = || Tensor::rand([1, 3, h, w], (Kind::Float, Device::Cpu)) * 1.6 - 0.8;
        // Inpainting: observed pixels from the cleaned image, the hole from the answer.
        let spec = OperatorSpec::for_task("inpaint").unwrap();
        let op = operators::build(&spec, 3, h, w, Device::Cpu).unwrap();
        let (answer, cleaned) = (rand(), rand());
        let out = clean_measured_part(op.as_ref(), &answer, &cleaned);
        let keep = op.keep_mask().unwrap();
        let hole: Tensor = 1.0 - &keep;
        let outside = ((&out - &cleaned) * &keep).abs().max().double_value(&[]);
        let inside = ((&out - &answer) * &hole).abs().max().double_value(&[]);
        assert!(outside < 1e-6 && inside < 1e-6, "{outside} {inside}");
        // Colorization: the gray of the cleaned image, the colour of the answer.
        let spec = OperatorSpec::for_task("colorize").unwrap();
        let op = operators::build(&spec, 3, h, w, Device::Cpu).unwrap();
        let (answer, cleaned) = (rand() * 0.5, rand() * 0.5);
        let out = clean_measured_part(op.as_ref(), &answer, &cleaned);
        let gray = (op.forward(&out) - op.forward(&cleaned))
            .abs()
            .max()
            .double_value(&[]);
        let chroma = |t: &Tensor| t - t.mean_dim(1, true, Kind::Float);
        let colour = (chroma(&out) - chroma(&answer))
            .abs()
            .max()
            .double_value(&[]);
        assert!(gray < 1e-4 && colour < 1e-3, "{gray} {colour}");
    }

    #[test]
    fn a_gray_measurement_is_denoised_twice() {
        let answer = Tensor::zeros([1, 3, 16, 24], (Kind::Float, Device::Cpu));
        for (task, passes) in [("inpaint", 1), ("colorize", 2)] {
            let spec = OperatorSpec::for_task(task).unwrap();
            let op = operators::build(&spec, 3, 16, 24, Device::Cpu).unwrap();
            assert_eq!(denoiser_passes(op.as_ref(), &answer), passes, "{task}");
        }
    }

    #[test]
    fn colorization_keeps_the_measured_gray() {
        let _rng = crate::test_rng::seeded(0);
        let spec = OperatorSpec::for_task("colorize").unwrap();
        let (h, w) = (40, 72);
        let op = operators::build(&spec, 3, h, w, Device::Cpu).unwrap();
        let x = Tensor::rand([1, 3, h, w], (Kind::Float, Device::Cpu)) * 1.6 - 0.8;
        let y = op.forward(&x);
        let mut pass = |t: &Tensor| Ok::<Tensor, EngineError>(t * 0.5);
        let out = restore_windowed(op.as_ref(), &y, 32, 4, &mut pass, &mut |_, _| true).unwrap();
        let d = (op.forward(&out) - &y).abs().max().double_value(&[]);
        assert!(d < 1e-4, "{d}");
    }
}
