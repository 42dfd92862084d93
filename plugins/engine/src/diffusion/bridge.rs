//! The I2SB-style bridge DAVI uses to form generator inputs (docs/algorithm.md §3.3, §3.4).
//!
//! `betas_bridge` mirrors the first half of the i2sb betas; `std_fwd`/`std_bwd` are square
//! roots of its forward/backward cumulative sums; `mu_x0 + mu_x1 = 1` interpolate between
//! the clean image and the lifted measurement. The perturbation std is `(1 - abar_t)·h`
//! with the DDPM `abar` (quirk Q2), and the generator output is
//! `x̂ = tanh(x_t - std_fwd[t]·ε̂)` (quirk Q5).
use super::schedule::{gather, Diffusion};
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct Bridge {
    pub std_fwd: Vec<f64>,
    pub std_bwd: Vec<f64>,
    pub mu_x0: Vec<f64>,
    pub mu_x1: Vec<f64>,
    pub std_sb: Vec<f64>,
    /// `1 - abar_t` of the DDPM schedule: the perturbation scale per unit `h`.
    pub perturb_scale: Vec<f64>,
}

impl Bridge {
    pub fn new(diffusion: &Diffusion) -> Self {
        let n = diffusion.num_steps();
        let half = n / 2;
        let mut betas: Vec<f64> = diffusion.betas[..half].to_vec();
        betas.extend(diffusion.betas[..n - half].iter().rev());
        let mut fwd = Vec::with_capacity(n);
        let mut acc = 0.0;
        for b in &betas {
            acc += b;
            fwd.push(acc);
        }
        let mut bwd = vec![0.0; n];
        let mut acc = 0.0;
        for i in (0..n).rev() {
            acc += betas[i];
            bwd[i] = acc;
        }
        let mu_x0 = (0..n).map(|i| bwd[i] / (fwd[i] + bwd[i])).collect();
        let mu_x1 = (0..n).map(|i| fwd[i] / (fwd[i] + bwd[i])).collect();
        let std_sb = (0..n)
            .map(|i| (fwd[i] * bwd[i] / (fwd[i] + bwd[i])).sqrt())
            .collect();
        Bridge {
            std_fwd: fwd.iter().map(|v| v.sqrt()).collect(),
            std_bwd: bwd.iter().map(|v| v.sqrt()).collect(),
            mu_x0,
            mu_x1,
            std_sb,
            perturb_scale: diffusion.alphas_cumprod.iter().map(|a| 1.0 - a).collect(),
        }
    }

    /// `q_sample_i2sb`: `mu_x0[t] x0 + mu_x1[t] x1 + (1 - abar_t)·h·z`, detached.
    /// `x0` is the clean image (the lifted measurement at inference), `x1` the lifted
    /// measurement, `z` standard normal noise supplied by the caller.
    pub fn perturbed_interpolation(
        &self,
        t: &Tensor,
        x0: &Tensor,
        x1: &Tensor,
        h: f64,
        z: &Tensor,
    ) -> Tensor {
        // Accumulated in place (the same arithmetic): one image-sized temporary fewer, which
        // matters for whole photographs (docs/performance.md).
        let mut out = gather(&self.mu_x0, t, x0) * x0;
        out += gather(&self.mu_x1, t, x1) * x1;
        if h != 0.0 {
            out += gather(&self.perturb_scale, t, x0) * h * z;
        }
        out.detach()
    }

    /// The generator's image estimate: `tanh(x_t - std_fwd[t]·ε̂)` (compute_pred_x0 + tanh).
    pub fn generator_output(&self, t: &Tensor, x_t: &Tensor, eps: &Tensor) -> Tensor {
        (x_t - gather(&self.std_fwd, t, x_t) * eps).tanh()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bridge table of docs/algorithm.md §3.5.
    #[test]
    fn bridge_matches_reference_table() {
        let b = Bridge::new(&Diffusion::davi());
        let rows = [
            (0usize, 0.01, 1.48132, 0.999954, 4.557e-5),
            (249, 0.44327, 1.41409, 0.91053, 0.08947),
            (499, 1.04745, 1.05018, 0.50130, 0.49870),
            (749, 1.41344, 0.44534, 0.09031, 0.90969),
            (999, 1.48132, 0.01, 4.557e-5, 0.999954),
        ];
        for (t, f, bw, m0, m1) in rows {
            let ok = |a: f64, e: f64| (a - e).abs() <= 1e-4 * e.abs().max(1e-3) + 1e-8;
            assert!(ok(b.std_fwd[t], f), "std_fwd[{t}]={}", b.std_fwd[t]);
            assert!(ok(b.std_bwd[t], bw), "std_bwd[{t}]={}", b.std_bwd[t]);
            assert!(ok(b.mu_x0[t], m0), "mu_x0[{t}]={}", b.mu_x0[t]);
            assert!(ok(b.mu_x1[t], m1), "mu_x1[{t}]={}", b.mu_x1[t]);
            assert!((b.mu_x0[t] + b.mu_x1[t] - 1.0).abs() < 1e-12);
        }
        assert!((b.perturb_scale[999] - 0.999267).abs() < 1e-6);
    }
}
