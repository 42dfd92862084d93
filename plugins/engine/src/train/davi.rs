//! One iteration of DAVI's amortised training (docs/algorithm.md §5.3–5.5), faithful to the
//! official `run_step`, with the official bugs decided (docs/algorithm.md §9):
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
use super::amp::{GradScaler, Precision};
use super::data::beta31;
use super::discriminator::Discriminator;
use super::losses::hybrid_loss;
use super::optim::{add_grads_into, zero_grads, AdamW, AdamWConfig, Ema};
use super::Terms;
use crate::diffusion::schedule::gather;
use crate::diffusion::{Bridge, Diffusion};
use crate::error::{EngineError, Result};
use crate::operators::{self, Operator};
use crate::restore::{seeded_normal, SplitMix64, RESTORE_T};
use crate::train::config::{DaviConfig, GtLoss};
use crate::unet::UNetModel;
use crate::weights::{model_file, LoadedModel};
use davi_sdk::OperatorSpec;
use tch::{nn, Device, Kind, Tensor};

/// The networks one device trains with: the frozen teacher, and copies of the fake score,
/// the generator and the discriminator. `DaviTrainer::nets[0]` holds the weights the
/// optimisers update; further replicas (data parallel over several devices) receive the
/// summed gradients' update by a copy after every optimiser step.
pub struct Replica {
    pub device: Device,
    pub teacher: LoadedModel,
    pub fake_vs: nn::VarStore,
    pub fake: UNetModel,
    pub gen_vs: nn::VarStore,
    pub gen: UNetModel,
    pub disc_vs: nn::VarStore,
    pub disc: Discriminator,
    pub op: Box<dyn Operator>,
}

/// What every replica reads and nobody changes during a step.
struct Shared<'a> {
    cfg: &'a DaviConfig,
    diffusion: &'a Diffusion,
    bridge: &'a Bridge,
    observed: f64,
    /// Run forward passes under CUDA autocast.
    autocast: bool,
    /// Loss scale (1 without mixed precision) divided by the number of micro-batches.
    loss_factor: f64,
}

/// One micro-batch of a phase and all the random draws it needs, made in a fixed order on the
/// primary device before any network runs (so results do not depend on how the chunks are
/// spread over devices or threads).
struct Chunk {
    x: Tensor,
    y_img: Tensor,
    y: Tensor,
    t_bridge: Tensor,
    z: Tensor,
    t: Tensor,
    eps: Tensor,
    /// Per-sample keep-mask `(n, 1, H, W)` of randomly boxed inpainting.
    mask: Option<Tensor>,
}

impl Chunk {
    fn to(&self, device: Device) -> Chunk {
        Chunk {
            x: self.x.to_device(device),
            y_img: self.y_img.to_device(device),
            y: self.y.to_device(device),
            t_bridge: self.t_bridge.to_device(device),
            z: self.z.to_device(device),
            t: self.t.to_device(device),
            eps: self.eps.to_device(device),
            mask: self.mask.as_ref().map(|m| m.to_device(device)),
        }
    }
}

pub struct DaviTrainer {
    pub cfg: DaviConfig,
    pub diffusion: Diffusion,
    pub bridge: Bridge,
    /// One replica per training device; `nets[0]` is the primary.
    pub nets: Vec<Replica>,
    pub ema_vs: nn::VarStore,
    pub ema_net: UNetModel,
    pub ema: Ema,
    pub opt_g: AdamW,
    pub opt_s: AdamW,
    pub opt_d: AdamW,
    /// Dynamic loss scaling, with `Precision::Fp16`.
    pub scaler: Option<GradScaler>,
    autocast: bool,
    /// Number of observed values per image (inpainting's `A x` length), for L_gt.
    observed: f64,
    /// Training image side: evaluation tiles at this size, as restoration does.
    size: i64,
    /// Context around each patch for the measurement ([`DaviConfig::context_margin`]), and
    /// the operator built for the patch plus that context.
    margin: i64,
    op_ctx: Option<Box<dyn Operator>>,
    device: Device,
}

/// A training batch's measurement: the clean patches and what the generator sees.
struct Measured {
    x: Tensor,
    y: Tensor,
    y_img: Tensor,
    mask: Option<Tensor>,
}

/// The networks an optimiser step can update.
#[derive(Clone, Copy)]
enum Which {
    Fake,
    Disc,
    Gen,
}

impl Which {
    fn vs(self, r: &Replica) -> &nn::VarStore {
        match self {
            Which::Fake => &r.fake_vs,
            Which::Disc => &r.disc_vs,
            Which::Gen => &r.gen_vs,
        }
    }
}

/// `t_bridge = trunc(1000·u − 0.5)` with `u ~ Beta(3, 1)` (quirk Q26), per sample.
pub fn bridge_timesteps(rng: &mut SplitMix64, n: i64, steps: i64, device: Device) -> Tensor {
    let v: Vec<i64> = (0..n)
        .map(|_| ((steps as f64 * beta31(rng) - 0.5) as i64).clamp(0, steps - 1))
        .collect();
    Tensor::from_slice(&v).to_device(device)
}

/// Keep-masks `(n, 1, h, w)` with one or two boxes per sample: a fifth of them the official
/// centred half-size box, the others of random size (10–55 % of each side) and place.
pub fn random_box_masks(rng: &mut SplitMix64, n: i64, h: i64, w: i64) -> Tensor {
    let mut m = vec![1f32; (n * h * w) as usize];
    for b in 0..n as usize {
        let official = rng.uniform() < 0.2;
        let boxes = if official || rng.uniform() < 0.7 {
            1
        } else {
            2
        };
        for _ in 0..boxes {
            let (bh, bw, top, left) = if official {
                (h / 2, w / 2, h / 4, w / 4)
            } else {
                let bh = ((0.10 + 0.45 * rng.uniform()) * h as f64).round().max(1.0) as i64;
                let bw = ((0.10 + 0.45 * rng.uniform()) * w as f64).round().max(1.0) as i64;
                let top = (rng.uniform() * (h - bh + 1) as f64) as i64;
                let left = (rng.uniform() * (w - bw + 1) as f64) as i64;
                (bh, bw, top.min(h - bh), left.min(w - bw))
            };
            for i in top..top + bh {
                let row = b * (h * w) as usize + (i * w) as usize;
                m[row + left as usize..row + (left + bw) as usize].fill(0.0);
            }
        }
    }
    Tensor::from_slice(&m).view([n, 1, h, w])
}

/// Multiplicative masks `(n, 1, s, s)` over training windows of side `s = size + 2·margin`
/// that zero the context beyond a side with probability `p` per side: there the window ends
/// at an image border, as the zero padding of a blur sees it.
pub fn border_masks(rng: &mut SplitMix64, n: i64, s: i64, margin: i64, p: f64) -> Tensor {
    let mut m = vec![1f32; (n * s * s) as usize];
    for b in 0..n as usize {
        let sides: Vec<bool> = (0..4).map(|_| rng.uniform() < p).collect();
        for i in 0..s {
            for j in 0..s {
                let out = (sides[0] && i < margin)
                    || (sides[1] && i >= s - margin)
                    || (sides[2] && j < margin)
                    || (sides[3] && j >= s - margin);
                if out {
                    m[b * (s * s) as usize + (i * s + j) as usize] = 0.0;
                }
            }
        }
    }
    Tensor::from_slice(&m).view([n, 1, s, s])
}

/// The integral-KL surrogate: `mean_b mean_chw(sg[snr·(D_fake − D_teacher)] · x̂)`. Its
/// gradient with respect to `x̂` is `snr·(D_fake − D_teacher)/N`, N = B·C·H·W.
pub fn ikl_surrogate(snr: &Tensor, d_fake: &Tensor, d_teacher: &Tensor, x_hat: &Tensor) -> Tensor {
    let g = (snr * (d_fake - d_teacher)).detach();
    (g * x_hat)
        .flatten(1, -1)
        .mean_dim(1, false, Kind::Float)
        .mean(Kind::Float)
}

/// The largest weight [`tanh_preconditioned_mse`] gives a pixel (`|x̂| ≈ 0.95`).
const TANH_PRECONDITION_MAX: f64 = 10.0;

/// Mean of `(x − x̂)² / (1 − x̂²)`, the weight detached and capped at
/// [`TANH_PRECONDITION_MAX`] (see `DaviConfig::gt_tanh_precondition`).
pub fn tanh_preconditioned_mse(x: &Tensor, x_hat: &Tensor) -> Tensor {
    let slope = (-x_hat.detach().square() + 1.0).clamp_min(1.0 / TANH_PRECONDITION_MAX);
    ((x - x_hat).square() / slope).mean(Kind::Float)
}

/// `‖∂L_gt/∂W‖ / (‖∂L_G/∂W‖ + 1e-4)`, clamped to [0, 1e4] then clipped to [0.01, 10].
pub fn adaptive_weight(l_gt: &Tensor, l_g: &Tensor, w: &Tensor) -> f64 {
    let g1 = Tensor::run_backward(&[l_gt], &[w], true, false);
    let g2 = Tensor::run_backward(&[l_g], &[w], true, false);
    let n1 = g1[0].norm().double_value(&[]);
    let n2 = g2[0].norm().double_value(&[]);
    (n1 / (n2 + 1e-4)).clamp(0.0, 1e4).clamp(0.01, 10.0)
}

impl Replica {
    fn new(cfg: &DaviConfig, size: i64, device: Device) -> Result<Self> {
        let teacher = model_file::load(&cfg.teacher, device)?;
        let unet = teacher.meta.unet.clone();
        if unet.out_channels != 2 * unet.in_channels {
            return Err(EngineError::model(
                &cfg.teacher,
                "the teacher must predict ε and a learned \
                variance (out_channels = 2 × in_channels)",
            ));
        }
        let mk = || -> Result<(nn::VarStore, UNetModel)> {
            let mut vs = nn::VarStore::new(device);
            let net = UNetModel::new(&vs.root(), &unet)?;
            vs.copy(&teacher.vs)?;
            Ok((vs, net))
        };
        let (fake_vs, fake) = mk()?;
        let (gen_vs, gen) = mk()?;
        let disc_vs = nn::VarStore::new(device);
        let disc = Discriminator::new(&disc_vs.root(), unet.in_channels, 64, 3);
        let op = operators::build(&cfg.operator, unet.in_channels, size, size, device)?;
        Ok(Replica {
            device,
            teacher,
            fake_vs,
            fake,
            gen_vs,
            gen,
            disc_vs,
            disc,
            op,
        })
    }

    /// Clear the gradients of the trainable networks.
    fn zero_grads(&self) {
        zero_grads(&self.fake_vs);
        zero_grads(&self.gen_vs);
        zero_grads(&self.disc_vs);
    }

    /// Make this replica's trainable weights equal to `primary`'s.
    fn copy_from(&mut self, primary: &Replica) -> Result<()> {
        self.fake_vs.copy(&primary.fake_vs)?;
        self.gen_vs.copy(&primary.gen_vs)?;
        self.disc_vs.copy(&primary.disc_vs)?;
        Ok(())
    }

    fn sample_generator(&self, sh: &Shared, net: &UNetModel, c: &Chunk) -> Tensor {
        let x_q =
            sh.bridge
                .perturbed_interpolation(&c.t_bridge, &c.x, &c.y_img, sh.cfg.perturb_h, &c.z);
        let ch = c.x.size()[1];
        let eps = net.forward(&x_q, &c.t_bridge).narrow(1, 0, ch);
        sh.bridge.generator_output(&c.t_bridge, &x_q, &eps)
    }

    /// Phase A on one micro-batch: the fake score's hybrid loss on generator samples and the
    /// discriminator's hinge loss; gradients accumulate in this replica.
    fn phase_a(&self, sh: &Shared, c: &Chunk) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        let ikl = sh.cfg.ikl_weight != 0.0;
        let (l_s, l_d) = tch::autocast(sh.autocast, || {
            let x_hat =
                tch::no_grad(|| self.sample_generator(sh, &self.gen, c)).to_kind(Kind::Float);
            let l_s = ikl.then(|| {
                hybrid_loss(sh.diffusion, &self.fake, &x_hat, &c.t, &c.eps)
                    .loss
                    .mean(Kind::Float)
            });
            let l_d = sh.cfg.gan.then(|| self.disc.hinge_loss(&c.x, &x_hat));
            (l_s, l_d)
        });
        if let Some(l_s) = l_s {
            (&l_s * sh.loss_factor).backward();
            out.push(("fake_score", l_s.double_value(&[])));
        }
        if let Some(l_d) = l_d {
            (&l_d * sh.loss_factor).backward();
            out.push(("disc", l_d.double_value(&[])));
        }
        out
    }

    /// Phase B on one micro-batch: the generator's loss; gradients accumulate here.
    fn phase_b(&self, sh: &Shared, c: &Chunk) -> Vec<(&'static str, f64)> {
        let mut out = Vec::new();
        let n = c.x.size()[0];
        let (loss, l_kl, l_con, l_gt, gan) = tch::autocast(sh.autocast, || {
            let x_hat = self.sample_generator(sh, &self.gen, c).to_kind(Kind::Float);
            let ch = c.x.size()[1];
            let l_kl = if sh.cfg.ikl_weight != 0.0 {
                let (d_t, d_s) = tch::no_grad(|| {
                    let x_t = sh.diffusion.q_sample(&x_hat.detach(), &c.t, &c.eps);
                    let e_t = self
                        .teacher
                        .net
                        .forward(&x_t, &c.t)
                        .narrow(1, 0, ch)
                        .to_kind(Kind::Float);
                    let e_s = self
                        .fake
                        .forward(&x_t, &c.t)
                        .narrow(1, 0, ch)
                        .to_kind(Kind::Float);
                    (
                        sh.diffusion.pred_xstart_from_eps(&x_t, &c.t, &e_t),
                        sh.diffusion.pred_xstart_from_eps(&x_t, &c.t, &e_s),
                    )
                });
                let snr = gather(&sh.diffusion.snr, &c.t, &x_hat);
                ikl_surrogate(&snr, &d_s, &d_t, &x_hat)
            } else {
                Tensor::zeros([], (Kind::Float, x_hat.device()))
            };
            let a = |v: &Tensor| match &c.mask {
                Some(m) => v * m,
                None => self.op.forward(v),
            };
            let l_con = (&c.y - a(&x_hat)).square().mean(Kind::Float);
            let l_gt = match (&sh.cfg.operator, sh.cfg.gt) {
                (OperatorSpec::Inpainting(_), GtLoss::Official) => {
                    let observed = match &c.mask {
                        Some(m) => m.sum(Kind::Float) * ch as f64,
                        None => Tensor::from(sh.observed * n as f64).to_device(x_hat.device()),
                    };
                    let diff = a(&c.x) - a(&x_hat);
                    (&c.x - &x_hat).square().mean(Kind::Float) * 0.1
                        + diff.square().sum(Kind::Float) / observed.clamp_min(1.0)
                }
                _ if sh.cfg.gt_tanh_precondition => tanh_preconditioned_mse(&c.x, &x_hat),
                _ => (&c.x - &x_hat).square().mean(Kind::Float),
            };
            let mut loss =
                &l_kl * sh.cfg.ikl_weight + &l_con * sh.cfg.weight_con + &l_gt * sh.cfg.reg_coeff;
            let mut gan = None;
            if sh.cfg.gan {
                let l_g = self.disc.generator_loss(&c.x, &x_hat);
                let w =
                    adaptive_weight(&l_gt, &l_g, self.gen.last_layer_weight()) * sh.cfg.adv_scale;
                // A new tensor, not `+=` (in place on a tensor autograd still needs).
                #[allow(clippy::assign_op_pattern)]
                {
                    loss = loss + &l_g * w;
                }
                gan = Some((l_g.double_value(&[]), w));
            }
            (loss, l_kl, l_con, l_gt, gan)
        });
        (&loss * sh.loss_factor).backward();
        if let Some((l_g, w)) = gan {
            out.push(("gan_g", l_g));
            out.push(("w_adv", w));
        }
        out.push(("ikl", l_kl.double_value(&[])));
        out.push(("con", l_con.double_value(&[])));
        out.push(("gt", l_gt.double_value(&[])));
        out.push(("loss_g", loss.double_value(&[])));
        out
    }
}

/// Add every replica's gradients of `which` network into the primary's.
fn reduce_grads(nets: &[Replica], which: Which) {
    if let Some((primary, others)) = nets.split_first() {
        for r in others {
            add_grads_into(which.vs(primary), which.vs(r));
        }
    }
}

impl DaviTrainer {
    /// Build from a teacher model file: fake score and generator start as copies of it.
    pub fn new(cfg: &DaviConfig, size: i64, device: Device) -> Result<Self> {
        Self::with_devices(cfg, size, &[device], Precision::Fp32)
    }

    /// Train on `devices` (data parallel when there are several; the first holds the
    /// optimised weights) at `precision`. `Fp16` needs every device to be CUDA.
    pub fn with_devices(
        cfg: &DaviConfig,
        size: i64,
        devices: &[Device],
        precision: Precision,
    ) -> Result<Self> {
        Self::build(
            cfg,
            size,
            devices,
            precision == Precision::Fp16,
            (precision == Precision::Fp16).then(GradScaler::default),
        )
    }

    /// Float32 compute with dynamic loss scaling: what `Fp16` does, minus autocast. It runs on
    /// any device, which lets the scaling path be checked on a CPU.
    pub fn with_loss_scaler(
        cfg: &DaviConfig,
        size: i64,
        devices: &[Device],
        scaler: GradScaler,
    ) -> Result<Self> {
        Self::build(cfg, size, devices, false, Some(scaler))
    }

    fn build(
        cfg: &DaviConfig,
        size: i64,
        devices: &[Device],
        autocast: bool,
        scaler: Option<GradScaler>,
    ) -> Result<Self> {
        let device = *devices
            .first()
            .ok_or_else(|| EngineError::InvalidInput("no training device".into()))?;
        if autocast && devices.iter().any(|d| !d.is_cuda()) {
            return Err(EngineError::Device(
                "precision = \"fp16\" (CUDA autocast with loss scaling) \
                needs CUDA devices; train with fp32 on a CPU"
                    .into(),
            ));
        }
        let mut nets = vec![Replica::new(cfg, size, device)?];
        for &d in &devices[1..] {
            let mut r = Replica::new(cfg, size, d)?;
            r.copy_from(&nets[0])?;
            nets.push(r);
        }
        // Generator initialisation from a model file instead of the teacher (`davi.init`).
        let init = match &cfg.init {
            Some(path) => {
                let g = model_file::load(path, device)?;
                if g.meta.unet != nets[0].teacher.meta.unet {
                    return Err(EngineError::model(
                        path,
                        "davi.init must have the teacher's U-Net configuration",
                    ));
                }
                for r in nets.iter_mut() {
                    r.gen_vs.copy(&g.vs)?;
                }
                Some(g)
            }
            None => None,
        };
        let p = &nets[0];
        let unet = p.teacher.meta.unet.clone();
        let diffusion = Diffusion::new(p.teacher.meta.schedule, p.teacher.meta.diffusion_steps);
        let mut ema_vs = nn::VarStore::new(device);
        let ema_net = UNetModel::new(&ema_vs.root(), &unet)?;
        ema_vs.copy(&p.teacher.vs)?;
        ema_vs.freeze();
        let adam = |lr| AdamWConfig {
            lr,
            ..Default::default()
        };
        let observed = tch::no_grad(|| {
            p.op.forward(&Tensor::ones(
                [1, unet.in_channels, size, size],
                (Kind::Float, device),
            ))
            .ne(0.0)
            .sum(Kind::Float)
            .double_value(&[])
        });
        let margin = cfg.context_margin();
        let op_ctx = if margin > 0 {
            Some(operators::build(
                &cfg.operator,
                unet.in_channels,
                size + 2 * margin,
                size + 2 * margin,
                device,
            )?)
        } else {
            None
        };
        if let Some(g) = &init {
            ema_vs.copy(&g.vs)?;
        }
        Ok(DaviTrainer {
            opt_g: AdamW::new(&p.gen_vs, adam(cfg.lr)),
            opt_s: AdamW::new(&p.fake_vs, adam(cfg.s_lr)),
            opt_d: AdamW::new(&p.disc_vs, adam(cfg.disc_lr)),
            cfg: cfg.clone(),
            bridge: Bridge::new(&diffusion),
            diffusion,
            nets,
            ema_vs,
            ema_net,
            ema: Ema::default(),
            scaler,
            autocast,
            observed,
            size,
            margin,
            op_ctx,
            device,
        })
    }

    /// The primary replica (the weights that are optimised, saved and exported).
    pub fn primary(&self) -> &Replica {
        &self.nets[0]
    }

    /// Copy the primary's weights to the other replicas (after loading a checkpoint).
    pub fn sync_replicas(&mut self) -> Result<()> {
        let (primary, others) = self.nets.split_first_mut().expect("one replica at least");
        for r in others {
            r.copy_from(primary)?;
        }
        Ok(())
    }

    /// Simulate the noisy measurement of a clean batch (fresh noise every step).
    pub fn measure(&self, x: &Tensor) -> Tensor {
        tch::no_grad(|| {
            operators::measure(self.nets[0].op.as_ref(), x, self.cfg.operator.noise_sigma())
        })
    }

    /// Micro-batch size and count: `micro_batch`, else one per device.
    fn micro_chunks(&self, b: i64) -> (i64, i64) {
        let per_device = (b + self.nets.len() as i64 - 1) / self.nets.len() as i64;
        let m = self
            .cfg
            .micro_batch
            .map(|m| m as i64)
            .unwrap_or(per_device)
            .max(1);
        (m, (b + m - 1) / m)
    }

    /// The chunks of one phase with their random draws, in the order the single-device
    /// loop has always drawn them: bridge times, bridge noise, diffusion times, noise.
    fn draw_chunks(&self, m: &Measured, rng: &mut SplitMix64) -> Vec<Chunk> {
        let (x, y_img, y) = (&m.x, &m.y_img, &m.y);
        let b = x.size()[0];
        let (micro, chunks) = self.micro_chunks(b);
        let steps = self.diffusion.num_steps() as i64;
        (0..chunks)
            .map(|i| {
                let n = micro.min(b - i * micro);
                let xm = x.narrow(0, i * micro, n);
                let t_bridge = match self.cfg.bridge_t {
                    Some(t) => Tensor::full([n], t.min(steps - 1), (Kind::Int64, self.device)),
                    None => bridge_timesteps(rng, n, steps, self.device),
                };
                let z = xm.randn_like();
                let t = Tensor::randint(self.cfg.t_ikl, [n], (Kind::Int64, self.device));
                let eps = xm.randn_like();
                let mask = m.mask.as_ref().map(|k| k.narrow(0, i * micro, n));
                Chunk {
                    x: xm,
                    y_img: y_img.narrow(0, i * micro, n),
                    y: y.narrow(0, i * micro, n),
                    t_bridge,
                    z,
                    t,
                    eps,
                    mask,
                }
            })
            .collect()
    }

    /// Run `phase` on every chunk, chunk `i` on replica `i mod devices`, the replicas in
    /// parallel threads; returns the loss terms averaged over chunks.
    fn run_phase(
        &mut self,
        chunks: Vec<Chunk>,
        phase: fn(&Replica, &Shared, &Chunk) -> Vec<(&'static str, f64)>,
    ) -> Terms {
        let n_chunks = chunks.len();
        let scale = self.scaler.as_ref().map(|s| s.scale).unwrap_or(1.0);
        let sh = Shared {
            cfg: &self.cfg,
            diffusion: &self.diffusion,
            bridge: &self.bridge,
            observed: self.observed,
            autocast: self.autocast,
            loss_factor: scale / n_chunks as f64,
        };
        let n_dev = self.nets.len();
        let mut per_dev: Vec<Vec<Chunk>> = (0..n_dev).map(|_| Vec::new()).collect();
        for (i, c) in chunks.into_iter().enumerate() {
            let r = i % n_dev;
            per_dev[r].push(if r == 0 { c } else { c.to(self.nets[r].device) });
        }
        let results: Vec<Vec<(&'static str, f64)>> = if n_dev == 1 {
            vec![per_dev[0]
                .iter()
                .flat_map(|c| phase(&self.nets[0], &sh, c))
                .collect()]
        } else {
            let sh = &sh;
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .nets
                    .iter_mut()
                    .zip(per_dev)
                    .map(|(r, cs)| {
                        let r: &mut Replica = r;
                        scope.spawn(move || {
                            cs.iter().flat_map(|c| phase(r, sh, c)).collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a training replica panicked"))
                    .collect()
            })
        };
        let mut terms = Terms::new();
        for (k, v) in results.into_iter().flatten() {
            *terms.entry(k.to_string()).or_insert(0.0) += v / n_chunks as f64;
        }
        terms
    }

    /// After a phase: sum the replicas' gradients into the primary, unscale them (mixed
    /// precision), step the optimisers whose gradients are finite, clear every gradient and
    /// refresh the replicas. Returns whether an overflow skipped a step.
    fn finish_phase(&mut self, which: &[Which]) -> bool {
        for w in which {
            reduce_grads(&self.nets, *w);
        }
        let mut overflow = false;
        for w in which {
            let opt = match w {
                Which::Fake => &mut self.opt_s,
                Which::Disc => &mut self.opt_d,
                Which::Gen => &mut self.opt_g,
            };
            let found_inf = self
                .scaler
                .as_ref()
                .is_some_and(|s| s.unscale(opt.params()));
            if !found_inf {
                opt.step();
            }
            overflow |= found_inf;
        }
        if let Some(s) = &mut self.scaler {
            s.update(overflow);
        }
        for r in &self.nets {
            r.zero_grads();
        }
        if self.nets.len() > 1 {
            self.sync_replicas()
                .expect("replicas have the primary's variables");
        }
        overflow
    }

    /// Side of the clean windows [`Self::step`] takes: the patch plus its measurement context.
    pub fn window(&self) -> i64 {
        self.size + 2 * self.margin
    }

    /// Set the generator's learning rate for `step` of `total` (`DaviConfig::lr_at`).
    pub fn set_step(&mut self, step: u64, total: u64) {
        self.opt_g.config.lr = self.cfg.lr_at(step, total);
    }

    /// The measurement of a batch of clean windows: with a context margin, synthesised on the
    /// whole window (some sides ending at an image border) and cut to the patch; with random
    /// boxes, a fresh keep-mask per sample; else the spec's operator on the patch.
    fn synthesise(&self, x: &Tensor, rng: &mut SplitMix64) -> Measured {
        let sigma = self.cfg.operator.noise_sigma();
        tch::no_grad(|| {
            if let Some(op) = &self.op_ctx {
                let (n, s, m) = (x.size()[0], self.window(), self.margin);
                let keep = border_masks(rng, n, s, m, self.cfg.border_prob).to_device(self.device);
                let y = operators::measure(op.as_ref(), &(x * &keep), sigma)
                    .narrow(2, m, self.size)
                    .narrow(3, m, self.size);
                let x = x
                    .narrow(2, m, self.size)
                    .narrow(3, m, self.size)
                    .contiguous();
                let y_img = self.nets[0].op.lift(&y);
                return Measured {
                    x,
                    y,
                    y_img,
                    mask: None,
                };
            }
            if self.cfg.random_boxes {
                let (n, _, h, w) = x.size4().expect("4-D batch");
                // Noise, then the hole zero-filled: what every host hands libdavi, since
                // the restoration pipeline zero-fills the hole of the image it is given.
                let keep = random_box_masks(rng, n, h, w).to_device(self.device);
                let y = (x + x.randn_like() * sigma) * &keep;
                return Measured {
                    x: x.shallow_clone(),
                    y: y.shallow_clone(),
                    y_img: y,
                    mask: Some(keep),
                };
            }
            let y = self.measure(x);
            let y_img = self.nets[0].op.lift(&y);
            Measured {
                x: x.shallow_clone(),
                y,
                y_img,
                mask: None,
            }
        })
    }

    /// One full iteration (phase A then phase B) on the clean batch `x` in [-1, 1], of
    /// windows of side [`Self::window`].
    pub fn step(&mut self, x: &Tensor, rng: &mut SplitMix64) -> Terms {
        let m = self.synthesise(x, rng);
        for r in &self.nets {
            r.zero_grads();
        }

        // Phase A: fake score and discriminator (nothing to train when neither the
        // integral-KL term nor the GAN is on).
        let which_a: Vec<Which> = [
            (self.cfg.ikl_weight != 0.0, Which::Fake),
            (self.cfg.gan, Which::Disc),
        ]
        .into_iter()
        .filter_map(|(on, w)| on.then_some(w))
        .collect();
        let mut terms = Terms::new();
        let mut skipped_a = false;
        if !which_a.is_empty() {
            let chunks = self.draw_chunks(&m, rng);
            terms = self.run_phase(chunks, Replica::phase_a);
            skipped_a = self.finish_phase(&which_a);
        }

        // Phase B: generator. Gradients its loss leaves in the discriminator and the fake
        // score are discarded by `finish_phase`.
        let chunks = self.draw_chunks(&m, rng);
        terms.extend(self.run_phase(chunks, Replica::phase_b));
        let skipped_b = self.finish_phase(&[Which::Gen]);
        self.ema.update(&self.ema_vs, &self.nets[0].gen_vs);
        if let Some(s) = &self.scaler {
            terms.insert("amp_scale".into(), s.scale);
            terms.insert(
                "amp_skipped".into(),
                (skipped_a as u8 + skipped_b as u8) as f64,
            );
        }
        terms
    }

    /// Restore a clean batch's simulated measurement with the EMA generator, exactly as the
    /// official evaluator (t = 999). Returns (degraded lifted y, restored), both in [-1, 1].
    pub fn evaluate(&self, clean: &Tensor, seed: u64) -> Result<(Tensor, Tensor)> {
        let (_, c, h, w) = clean
            .size4()
            .map_err(|_| EngineError::InvalidInput("eval batch must be 4-D".into()))?;
        let op = operators::build(&self.cfg.operator, c, h, w, self.device)?;
        let h_eval = self.cfg.eval_perturb_h.unwrap_or(self.cfg.perturb_h);
        tch::no_grad(|| {
            let x = clean.to_device(self.device);
            let y = op.forward(&x);
            let y = &y
                + seeded_normal(&y.size(), seed).to_device(self.device)
                    * self.cfg.operator.noise_sigma();
            // Hosts hand over a zero-filled hole (see `synthesise`).
            let y = match op.keep_mask() {
                Some(k) if self.cfg.random_boxes => y * k,
                _ => y,
            };
            let y_img = op.lift(&y);
            let t = crate::diffusion::schedule::timesteps(
                RESTORE_T.min(self.diffusion.num_steps() as i64 - 1),
                x.size()[0],
                self.device,
            );
            let z = seeded_normal(&y_img.size(), seed ^ 0x5eed).to_device(self.device);
            let x_in = self
                .bridge
                .perturbed_interpolation(&t, &y_img, &y_img, h_eval, &z);
            let m = self.nets[0].teacher.meta.unet.size_multiple();
            if h % m != 0 || w % m != 0 {
                return Err(EngineError::InvalidInput(format!(
                    "eval crops must be multiples of {m}"
                )));
            }
            let t_val = t.int64_value(&[0]);
            let one = |tile: &Tensor| {
                let tt = crate::diffusion::schedule::timesteps(t_val, tile.size()[0], self.device);
                let eps = self.ema_net.forward(tile, &tt).narrow(1, 0, c);
                self.bridge.generator_output(&tt, tile, &eps)
            };
            if self.cfg.window {
                // As a window model restores: per context window at the training side.
                let mut pass = |thumb: &Tensor| {
                    let z = seeded_normal(&thumb.size(), seed ^ 0x5eed).to_device(self.device);
                    let tt =
                        crate::diffusion::schedule::timesteps(t_val, thumb.size()[0], self.device);
                    Ok(one(&self
                        .bridge
                        .perturbed_interpolation(&tt, thumb, thumb, h_eval, &z)))
                };
                let x_hat = crate::windows::restore_windowed(
                    op.as_ref(),
                    &y,
                    self.size,
                    m,
                    &mut pass,
                    &mut |_, _| true,
                )?;
                return Ok((y_img, x_hat));
            }
            // Tiles of the training size, blended, exactly as `Restorer` does for this model.
            let tiling = crate::tiling::Tiling {
                tile: self.size,
                overlap: self.size / 4,
            };
            let mut run = |tile: &Tensor| one(tile);
            let x_hat = crate::tiling::map_tiles(&x_in, tiling, &mut run, &mut |_, _| true)
                .expect("never cancelled");
            Ok((y_img, x_hat))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tanh_preconditioning_passes_the_plain_error_to_the_tanh_argument() {
        // x̂ = tanh(u): with the preconditioned loss, ∂L/∂u = 2(x̂ − x)/N wherever the weight
        // is below its cap (|x̂| < 0.95), where the plain MSE gives 2(x̂ − x)(1 − x̂²)/N.
        let u =
            Tensor::from_slice(&[-2.5f32, -1.5, -0.3, 0.0, 0.8, 1.7, 3.0]).set_requires_grad(true);
        let x = Tensor::from_slice(&[-0.9f32, -0.2, 0.1, 0.5, 0.0, 0.99, 0.2]);
        let x_hat = u.tanh();
        tanh_preconditioned_mse(&x, &x_hat).backward();
        let n = 7.0;
        let (xh, g) = (
            Vec::<f32>::try_from(x_hat.detach()).unwrap(),
            Vec::<f32>::try_from(u.grad()).unwrap(),
        );
        let xs = Vec::<f32>::try_from(x).unwrap();
        for i in 0..7 {
            let slope = 1.0 - xh[i] * xh[i];
            let w = (1.0 / slope).min(TANH_PRECONDITION_MAX as f32);
            let want = 2.0 * (xh[i] - xs[i]) * slope * w / n;
            assert!((g[i] - want).abs() < 1e-6, "{i}: {} vs {want}", g[i]);
            if w < TANH_PRECONDITION_MAX as f32 {
                assert!((g[i] - 2.0 * (xh[i] - xs[i]) / n).abs() < 1e-6, "{i}");
            }
        }
        // At x̂ = 0 it is the plain MSE.
        let z = Tensor::zeros([3], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0.3f32, -0.4, 0.1]);
        let (a, b) = (
            tanh_preconditioned_mse(&t, &z).double_value(&[]),
            (&t - &z).square().mean(Kind::Float).double_value(&[]),
        );
        assert!((a - b).abs() < 1e-9, "{a} vs {b}");
    }

    #[test]
    fn ikl_gradient_is_scaled_score_difference() {
        let _rng = crate::test_rng::seeded(0);
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
