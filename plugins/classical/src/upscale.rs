//! Super-resolution without learning: Lanczos-3 interpolation and, for noiseless
//! measurements, iterative back-projection against the spec's down-sampling operator.
//!
//! Why: Lanczos-3 is the standard high-quality interpolator (what image editors call
//! "Lanczos"). Back-projection (Irani & Peleg) adds the knowledge of how the low-resolution
//! image was made: `x ← x + U(y − D(x))` with `D` the spec's down-sampling (block mean for
//! `avg_pool`, strided cubic for `bicubic`) and `U` the Lanczos up-sampler, until `D(x) ≈ y`.
//! Making `D(x) = y` exact inverts the low-pass `D U`, which amplifies measurement noise and
//! ringing at edges, so it is only used when the spec says the measurement is (almost)
//! noiseless ([`back_projection_steps`]). Measured on 64×64 synthetic images (factors 2 and
//! 4): noiseless smooth images gain 1–1.6 dB from 3 steps; with the default noise
//! (`noise_sigma = 0.05`) 3 steps lose 0.6–2 dB, and on images with sharp edges they lose
//! about 0.1 dB even without noise.
//!
//! References: C. E. Duchon, "Lanczos filtering in one and two dimensions" (J. Appl. Meteor.
//! 1979); M. Irani, S. Peleg, "Improving resolution by image registration" (CVGIP 1991). The
//! down-sampling operators follow docs/algorithm.md §4.2.3 (`avg_pool`: mean over
//! factor×factor blocks; `bicubic`: cubic kernel a = −0.5 stretched by the factor, 4·factor
//! taps, reflective borders).

use davi_sdk::spec::DownsampleMethod;
use davi_sdk::{DaviError, Progress};

/// Back-projection steps for measurement noise of standard deviation `noise` (`[0, 1]` units):
/// 3 when it is below a quarter of an 8-bit level, none otherwise (see the module docs).
pub fn back_projection_steps(noise: f64) -> usize {
    if noise < 0.25 / 255.0 {
        3
    } else {
        0
    }
}

/// Lanczos window of order `a`.
fn lanczos(x: f64, a: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else if x.abs() >= a {
        0.0
    } else {
        let px = std::f64::consts::PI * x;
        a * px.sin() * (px / a).sin() / (px * px)
    }
}

/// Keys' cubic convolution kernel with `a = -0.5`.
fn cubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x <= 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    } else {
        0.0
    }
}

/// Per output sample: the first source index and the normalised weights.
type Taps = Vec<(usize, Vec<f32>)>;

/// Lanczos-3 taps to map `n_in` samples onto `n_out` (centre-aligned, borders clamped).
fn lanczos_taps(n_in: usize, n_out: usize) -> Taps {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let s = (o as f64 + 0.5) * scale - 0.5;
            let first = s.floor() as i64 - 2;
            let mut idx = Vec::with_capacity(6);
            let mut wts = Vec::with_capacity(6);
            for i in first..first + 6 {
                idx.push(i.clamp(0, n_in as i64 - 1) as usize);
                wts.push(lanczos(s - i as f64, 3.0));
            }
            // Clamped indices repeat the border sample: fold them into a dense run.
            let lo = *idx.iter().min().unwrap_or(&0);
            let hi = *idx.iter().max().unwrap_or(&0);
            let mut dense = vec![0.0f64; hi - lo + 1];
            for (i, w) in idx.iter().zip(&wts) {
                dense[i - lo] += w;
            }
            let sum: f64 = dense.iter().sum();
            (lo, dense.iter().map(|w| (w / sum) as f32).collect())
        })
        .collect()
}

/// Taps of the spec's down-sampling by `factor` from `n_in` samples.
fn downsample_taps(n_in: usize, factor: usize, method: DownsampleMethod) -> Taps {
    let n_out = n_in / factor;
    match method {
        DownsampleMethod::AvgPool => (0..n_out)
            .map(|o| (o * factor, vec![1.0 / factor as f32; factor]))
            .collect(),
        DownsampleMethod::Bicubic => {
            let f = factor as f64;
            let taps = 4 * factor;
            let raw: Vec<f64> = (0..taps)
                .map(|i| cubic((i as f64 - 2.0 * f + 0.5) / f))
                .collect();
            let sum: f64 = raw.iter().sum();
            (0..n_out)
                .map(|o| {
                    // Sample o is centred on input o·f + (f−1)/2; tap t sits at offset
                    // t − 2f + 1/2 from there, i.e. on input o·f + t − 3f/2.
                    let start = (o * factor) as i64 - (3 * factor / 2) as i64;
                    let mut dense = vec![0.0f64; n_in];
                    for (t, w) in raw.iter().enumerate() {
                        let i = reflect(start + t as i64, n_in);
                        dense[i] += w / sum;
                    }
                    let lo = dense.iter().position(|w| *w != 0.0).unwrap_or(0);
                    let hi = dense.iter().rposition(|w| *w != 0.0).unwrap_or(0);
                    (lo, dense[lo..=hi].iter().map(|w| *w as f32).collect())
                })
                .collect()
        }
    }
}

/// Mirror an index into `0..n` without repeating the edge sample (numpy `reflect`).
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

/// Apply row taps then column taps: `src` is `w x h`, the result `ow x oh`.
fn separable(src: &[f32], w: usize, h: usize, cols: &Taps, rows: &Taps) -> Vec<f32> {
    let (ow, oh) = (cols.len(), rows.len());
    let mut tmp = vec![0.0f32; ow * h];
    for y in 0..h {
        let row = &src[y * w..(y + 1) * w];
        for (x, (lo, wts)) in cols.iter().enumerate() {
            tmp[y * ow + x] = wts.iter().zip(&row[*lo..]).map(|(a, b)| a * b).sum();
        }
    }
    let mut out = vec![0.0f32; ow * oh];
    for (y, (lo, wts)) in rows.iter().enumerate() {
        let dst = &mut out[y * ow..(y + 1) * ow];
        for (t, wt) in wts.iter().enumerate() {
            let sy = lo + t;
            for (d, s) in dst.iter_mut().zip(&tmp[sy * ow..(sy + 1) * ow]) {
                *d += wt * s;
            }
        }
    }
    out
}

/// Lanczos-3 resampling of one plane.
pub fn lanczos_resize(src: &[f32], w: usize, h: usize, ow: usize, oh: usize) -> Vec<f32> {
    separable(src, w, h, &lanczos_taps(w, ow), &lanczos_taps(h, oh))
}

/// Up-sample one `w x h` plane by `factor`: Lanczos-3, then `iterations` back-projection
/// steps against `method`. Output in `[0, 1]`.
pub fn upscale(
    y: &[f32],
    w: usize,
    h: usize,
    factor: usize,
    method: DownsampleMethod,
    iterations: usize,
    progress: &mut Progress<'_>,
) -> Result<Vec<f32>, DaviError> {
    let (ow, oh) = (w * factor, h * factor);
    let up_cols = lanczos_taps(w, ow);
    let up_rows = lanczos_taps(h, oh);
    let down_cols = downsample_taps(ow, factor, method);
    let down_rows = downsample_taps(oh, factor, method);
    let mut x = separable(y, w, h, &up_cols, &up_rows);
    for it in 0..iterations {
        let residual: Vec<f32> = separable(&x, ow, oh, &down_cols, &down_rows)
            .iter()
            .zip(y)
            .map(|(d, m)| m - d)
            .collect();
        let step = separable(&residual, w, h, &up_cols, &up_rows);
        for (v, s) in x.iter_mut().zip(&step) {
            *v = (*v + s).clamp(-0.25, 1.25);
        }
        progress.update((it + 1) as f32 / iterations as f32)?;
    }
    progress.update(1.0)?;
    x.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanczos_keeps_constants_and_interpolates_smoothly() {
        let src = vec![0.4f32; 6 * 4];
        let up = lanczos_resize(&src, 6, 4, 24, 16);
        assert!(up.iter().all(|v| (v - 0.4).abs() < 1e-6));
        // A linear ramp stays (nearly) linear inside the image.
        let ramp: Vec<f32> = (0..16).map(|i| i as f32 / 16.0).collect();
        let up = lanczos_resize(&ramp, 16, 1, 32, 1);
        for (x, v) in up.iter().enumerate().take(26).skip(6) {
            let want = ((x as f32 + 0.5) / 2.0 - 0.5) / 16.0;
            assert!((v - want).abs() < 2e-3, "{x}: {v} vs {want}");
        }
    }

    #[test]
    fn downsampling_taps_sum_to_one_and_reflect() {
        for method in [DownsampleMethod::AvgPool, DownsampleMethod::Bicubic] {
            for (lo, w) in downsample_taps(32, 4, method) {
                assert!(lo < 32);
                assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
        assert_eq!((reflect(-1, 5), reflect(5, 5), reflect(2, 5)), (1, 3, 2));
    }

    #[test]
    fn back_projection_makes_the_result_consistent_with_the_measurement() {
        let (w, h, f) = (8, 8, 2);
        let y: Vec<f32> = (0..w * h)
            .map(|i| 0.3 + 0.4 * (((i * 37) % 17) as f32 / 17.0))
            .collect();
        let x = upscale(
            &y,
            w,
            h,
            f,
            DownsampleMethod::AvgPool,
            20,
            &mut Progress::none(),
        )
        .unwrap();
        let d = separable(
            &x,
            w * f,
            h * f,
            &downsample_taps(w * f, f, DownsampleMethod::AvgPool),
            &downsample_taps(h * f, f, DownsampleMethod::AvgPool),
        );
        let err = d
            .iter()
            .zip(&y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(err < 0.01, "max residual {err}");
    }
}
