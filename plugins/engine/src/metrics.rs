//! Image quality metrics on [0, 1] data, as the official evaluation computes them (reference
//! §7): PSNR with data range 1 over all values of an image, and SSIM (Wang et al. 2004:
//! 11×11 Gaussian window σ = 1.5, K1 = 0.01, K2 = 0.03, per channel, averaged).
use tch::{Kind, Tensor};

/// Per-image PSNR in dB of `(B, C, H, W)` batches in [0, 1]. Identical images give +inf.
pub fn psnr(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let mse = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).square().flatten(1, -1).mean_dim(1, false, Kind::Double);
    Vec::<f64>::try_from(mse).expect("f64").into_iter().map(|m| if m == 0.0 { f64::INFINITY } else { -10.0 * m.log10() }).collect()
}

/// Per-image SSIM of `(B, C, H, W)` batches in [0, 1] (valid-region Gaussian windows).
pub fn ssim(a: &Tensor, b: &Tensor) -> Vec<f64> {
    let (_, c, h, w) = a.size4().expect("4-D");
    let win = 11.min(h).min(w);
    let sigma = 1.5;
    let r = (win - 1) as f64 / 2.0;
    let g: Vec<f64> = (0..win).map(|i| (-((i as f64 - r).powi(2)) / (2.0 * sigma * sigma)).exp()).collect();
    let s: f64 = g.iter().sum();
    let g = Tensor::from_slice(&g.iter().map(|v| v / s).collect::<Vec<_>>()).to_device(a.device());
    let k = (g.view([win, 1]) * g.view([1, win])).view([1, 1, win, win]).repeat([c, 1, 1, 1]);
    let (x, y) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let k = k.to_kind(Kind::Double);
    let blur = |t: &Tensor| t.conv2d(&k, None::<Tensor>, [1, 1], [0, 0], [1, 1], c);
    let (mx, my) = (blur(&x), blur(&y));
    let sxx = blur(&(&x * &x)) - &mx * &mx;
    let syy = blur(&(&y * &y)) - &my * &my;
    let sxy = blur(&(&x * &y)) - &mx * &my;
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let map = ((&mx * &my * 2.0 + c1) * (sxy * 2.0 + c2)) / ((mx.square() + my.square() + c1) * (sxx + syy + c2));
    Vec::<f64>::try_from(map.flatten(1, -1).mean_dim(1, false, Kind::Double)).expect("f64")
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
        let s = ssim(&(&a * 0.5 + 0.25), &(&a * 0.5 + 0.25 + Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.1));
        assert!(s[0] < 0.95 && s[0] > -1.0, "{s:?}");
    }
}
