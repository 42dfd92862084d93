//! One step of diffusion-prior training: uniform t, ε-prediction with learned-range
//! variance, hybrid loss (`mse + vb`), AdamW, EMA — guided diffusion's recipe for the
//! official teachers, with the schedule DAVI will query the prior with.
use super::amp::{GradScaler, Precision};
use super::losses::hybrid_loss;
use super::optim::{add_grads_into, zero_grads, AdamW, AdamWConfig, Ema};
use super::Terms;
use crate::diffusion::{BetaSchedule, Diffusion};
use crate::error::{EngineError, Result};
use crate::unet::{UNetConfig, UNetModel};
use tch::{nn, Device, Kind, Tensor};

pub struct PriorTrainer {
    pub diffusion: Diffusion,
    /// The optimised network (on the first training device).
    pub vs: nn::VarStore,
    pub net: UNetModel,
    /// Copies on the other devices (data parallel), refreshed after every step.
    pub replicas: Vec<(nn::VarStore, UNetModel)>,
    pub ema_vs: nn::VarStore,
    pub ema_net: UNetModel,
    pub ema: Ema,
    pub opt: AdamW,
    pub micro_batch: Option<usize>,
    /// Dynamic loss scaling, with `Precision::Fp16` (forward passes under CUDA autocast).
    pub scaler: Option<GradScaler>,
}

impl PriorTrainer {
    pub fn new(
        unet: &UNetConfig,
        schedule: BetaSchedule,
        steps: usize,
        lr: f64,
        micro_batch: Option<usize>,
        device: Device,
    ) -> Result<Self> {
        Self::with_devices(
            unet,
            schedule,
            steps,
            lr,
            micro_batch,
            &[device],
            Precision::Fp32,
        )
    }

    /// Train on `devices` (data parallel when there are several) at `precision`.
    pub fn with_devices(
        unet: &UNetConfig,
        schedule: BetaSchedule,
        steps: usize,
        lr: f64,
        micro_batch: Option<usize>,
        devices: &[Device],
        precision: Precision,
    ) -> Result<Self> {
        let device = *devices
            .first()
            .ok_or_else(|| EngineError::InvalidInput("no training device".into()))?;
        if precision == Precision::Fp16 && devices.iter().any(|d| !d.is_cuda()) {
            return Err(EngineError::Device(
                "precision = \"fp16\" (CUDA autocast with loss scaling) \
                needs CUDA devices; train with fp32 on a CPU"
                    .into(),
            ));
        }
        let vs = nn::VarStore::new(device);
        let net = UNetModel::new(&vs.root(), unet)?;
        let mut replicas = Vec::new();
        for &d in &devices[1..] {
            let mut rvs = nn::VarStore::new(d);
            let rnet = UNetModel::new(&rvs.root(), unet)?;
            rvs.copy(&vs)?;
            replicas.push((rvs, rnet));
        }
        let mut ema_vs = nn::VarStore::new(device);
        let ema_net = UNetModel::new(&ema_vs.root(), unet)?;
        ema_vs.copy(&vs)?;
        ema_vs.freeze();
        let opt = AdamW::new(
            &vs,
            AdamWConfig {
                lr,
                ..Default::default()
            },
        );
        let scaler = (precision == Precision::Fp16).then(GradScaler::default);
        Ok(PriorTrainer {
            diffusion: Diffusion::new(schedule, steps),
            vs,
            net,
            replicas,
            ema_vs,
            ema_net,
            ema: Ema::default(),
            opt,
            micro_batch,
            scaler,
        })
    }

    /// Copy the optimised weights to the replicas (after an update or a checkpoint load).
    pub fn sync_replicas(&mut self) -> Result<()> {
        for (rvs, _) in &mut self.replicas {
            rvs.copy(&self.vs)?;
        }
        Ok(())
    }

    /// One optimiser step on `x0` `(B, 3, H, W)` in [-1, 1]. Micro-batch `i` runs on device
    /// `i mod devices`; the random draws are made up front in a fixed order, so the result
    /// does not depend on the number of devices beyond floating-point summation order.
    pub fn step(&mut self, x0: &Tensor) -> Terms {
        let b = x0.size()[0];
        let n_dev = 1 + self.replicas.len();
        let micro = self
            .micro_batch
            .map(|m| m as i64)
            .unwrap_or((b + n_dev as i64 - 1) / n_dev as i64)
            .max(1);
        let chunks = (b + micro - 1) / micro;
        let n = self.diffusion.num_steps() as i64;
        self.opt.zero_grad();
        let scale = self.scaler.as_ref().map(|s| s.scale).unwrap_or(1.0);
        let autocast = self.scaler.is_some();
        let mut jobs: Vec<Vec<(Tensor, Tensor, Tensor)>> = (0..n_dev).map(|_| Vec::new()).collect();
        for i in 0..chunks {
            let x = x0.narrow(0, i * micro, micro.min(b - i * micro));
            let t = Tensor::randint(n, [x.size()[0]], (Kind::Int64, x.device()));
            let eps = x.randn_like();
            let r = i as usize % n_dev;
            let dev = if r == 0 {
                x.device()
            } else {
                self.replicas[r - 1].0.device()
            };
            jobs[r].push((x.to_device(dev), t.to_device(dev), eps.to_device(dev)));
        }
        let diffusion = &self.diffusion;
        let work = move |net: &UNetModel, js: Vec<(Tensor, Tensor, Tensor)>| -> (f64, f64) {
            let (mut mse, mut vb) = (0.0, 0.0);
            for (x, t, eps) in js {
                let terms = tch::autocast(autocast, || hybrid_loss(diffusion, net, &x, &t, &eps));
                (terms.loss.mean(Kind::Float) * (scale / chunks as f64)).backward();
                mse += terms.mse.mean(Kind::Float).double_value(&[]) / chunks as f64;
                vb += terms.vb.mean(Kind::Float).double_value(&[]) / chunks as f64;
            }
            (mse, vb)
        };
        let mut jobs = jobs.into_iter();
        let own = jobs.next().expect("primary jobs");
        let (mse, vb) = if self.replicas.is_empty() {
            work(&self.net, own)
        } else {
            let work = &work;
            let net = &mut self.net;
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .replicas
                    .iter_mut()
                    .zip(jobs)
                    .map(|((_, rnet), js)| scope.spawn(move || work(rnet, js)))
                    .collect();
                let first = work(net, own);
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a training replica panicked"))
                    .fold(first, |a, b| (a.0 + b.0, a.1 + b.1))
            })
        };
        // Sum the replicas' gradients into the optimised network's.
        for (rvs, _) in &self.replicas {
            add_grads_into(&self.vs, rvs);
            zero_grads(rvs);
        }
        let found_inf = self
            .scaler
            .as_ref()
            .is_some_and(|s| s.unscale(self.opt.params()));
        if !found_inf {
            self.opt.step();
        }
        self.opt.zero_grad();
        if let Some(s) = &mut self.scaler {
            s.update(found_inf);
        }
        self.sync_replicas()
            .expect("replicas have the same variables");
        self.ema.update(&self.ema_vs, &self.vs);
        let mut terms = Terms::from([
            ("mse".into(), mse),
            ("vb".into(), vb),
            ("loss".into(), mse + vb),
        ]);
        if let Some(s) = &self.scaler {
            terms.insert("amp_scale".into(), s.scale);
            terms.insert("amp_skipped".into(), found_inf as u8 as f64);
        }
        terms
    }

    /// Held-out ε-MSE of the EMA network at a fixed set of timesteps (no gradient).
    pub fn eval_mse(&self, x0: &Tensor, seed: i64) -> f64 {
        tch::manual_seed(seed);
        tch::no_grad(|| {
            let n = self.diffusion.num_steps() as i64;
            let mut total = 0.0;
            let ts = [n / 10, n / 2, 9 * n / 10];
            for &tv in &ts {
                let t = Tensor::full([x0.size()[0]], tv, (Kind::Int64, x0.device()));
                let eps = x0.randn_like();
                let xt = self.diffusion.q_sample(x0, &t, &eps);
                let out = self.ema_net.forward(&xt, &t).narrow(1, 0, x0.size()[1]);
                total += (out - eps).square().mean(Kind::Float).double_value(&[]);
            }
            total / ts.len() as f64
        })
    }
}
