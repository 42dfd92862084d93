//! One iteration of DAVI's amortised training (reference §5.3–5.5), faithful to the
//! official `run_step`, with the official bugs decided (docs/quirks.md):
//!
//! **Phase A** (fake score + discriminator): generator samples `x̂` from the perturbed
//! bridge input (no grad); the fake score learns them with the hybrid loss at
//! `t ~ U{0..t_ikl-1}`; the PatchGAN learns real vs `x̂` with the hinge loss.
//!
//! **Phase B** (generator): `x̂ = tanh(x_q − std_fwd[t_b]·ε_G(x_q, t_b))`, then
//! `L = L_KL + weight_con·L_con + reg_coeff·L_gt + w_adv·L_G`, where the integral-KL
//! surrogate `L_KL = mean_b mean_chw(sg[snr_t (D_fake − D_teacher)] · x̂)` injects the score
//! difference straight into `x̂` (quirk Q4), and `w_adv` balances the GAN term by gradient
//! norms at the generator's last decoder conv (clipped to [0.01, 10], quirk Q11).
//!
//! The adaptive weight works on one process (the official code crashes there, quirk Q8).
use super::data::beta31;
use super::discriminator::Discriminator;
use super::losses::hybrid_loss;
use super::optim::{AdamW, AdamWConfig, Ema};
use super::Terms;
use crate::diffusion::schedule::gather;
use crate::diffusion::{Bridge, Diffusion};
use crate::error::{EngineError, Result};
use crate::operators::{self, Operator};
use crate::restore::{seeded_normal, SplitMix64, RESTORE_T};
use crate::train::config::DaviConfig;
use crate::unet::UNetModel;
use crate::weights::{model_file, LoadedModel};
use davi_sdk::OperatorSpec;
use tch::{nn, Device, Kind, Tensor};

pub struct DaviTrainer {
    pub cfg: DaviConfig,
    pub diffusion: Diffusion,
    pub bridge: Bridge,
    pub teacher: LoadedModel,
    pub fake_vs: nn::VarStore,
    pub fake: UNetModel,
    pub gen_vs: nn::VarStore,
    pub gen: UNetModel,
    pub ema_vs: nn::VarStore,
    pub ema_net: UNetModel,
    pub ema: Ema,
    pub disc_vs: nn::VarStore,
    pub disc: Discriminator,
    pub opt_g: AdamW,
    pub opt_s: AdamW,
    pub opt_d: AdamW,
    pub op: Box<dyn Operator>,
    /// Number of observed values per image (inpainting's `A x` length), for L_gt.
    observed: f64,
    /// Training image side: evaluation tiles at this size, as restoration does.
    size: i64,
    device: Device,
}

/// `t_bridge = trunc(1000·u − 0.5)` with `u ~ Beta(3, 1)` (quirk Q26), per sample.
pub fn bridge_timesteps(rng: &mut SplitMix64, n: i64, steps: i64, device: Device) -> Tensor {
    let v: Vec<i64> = (0..n).map(|_| ((steps as f64 * beta31(rng) - 0.5) as i64).clamp(0, steps - 1)).collect();
    Tensor::from_slice(&v).to_device(device)
}

/// The integral-KL surrogate: `mean_b mean_chw(sg[snr·(D_fake − D_teacher)] · x̂)`. Its
/// gradient with respect to `x̂` is `snr·(D_fake − D_teacher)/N`, N = B·C·H·W.
pub fn ikl_surrogate(snr: &Tensor, d_fake: &Tensor, d_teacher: &Tensor, x_hat: &Tensor) -> Tensor {
    let g = (snr * (d_fake - d_teacher)).detach();
    (g * x_hat).flatten(1, -1).mean_dim(1, false, Kind::Float).mean(Kind::Float)
}

/// `‖∂L_gt/∂W‖ / (‖∂L_G/∂W‖ + 1e-4)`, clamped to [0, 1e4] then clipped to [0.01, 10].
pub fn adaptive_weight(l_gt: &Tensor, l_g: &Tensor, w: &Tensor) -> f64 {
    let g1 = Tensor::run_backward(&[l_gt], &[w], true, false);
    let g2 = Tensor::run_backward(&[l_g], &[w], true, false);
    let n1 = g1[0].norm().double_value(&[]);
    let n2 = g2[0].norm().double_value(&[]);
    (n1 / (n2 + 1e-4)).clamp(0.0, 1e4).clamp(0.01, 10.0)
}

impl DaviTrainer {
    /// Build from a teacher model file: fake score and generator start as copies of it.
    pub fn new(cfg: &DaviConfig, size: i64, device: Device) -> Result<Self> {
        let teacher = model_file::load(&cfg.teacher, device)?;
        let unet = teacher.meta.unet.clone();
        if unet.out_channels != 2 * unet.in_channels {
            return Err(EngineError::model(&cfg.teacher, "the teacher must predict ε and a learned variance (out_channels = 2 × in_channels)"));
        }
        let diffusion = Diffusion::new(teacher.meta.schedule, teacher.meta.diffusion_steps);
        let mk = || -> Result<(nn::VarStore, UNetModel)> {
            let mut vs = nn::VarStore::new(device);
            let net = UNetModel::new(&vs.root(), &unet)?;
            vs.copy(&teacher.vs)?;
            Ok((vs, net))
        };
        let (fake_vs, fake) = mk()?;
        let (gen_vs, gen) = mk()?;
        let (mut ema_vs, ema_net) = mk()?;
        ema_vs.freeze();
        let disc_vs = nn::VarStore::new(device);
        let disc = Discriminator::new(&disc_vs.root(), unet.in_channels, 64, 3);
        let adam = |lr| AdamWConfig { lr, ..Default::default() };
        let op = operators::build(&cfg.operator, unet.in_channels, size, size, device)?;
        let observed = tch::no_grad(|| op.forward(&Tensor::ones([1, unet.in_channels, size, size], (Kind::Float, device))).ne(0.0).sum(Kind::Float).double_value(&[]));
        Ok(DaviTrainer {
            opt_g: AdamW::new(&gen_vs, adam(cfg.lr)),
            opt_s: AdamW::new(&fake_vs, adam(cfg.s_lr)),
            opt_d: AdamW::new(&disc_vs, adam(cfg.disc_lr)),
            cfg: cfg.clone(),
            bridge: Bridge::new(&diffusion),
            diffusion,
            teacher,
            fake_vs,
            fake,
            gen_vs,
            gen,
            ema_vs,
            ema_net,
            ema: Ema::default(),
            disc_vs,
            disc,
            op,
            observed,
            size,
            device,
        })
    }

    fn is_inpainting(&self) -> bool {
        matches!(self.cfg.operator, OperatorSpec::Inpainting(_))
    }

    /// Simulate the noisy measurement of a clean batch (fresh noise every step).
    pub fn measure(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| operators::measure(self.op.as_ref(), x, self.cfg.operator.noise_sigma()))
    }

    fn sample_generator(&self, net: &UNetModel, x: &Tensor, y_img: &Tensor, rng: &mut SplitMix64) -> Tensor {
        let steps = self.diffusion.num_steps() as i64;
        let t_b = bridge_timesteps(rng, x.size()[0], steps, self.device);
        let z = x.randn_like();
        let x_q = self.bridge.perturbed_interpolation(&t_b, x, y_img, self.cfg.perturb_h, &z);
        let c = x.size()[1];
        let eps = net.forward(&x_q, &t_b).narrow(1, 0, c);
        self.bridge.generator_output(&t_b, &x_q, &eps)
    }

    fn micro_chunks(&self, b: i64) -> (i64, i64) {
        let m = self.cfg.micro_batch.unwrap_or(b as usize) as i64;
        (m, (b + m - 1) / m)
    }

    /// One full iteration (phase A then phase B) on the clean batch `x` in [-1, 1].
    pub fn step(&mut self, x: &Tensor, rng: &mut SplitMix64) -> Terms {
        let y = self.measure(x);
        let y_img = tch::no_grad(|| self.op.lift(&y));
        let b = x.size()[0];
        let (micro, chunks) = self.micro_chunks(b);
        let accum = if chunks > 1 { chunks as f64 } else { 1.0 };
        let t_ikl = self.cfg.t_ikl;
        let mut terms = Terms::new();
        let add = |terms: &mut Terms, k: &str, v: f64| *terms.entry(k.to_string()).or_insert(0.0) += v / chunks as f64;

        // Phase A: fake score and discriminator.
        self.opt_s.zero_grad();
        self.opt_d.zero_grad();
        for i in 0..chunks {
            let n = micro.min(b - i * micro);
            let (xm, ym) = (x.narrow(0, i * micro, n), y_img.narrow(0, i * micro, n));
            let x_hat = tch::no_grad(|| self.sample_generator(&self.gen, &xm, &ym, rng));
            let t = Tensor::randint(t_ikl, [n], (Kind::Int64, self.device));
            let eps = x_hat.randn_like();
            let h = hybrid_loss(&self.diffusion, &self.fake, &x_hat, &t, &eps);
            let l_s = h.loss.mean(Kind::Float);
            (&l_s / accum).backward();
            add(&mut terms, "fake_score", l_s.double_value(&[]));
            if self.cfg.gan {
                let l_d = self.disc.hinge_loss(&xm, &x_hat);
                (&l_d / accum).backward();
                add(&mut terms, "disc", l_d.double_value(&[]));
            }
        }
        self.opt_s.step();
        self.opt_s.zero_grad();
        if self.cfg.gan {
            self.opt_d.step();
        }
        self.opt_d.zero_grad();

        // Phase B: generator.
        self.opt_g.zero_grad();
        for i in 0..chunks {
            let n = micro.min(b - i * micro);
            let (xm, ym_img, ym) = (x.narrow(0, i * micro, n), y_img.narrow(0, i * micro, n), y.narrow(0, i * micro, n));
            let x_hat = self.sample_generator(&self.gen, &xm, &ym_img, rng);
            let t = Tensor::randint(t_ikl, [n], (Kind::Int64, self.device));
            let eps = x_hat.randn_like();
            let c = xm.size()[1];
            let (d_t, d_s) = tch::no_grad(|| {
                let x_t = self.diffusion.q_sample(&x_hat.detach(), &t, &eps);
                let e_t = self.teacher.net.forward(&x_t, &t).narrow(1, 0, c);
                let e_s = self.fake.forward(&x_t, &t).narrow(1, 0, c);
                (self.diffusion.pred_xstart_from_eps(&x_t, &t, &e_t), self.diffusion.pred_xstart_from_eps(&x_t, &t, &e_s))
            });
            let snr = gather(&self.diffusion.snr, &t, &x_hat);
            let l_kl = ikl_surrogate(&snr, &d_s, &d_t, &x_hat);
            let ax = self.op.forward(&x_hat);
            let l_con = (&ym - ax).square().mean(Kind::Float);
            let l_gt = if self.is_inpainting() {
                let diff = self.op.forward(&xm) - self.op.forward(&x_hat);
                (&xm - &x_hat).square().mean(Kind::Float) * 0.1 + diff.square().sum(Kind::Float) / (self.observed * n as f64)
            } else {
                (&xm - &x_hat).square().mean(Kind::Float)
            };
            let mut loss = &l_kl + &l_con * self.cfg.weight_con + &l_gt * self.cfg.reg_coeff;
            if self.cfg.gan {
                let l_g = self.disc.generator_loss(&xm, &x_hat);
                let w = adaptive_weight(&l_gt, &l_g, self.gen.last_layer_weight());
                loss = loss + &l_g * w;
                add(&mut terms, "gan_g", l_g.double_value(&[]));
                add(&mut terms, "w_adv", w);
            }
            (&loss / accum).backward();
            add(&mut terms, "ikl", l_kl.double_value(&[]));
            add(&mut terms, "con", l_con.double_value(&[]));
            add(&mut terms, "gt", l_gt.double_value(&[]));
            add(&mut terms, "loss_g", loss.double_value(&[]));
        }
        self.opt_g.step();
        self.opt_g.zero_grad();
        // Gradients the generator loss left in the discriminator are discarded.
        self.opt_d.zero_grad();
        self.ema.update(&self.ema_vs, &self.gen_vs);
        terms
    }

    /// Restore a clean batch's simulated measurement with the EMA generator, exactly as the
    /// official evaluator (t = 999). Returns (degraded lifted y, restored), both in [-1, 1].
    pub fn evaluate(&self, clean: &Tensor, seed: u64) -> Result<(Tensor, Tensor)> {
        let (_, c, h, w) = clean.size4().map_err(|_| EngineError::InvalidInput("eval batch must be 4-D".into()))?;
        let op = operators::build(&self.cfg.operator, c, h, w, self.device)?;
        let h_eval = self.cfg.eval_perturb_h.unwrap_or(self.cfg.perturb_h);
        tch::no_grad(|| {
            let x = clean.to_device(self.device);
            let y = op.forward(&x);
            let y = &y + seeded_normal(&y.size(), seed).to_device(self.device) * self.cfg.operator.noise_sigma();
            let y_img = op.lift(&y);
            let t = crate::diffusion::schedule::timesteps(RESTORE_T.min(self.diffusion.num_steps() as i64 - 1), x.size()[0], self.device);
            let z = seeded_normal(&y_img.size(), seed ^ 0x5eed).to_device(self.device);
            let x_in = self.bridge.perturbed_interpolation(&t, &y_img, &y_img, h_eval, &z);
            let m = self.teacher.meta.unet.size_multiple();
            if h % m != 0 || w % m != 0 {
                return Err(EngineError::InvalidInput(format!("eval crops must be multiples of {m}")));
            }
            // Tiles of the training size, blended, exactly as `Restorer` does for this model.
            let tiling = crate::tiling::Tiling { tile: self.size, overlap: self.size / 4 };
            let mut run = |tile: &Tensor| {
                let tt = crate::diffusion::schedule::timesteps(t.int64_value(&[0]), tile.size()[0], self.device);
                let eps = self.ema_net.forward(tile, &tt).narrow(1, 0, c);
                self.bridge.generator_output(&tt, tile, &eps)
            };
            let x_hat = crate::tiling::map_tiles(&x_in, tiling, &mut run, &mut |_, _| true).expect("never cancelled");
            Ok((y_img, x_hat))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ikl_gradient_is_scaled_score_difference() {
        let x_hat = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let d_s = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let d_t = Tensor::randn([2, 3, 4, 4], (Kind::Float, Device::Cpu));
        let snr = Tensor::from_slice(&[2.0f32, 0.5]).view([2, 1, 1, 1]);
        ikl_surrogate(&snr, &d_s, &d_t, &x_hat).backward();
        let want = &snr * (&d_s - &d_t) / (2.0 * 3.0 * 16.0);
        let d = (x_hat.grad() - want).abs().max().double_value(&[]);
        assert!(d < 1e-7, "{d}");
    }

    #[test]
    fn adaptive_weight_closed_form() {
        // L1 = sum(a·W), L2 = sum(b·W): gradients a and b, weight ‖a‖/(‖b‖+1e-4).
        let w = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let a = Tensor::from_slice(&[3.0f32, 0.0, 4.0]);
        let b = Tensor::from_slice(&[1.0f32, 0.0, 0.0]);
        let l1 = (&a * &w).sum(Kind::Float);
        let l2 = (&b * &w).sum(Kind::Float);
        let got = adaptive_weight(&l1, &l2, &w);
        assert!((got - 5.0 / (1.0 + 1e-4)).abs() < 1e-5, "{got}");
        // clipping at both ends
        let l3 = (&b * &w * 1e-6).sum(Kind::Float);
        assert_eq!(adaptive_weight(&l1, &l3, &w), 10.0);
        assert_eq!(adaptive_weight(&l3, &l1, &w), 0.01);
    }

    #[test]
    fn bridge_timesteps_follow_beta31() {
        let mut r = SplitMix64(9);
        let t = bridge_timesteps(&mut r, 4000, 1000, Device::Cpu);
        let m = t.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        assert!((m - 749.5).abs() < 10.0, "{m}");
        assert!(t.min().int64_value(&[]) >= 0 && t.max().int64_value(&[]) <= 999);
    }
}
