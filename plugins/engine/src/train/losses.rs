//! Diffusion training losses (docs/algorithm.md §3.6): the "hybrid" loss of improved DDPM used by
//! guided diffusion to train the teachers, and by DAVI for the fake score — ε-MSE plus the
//! variational bound term that trains the learned-range variance (with ε̂ detached so only
//! v receives the VB gradient).
use crate::diffusion::Diffusion;
use crate::unet::UNetModel;
use tch::{Kind, Tensor};

/// KL(N(m1, e^lv1) ‖ N(m2, e^lv2)) elementwise.
pub fn normal_kl(m1: &Tensor, lv1: &Tensor, m2: &Tensor, lv2: &Tensor) -> Tensor {
    ((lv2 - lv1) - 1.0 + (lv1 - lv2).exp() + (m1 - m2).square() * (-lv2).exp()) * 0.5
}

/// Fast approximation of the standard normal CDF (guided diffusion's tanh form).
fn approx_std_normal_cdf(x: &Tensor) -> Tensor {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    ((x + x.pow_tensor_scalar(3) * 0.044715) * c).tanh() * 0.5 + 0.5
}

/// Log-likelihood of `x` in [-1, 1] under a Gaussian discretised into 256 bins.
pub fn discretized_gaussian_log_likelihood(
    x: &Tensor,
    mean: &Tensor,
    log_scale: &Tensor,
) -> Tensor {
    let centered = x - mean;
    let inv_stdv = (-log_scale).exp();
    let cdf_plus = approx_std_normal_cdf(&(&inv_stdv * (&centered + 1.0 / 255.0)));
    let cdf_min = approx_std_normal_cdf(&(&inv_stdv * (&centered - 1.0 / 255.0)));
    let log_cdf_plus = cdf_plus.clamp_min(1e-12).log();
    let log_one_minus_cdf_min = (-&cdf_min + 1.0).clamp_min(1e-12).log();
    let cdf_delta = &cdf_plus - &cdf_min;
    let mid = cdf_delta.clamp_min(1e-12).log();
    let upper = log_one_minus_cdf_min.where_self(&x.gt(0.999), &mid);
    log_cdf_plus.where_self(&x.lt(-0.999), &upper)
}

/// Per-sample terms of the hybrid loss.
pub struct HybridTerms {
    pub mse: Tensor,
    pub vb: Tensor,
    pub loss: Tensor,
}

/// `training_losses` with learned sigma and MSE loss type: returns per-sample `mse + vb`.
/// `x0` clean (or generated) images, `t` timesteps, `eps` the noise.
pub fn hybrid_loss(
    diffusion: &Diffusion,
    model: &UNetModel,
    x0: &Tensor,
    t: &Tensor,
    eps: &Tensor,
) -> HybridTerms {
    let x_t = diffusion.q_sample(x0, t, eps);
    let out = model.forward(&x_t, t);
    let c = x0.size()[1];
    let eps_hat = out.narrow(1, 0, c);
    let v = out.narrow(1, c, c);
    let mse = (eps - &eps_hat)
        .square()
        .flatten(1, -1)
        .mean_dim(1, false, Kind::Float);
    // VB term: only v gets gradient.
    let eps_d = eps_hat.detach();
    let pred_x0 = diffusion.pred_xstart_from_eps(&x_t, t, &eps_d);
    let (model_mean, _) = diffusion.q_posterior_mean_logvar(&pred_x0, &x_t, t);
    let model_logvar = diffusion.learned_range_log_variance(&v, t);
    let (true_mean, true_logvar) = diffusion.q_posterior_mean_logvar(x0, &x_t, t);
    let ln2 = std::f64::consts::LN_2;
    let kl = normal_kl(&true_mean, &true_logvar, &model_mean, &model_logvar)
        .flatten(1, -1)
        .mean_dim(1, false, Kind::Float)
        / ln2;
    let nll = -discretized_gaussian_log_likelihood(x0, &model_mean, &(&model_logvar * 0.5))
        .flatten(1, -1)
        .mean_dim(1, false, Kind::Float)
        / ln2;
    let vb = nll.where_self(&t.eq(0), &kl);
    let loss = &mse + &vb;
    HybridTerms { mse, vb, loss }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn kl_of_equal_gaussians_is_zero() {
        let _rng = crate::test_rng::seeded(0);
        let m = Tensor::randn([4], (Kind::Float, Device::Cpu));
        let lv = Tensor::randn([4], (Kind::Float, Device::Cpu));
        assert!(normal_kl(&m, &lv, &m, &lv).abs().max().double_value(&[]) < 1e-6);
        // KL(N(0,1) || N(1,1)) = 0.5
        let z = Tensor::zeros([1], (Kind::Float, Device::Cpu));
        assert!((normal_kl(&z, &z, &(&z + 1.0), &z).double_value(&[0]) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn discretized_likelihood_is_a_probability() {
        let x = Tensor::from_slice(&[-1.0f32, 0.0, 0.5, 1.0]);
        let ll = discretized_gaussian_log_likelihood(&x, &x, &(x.zeros_like() - 3.0));
        assert!(ll.max().double_value(&[]) <= 1e-6);
        assert!(ll.min().double_value(&[]) > -10.0);
    }
}
