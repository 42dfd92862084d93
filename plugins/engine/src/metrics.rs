//! Image quality metrics on [0, 1] data, as the official evaluation computes them
//! (docs/algorithm.md §7): PSNR with data range 1 over all values of an image, and SSIM
//! (Wang et al. 2004: 11×11 Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03, per channel,
//! averaged).
use tch::{Kind, Tensor};

/// Per-image PSNR in dB of `(B, C, H, W)` batches in [0, 1]. Identical images give +inf.
pub fn psnr(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let mse = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .square()
        .flatten(1, -1)
        .mean_dim(1, false, Kind::Double);
    Vec::<f64>::try_from(mse)
        .expect("f64")
        .into_iter()
        .map(|m| {
            if m == 0.0 {
                f64::INFINITY
            } else {
                -10.0 * m.log10()
            }
        })
        .collect()
}

/// Per-image SSIM of `(B, C, H, W)` batches in [0, 1] (valid-region Gaussian windows).
pub fn ssim(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let (_, c, h, w) = a.size4().expect("4-D");
    let win = 11.min(h).min(w);
    let sigma = 1.5;
    let r = (win - 1) as f64 / 2.0;
    let g: Vec<f64> = (0..win)
        .map(|i| (-((i as f64 - r).powi(2)) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = g.iter().sum();
    let g = Tensor::from_slice(&g.iter().map(|v| v / s).collect::<Vec<_>>()).to_device(a.device());
    let k = (g.view([win, 1]) * g.view([1, win]))
        .view([1, 1, win, win])
        .repeat([c, 1, 1, 1]);
    let (x, y) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let k = k.to_kind(Kind::Double);
    let blur = |t: &Tensor| t.conv2d(&k, None::<Tensor>, [1, 1], [0, 0], [1, 1], c);
    let (mx, my) = (blur(&x), blur(&y));
    let sxx = blur(&(&x * &x)) - &mx * &mx;
    let syy = blur(&(&y * &y)) - &my * &my;
    let sxy = blur(&(&x * &y)) - &mx * &my;
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let map = ((&mx * &my * 2.0 + c1) * (sxy * 2.0 + c2))
        / ((mx.square() + my.square() + c1) * (sxx + syy + c2));
    Vec::<f64>::try_from(map.flatten(1, -1).mean_dim(1, false, Kind::Double)).expect("f64")
}

/// How strongly the error of `restored` against `reference` (`(1, C, H, W)`, [0, 1]) is
/// organised on a lattice of period `period` pixels anchored at the top-left corner — the
/// lattice that tiles of stride `period` leave (a phantom hole in every tile, a colour per
/// tile, seams). The error energy (summed over channels) is averaged into a column profile and
/// a row profile, smoothed over 8 pixels; each profile is folded modulo the period, and the fold's
/// contrast (standard deviation over mean) is compared with the median contrast of nearby periods
/// that no tile grid shares. Returns the larger of the two axes' ratios: about 1 when the error has
/// no preference for the lattice, several times that when tiles show.
pub fn lattice_score(restored: &Tensor, reference: &Tensor, period: i64) -> f64 {
    let e = (restored.to_kind(Kind::Double) - reference.to_kind(Kind::Double))
        .square()
        .sum_dim_intlist(1i64, false, Kind::Double)
        .squeeze_dim(0);
    // An 8-wide moving average first removes structure of period 8, 4 and 2: the network's
    // own resampling grid (stride-2 convolutions), which any fold with a period divisible by
    // 4 would otherwise report. Tile lattices (period 16 and more) survive it.
    let smooth =
        |v: Vec<f64>| -> Vec<f64> { v.windows(8).map(|w| w.iter().sum::<f64>() / 8.0).collect() };
    let cols = smooth(Vec::<f64>::try_from(e.mean_dim(0i64, false, Kind::Double)).expect("f64"));
    let rows = smooth(Vec::<f64>::try_from(e.mean_dim(1i64, false, Kind::Double)).expect("f64"));
    let contrast = |profile: &[f64], p: usize| -> f64 {
        let mut sum = vec![0.0; p];
        let mut n = vec![0usize; p];
        for (i, v) in profile.iter().enumerate() {
            sum[i % p] += v;
            n[i % p] += 1;
        }
        let fold: Vec<f64> = sum
            .iter()
            .zip(&n)
            .map(|(s, k)| s / (*k).max(1) as f64)
            .collect();
        let m = fold.iter().sum::<f64>() / p as f64;
        let var = fold.iter().map(|v| (v - m).powi(2)).sum::<f64>() / p as f64;
        if m > 0.0 {
            var.sqrt() / m
        } else {
            0.0
        }
    };
    let p = period.max(2) as usize;
    let ratio = |profile: &[f64]| -> f64 {
        if profile.len() < 3 * p {
            return 1.0;
        }
        // Periods within ±40 % that are not near a multiple or divisor of p.
        let mut null: Vec<f64> = ((p * 6 / 10).max(2)..=p * 14 / 10)
            .filter(|&q| {
                let (a, b) = (q.max(p) as f64, q.min(p) as f64);
                let r = a / b;
                (r - r.round()).abs() > 0.15 && q.abs_diff(p) > 2
            })
            .map(|q| contrast(profile, q))
            .collect();
        if null.is_empty() {
            return 1.0;
        }
        null.sort_by(|a, b| a.total_cmp(b));
        let med = null[null.len() / 2];
        if med > 0.0 {
            contrast(profile, p) / med
        } else {
            1.0
        }
    };
    ratio(&cols).max(ratio(&rows))
}

/// Arithmetic mean of finite values (infinite PSNRs of identical images are capped at 100 dB).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().map(|x| x.min(100.0)).sum::<f64>() / v.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn known_values() {
        let _rng = crate::test_rng::seeded(0);
        let a = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert!(psnr(&a, &a)[0].is_infinite());
        assert!((ssim(&a, &a)[0] - 1.0).abs() < 1e-9);
        // constant offset 0.1 -> MSE 0.01 -> 20 dB
        let p = psnr(&a, &(&a + 0.1));
        assert!((p[0] - 20.0).abs() < 1e-4, "{p:?}");
        // noise sigma 0.05 -> MSE 0.0025 -> ~26.02 dB
        tch::manual_seed(0);
        let n = Tensor::randn([1, 3, 256, 256], (Kind::Float, Device::Cpu)) * 0.05;
        let z = Tensor::zeros([1, 3, 256, 256], (Kind::Float, Device::Cpu));
        assert!((psnr(&z, &n)[0] - 26.02).abs() < 0.1);
        // SSIM drops for noise and stays in [-1, 1]
        let s = ssim(
            &(&a * 0.5 + 0.25),
            &(&a * 0.5 + 0.25 + Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.1),
        );
        assert!(s[0] < 0.95 && s[0] > -1.0, "{s:?}");
    }
}

#[cfg(test)]
mod lattice_tests {
    use super::*;

    #[test]
    fn lattice_score_sees_tiles_and_not_content() {
        let _rng = crate::test_rng::seeded(3);
        let reference = Tensor::rand([1, 3, 192, 256], (Kind::Float, tch::Device::Cpu));
        // smooth content error with no lattice
        let smooth =
            reference.shallow_clone()
                + Tensor::randn([1, 3, 12, 16], (Kind::Float, tch::Device::Cpu))
                    .upsample_bilinear2d([192, 256], false, None, None)
                    * 0.05;
        let calm = lattice_score(&smooth, &reference, 24);
        // the same plus a dark dot in the middle of every 24-px cell
        let dots = Tensor::zeros([1, 1, 192, 256], (Kind::Float, tch::Device::Cpu));
        for y in (0..192).step_by(24) {
            for x in (0..256).step_by(24) {
                let _ = dots
                    .narrow(2, y + 8, 8.min(192 - y - 8))
                    .narrow(3, x + 8, 8.min(256 - x - 8))
                    .fill_(0.1);
            }
        }
        let tiled = &smooth - dots;
        let bad = lattice_score(&tiled, &reference, 24);
        assert!(calm < 2.0, "{calm}");
        assert!(bad > 4.0, "{bad}");
    }
}
