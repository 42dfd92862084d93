//! One step of diffusion-prior training: uniform t, ε-prediction with learned-range
//! variance, hybrid loss (`mse + vb`), AdamW, EMA — guided diffusion's recipe for the
//! official teachers, with the schedule DAVI will query the prior with.
use super::losses::hybrid_loss;
use super::optim::{AdamW, AdamWConfig, Ema};
use super::Terms;
use crate::diffusion::{BetaSchedule, Diffusion};
use crate::error::Result;
use crate::unet::{UNetConfig, UNetModel};
use tch::{nn, Device, Kind, Tensor};

pub struct PriorTrainer {
    pub diffusion: Diffusion,
    pub vs: nn::VarStore,
    pub net: UNetModel,
    pub ema_vs: nn::VarStore,
    pub ema_net: UNetModel,
    pub ema: Ema,
    pub opt: AdamW,
    pub micro_batch: Option<usize>,
}

impl PriorTrainer {
    pub fn new(unet: &UNetConfig, schedule: BetaSchedule, steps: usize, lr: f64, micro_batch: Option<usize>, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let net = UNetModel::new(&vs.root(), unet)?;
        let mut ema_vs = nn::VarStore::new(device);
        let ema_net = UNetModel::new(&ema_vs.root(), unet)?;
        ema_vs.copy(&vs)?;
        ema_vs.freeze();
        let opt = AdamW::new(&vs, AdamWConfig { lr, ..Default::default() });
        Ok(PriorTrainer { diffusion: Diffusion::new(schedule, steps), vs, net, ema_vs, ema_net, ema: Ema::default(), opt, micro_batch })
    }

    /// One optimiser step on `x0` `(B, 3, H, W)` in [-1, 1].
    pub fn step(&mut self, x0: &Tensor) -> Terms {
        let b = x0.size()[0];
        let micro = self.micro_batch.unwrap_or(b as usize) as i64;
        let chunks = (b + micro - 1) / micro;
        let n = self.diffusion.num_steps() as i64;
        self.opt.zero_grad();
        let (mut mse, mut vb) = (0.0, 0.0);
        for i in 0..chunks {
            let x = x0.narrow(0, i * micro, micro.min(b - i * micro));
            let t = Tensor::randint(n, [x.size()[0]], (Kind::Int64, x.device()));
            let eps = x.randn_like();
            let terms = hybrid_loss(&self.diffusion, &self.net, &x, &t, &eps);
            let loss = terms.loss.mean(Kind::Float) / chunks as f64;
            loss.backward();
            mse += terms.mse.mean(Kind::Float).double_value(&[]) / chunks as f64;
            vb += terms.vb.mean(Kind::Float).double_value(&[]) / chunks as f64;
        }
        self.opt.step();
        self.ema.update(&self.ema_vs, &self.vs);
        Terms::from([("mse".into(), mse), ("vb".into(), vb), ("loss".into(), mse + vb)])
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
