//! Beta schedules and the DDPM arrays derived from them (docs/algorithm.md §3.1–3.2).
//!
//! DAVI builds every coefficient from the `i2sb` schedule, `beta_t = linspace(√1e-4, √0.02)²`,
//! although both teachers were trained with `linear` (quirk Q1). A faithful port keeps
//! `i2sb`; the others are here for priors trained by this project and for DPS baselines.
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

/// Which beta schedule (names as in the official `get_named_beta_schedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    Cosine,
    #[default]
    I2sb,
}

impl BetaSchedule {
    /// The `T` betas of this schedule, f64.
    pub fn betas(self, steps: usize) -> Vec<f64> {
        let t = steps as f64;
        let scale = 1000.0 / t;
        let linspace = |a: f64, b: f64| -> Vec<f64> {
            if steps == 1 {
                return vec![a];
            }
            (0..steps)
                .map(|i| a + (b - a) * i as f64 / (t - 1.0))
                .collect()
        };
        match self {
            BetaSchedule::Linear => linspace(scale * 1e-4, scale * 0.02),
            BetaSchedule::I2sb => linspace((scale * 1e-4).sqrt(), (scale * 0.02).sqrt())
                .into_iter()
                .map(|b| b * b)
                .collect(),
            BetaSchedule::Cosine => {
                let abar = |u: f64| {
                    (((u / t) + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..steps)
                    .map(|i| (1.0 - abar(i as f64 + 1.0) / abar(i as f64)).min(0.999))
                    .collect()
            }
        }
    }
}

/// All per-timestep DDPM arrays of one schedule (docs/algorithm.md §3.2), f64.
#[derive(Clone, Debug)]
pub struct Diffusion {
    pub schedule: BetaSchedule,
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    pub sqrt_alphas_cumprod: Vec<f64>,
    pub sqrt_one_minus_alphas_cumprod: Vec<f64>,
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
    pub posterior_variance: Vec<f64>,
    pub posterior_log_variance_clipped: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
    /// `sqrt(abar / (1 - abar))`: a square-root SNR despite the official name (quirk Q4).
    pub snr: Vec<f64>,
}

impl Diffusion {
    pub fn new(schedule: BetaSchedule, steps: usize) -> Self {
        Self::from_betas(schedule, schedule.betas(steps))
    }

    /// The official DAVI setting: `i2sb`, 1000 steps.
    pub fn davi() -> Self {
        Self::new(BetaSchedule::I2sb, 1000)
    }

    pub fn from_betas(schedule: BetaSchedule, betas: Vec<f64>) -> Self {
        let n = betas.len();
        let mut abar = Vec::with_capacity(n);
        let mut acc = 1.0;
        for b in &betas {
            acc *= 1.0 - b;
            abar.push(acc);
        }
        let mut abar_prev = vec![1.0];
        abar_prev.extend_from_slice(&abar[..n - 1]);
        let map = |f: &dyn Fn(usize) -> f64| (0..n).map(f).collect::<Vec<f64>>();
        let post_var = map(&|i| betas[i] * (1.0 - abar_prev[i]) / (1.0 - abar[i]));
        let post_logvar = map(&|i| {
            if i == 0 && n > 1 {
                post_var[1].ln()
            } else {
                post_var[i].ln()
            }
        });
        Diffusion {
            schedule,
            sqrt_alphas_cumprod: map(&|i| abar[i].sqrt()),
            sqrt_one_minus_alphas_cumprod: map(&|i| (1.0 - abar[i]).sqrt()),
            sqrt_recip_alphas_cumprod: map(&|i| (1.0 / abar[i]).sqrt()),
            sqrt_recipm1_alphas_cumprod: map(&|i| (1.0 / abar[i] - 1.0).sqrt()),
            posterior_mean_coef1: map(&|i| betas[i] * abar_prev[i].sqrt() / (1.0 - abar[i])),
            posterior_mean_coef2: map(&|i| {
                (1.0 - abar_prev[i]) * (1.0 - betas[i]).sqrt() / (1.0 - abar[i])
            }),
            snr: map(&|i| abar[i].sqrt() / (1.0 - abar[i]).sqrt()),
            posterior_variance: post_var,
            posterior_log_variance_clipped: post_logvar,
            alphas_cumprod_prev: abar_prev,
            alphas_cumprod: abar,
            betas,
        }
    }

    pub fn num_steps(&self) -> usize {
        self.betas.len()
    }

    /// `q_sample(x0, t, eps) = √abar_t x0 + √(1-abar_t) eps`.
    pub fn q_sample(&self, x0: &Tensor, t: &Tensor, eps: &Tensor) -> Tensor {
        gather(&self.sqrt_alphas_cumprod, t, x0) * x0
            + gather(&self.sqrt_one_minus_alphas_cumprod, t, x0) * eps
    }

    /// The DDPM x0 estimate from an ε prediction: `√(1/abar) x_t - √(1/abar - 1) ε̂`
    /// (no clipping, as in every official call).
    pub fn pred_xstart_from_eps(&self, x_t: &Tensor, t: &Tensor, eps: &Tensor) -> Tensor {
        gather(&self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - gather(&self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
    }

    /// Learned-range log-variance: `frac·log β_t + (1-frac)·log σ̃²_t`, `frac = (v+1)/2`.
    pub fn learned_range_log_variance(&self, v: &Tensor, t: &Tensor) -> Tensor {
        let max_log = gather_vec(self.betas.iter().map(|b| b.ln()).collect(), t, v);
        let min_log = gather(&self.posterior_log_variance_clipped, t, v);
        let frac = (v + 1.0) / 2.0;
        &frac * max_log + (1.0 - &frac) * min_log
    }

    /// Posterior `q(x_{t-1} | x_t, x0)` mean and clipped log-variance.
    pub fn q_posterior_mean_logvar(
        &self,
        x0: &Tensor,
        x_t: &Tensor,
        t: &Tensor,
    ) -> (Tensor, Tensor) {
        let mean = gather(&self.posterior_mean_coef1, t, x_t) * x0
            + gather(&self.posterior_mean_coef2, t, x_t) * x_t;
        let logvar = gather(&self.posterior_log_variance_clipped, t, x_t).expand_as(x_t);
        (mean, logvar)
    }
}

/// Look up `arr[t]` per sample in f64, cast to `like`'s float kind and shape `[B, 1, 1, 1]`
/// (exactly how the official `_extract_into_tensor` broadcasts).
pub fn gather(arr: &[f64], t: &Tensor, like: &Tensor) -> Tensor {
    gather_vec(arr.to_vec(), t, like)
}

fn gather_vec(arr: Vec<f64>, t: &Tensor, like: &Tensor) -> Tensor {
    let table = Tensor::from_slice(&arr).to_device(t.device());
    let vals = table
        .index_select(0, &t.to_kind(Kind::Int64))
        .to_kind(like.kind());
    let mut shape = vec![t.size()[0]];
    shape.extend(std::iter::repeat_n(1, like.dim().saturating_sub(1)));
    vals.reshape(shape.as_slice())
}

/// A `[B]` int64 tensor holding one timestep for every sample.
pub fn timesteps(t: i64, batch: i64, device: Device) -> Tensor {
    Tensor::full([batch], t, (Kind::Int64, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a - b).abs() <= rel * b.abs().max(1e-12)
    }

    /// The schedule table of docs/algorithm.md §3.5.
    #[test]
    fn i2sb_matches_reference_table() {
        let d = Diffusion::davi();
        let rows: [(usize, f64, f64, f64); 8] = [
            (0, 1.0000e-4, 0.9999, 99.995),
            (99, 5.30093e-4, 0.971697, 5.85936),
            (249, 1.82813e-3, 0.821521, 2.14544),
            (399, 3.90495e-3, 0.538750, 1.08075),
            (499, 5.72215e-3, 0.333188, 0.706875),
            (599, 7.88547e-3, 0.168645, 0.450395),
            (749, 1.17794e-2, 0.0386055, 0.200389),
            (999, 2.0000e-2, 7.33412e-4, 0.0270915),
        ];
        for (t, beta, abar, snr) in rows {
            assert!(close(d.betas[t], beta, 2e-5), "beta[{t}] = {}", d.betas[t]);
            assert!(
                close(d.alphas_cumprod[t], abar, 2e-5),
                "abar[{t}] = {}",
                d.alphas_cumprod[t]
            );
            assert!(close(d.snr[t], snr, 2e-5), "snr[{t}] = {}", d.snr[t]);
        }
        let sum: f64 = d.betas.iter().sum();
        assert!(close(sum, 7.174286, 1e-6), "sum {sum}");
    }

    #[test]
    fn linear_matches_reference_column() {
        let d = Diffusion::new(BetaSchedule::Linear, 1000);
        for (t, abar) in [
            (99, 0.897018),
            (399, 0.195146),
            (749, 3.35055e-3),
            (999, 4.03583e-5),
        ] {
            assert!(
                close(d.alphas_cumprod[t], abar, 2e-5),
                "linear abar[{t}] = {}",
                d.alphas_cumprod[t]
            );
        }
        assert!(close(d.betas.iter().sum::<f64>(), 10.05, 1e-9));
    }

    #[test]
    fn cosine_is_bounded_and_monotone() {
        let d = Diffusion::new(BetaSchedule::Cosine, 1000);
        assert!(d.betas.iter().all(|b| *b > 0.0 && *b <= 0.999));
        assert!(d.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
    }

    #[test]
    fn posterior_arrays_are_consistent() {
        let d = Diffusion::davi();
        assert_eq!(d.posterior_variance[0], 0.0);
        assert_eq!(
            d.posterior_log_variance_clipped[0],
            d.posterior_variance[1].ln()
        );
        // coef1 + coef2·√α ... the posterior mean of x0 = x_t = c must be c when abar→ const:
        for t in [1usize, 500, 999] {
            let a = d.alphas_cumprod[t];
            // mean(x0, x_t) with x_t = √abar x0 (no noise) equals √abar_prev x0
            let m = d.posterior_mean_coef1[t] + d.posterior_mean_coef2[t] * a.sqrt();
            assert!(close(m, d.alphas_cumprod_prev[t].sqrt(), 1e-9), "t={t}");
        }
    }

    #[test]
    fn tensor_ops_invert_each_other() {
        let _rng = crate::test_rng::seeded(0);
        let d = Diffusion::davi();
        let x0 = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let eps = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[10i64, 900]);
        let xt = d.q_sample(&x0, &t, &eps);
        let back = d.pred_xstart_from_eps(&xt, &t, &eps);
        let err = (back - &x0).abs().max().double_value(&[]);
        assert!(err < 1e-3, "{err}");
        let v = Tensor::ones([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let lv = d.learned_range_log_variance(&v, &t);
        assert!((lv.double_value(&[1, 0, 0, 0]) - d.betas[900].ln()).abs() < 1e-5);
    }
}
