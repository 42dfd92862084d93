//! AdamW and the EMA of ema_pytorch, written out so their whole state lives in our
//! checkpoints (tch's optimiser wrapper hides Adam's moments, which would make an exact
//! resume impossible).
//!
//! AdamW follows PyTorch's defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01 on every
//! parameter, docs/algorithm.md §5.6 and quirk Q13). The EMA follows
//! `ema_pytorch.EMA(beta=0.9999, update_every=5)` with its defaults (docs/algorithm.md §5.7):
//! hard copies until call 100, then
//! decay `min(beta, 1 - (1 + n - 100)^(-2/3))` every 5th call.
use tch::{nn, Kind, Tensor};

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// Zero every defined gradient of a var store's variables.
pub fn zero_grads(vs: &nn::VarStore) {
    for (_, v) in vs.variables() {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.detach_().zero_();
        }
    }
}

/// Add `src`'s gradients into those of the same-named variables of `dst` (data parallel:
/// a replica's gradients into the optimised network's, across devices). Micro-batch 0 always
/// runs on `dst`'s device and reaches every variable, so `dst`'s gradients are defined
/// wherever `src`'s are.
pub fn add_grads_into(dst: &nn::VarStore, src: &nn::VarStore) {
    let targets = dst.variables();
    for (name, v) in src.variables() {
        let (g, mut pg) = (v.grad(), targets[&name].grad());
        if g.defined() && pg.defined() {
            pg += g.to_device(dst.device());
        }
    }
}

/// AdamW over the trainable variables of one var store (sorted by name for stable order).
pub struct AdamW {
    pub config: AdamWConfig,
    pub names: Vec<String>,
    params: Vec<Tensor>,
    pub exp_avg: Vec<Tensor>,
    pub exp_avg_sq: Vec<Tensor>,
    pub step: i64,
}

impl AdamW {
    pub fn new(vs: &nn::VarStore, config: AdamWConfig) -> Self {
        let mut vars: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let exp_avg = vars.iter().map(|(_, t)| t.zeros_like()).collect();
        let exp_avg_sq = vars.iter().map(|(_, t)| t.zeros_like()).collect();
        let (names, params) = vars.into_iter().unzip();
        AdamW {
            config,
            names,
            params,
            exp_avg,
            exp_avg_sq,
            step: 0,
        }
    }

    /// The optimised tensors, in the order of `names`.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One update with the current gradients (parameters without a gradient are skipped,
    /// as PyTorch does).
    pub fn step(&mut self) {
        self.step += 1;
        let c = self.config;
        let bc1 = 1.0 - c.beta1.powi(self.step as i32);
        let bc2 = 1.0 - c.beta2.powi(self.step as i32);
        tch::no_grad(|| {
            for i in 0..self.params.len() {
                let g = self.params[i].grad();
                if !g.defined() {
                    continue;
                }
                let p = &mut self.params[i];
                let _ = p.g_mul_scalar_(1.0 - c.lr * c.weight_decay);
                let m = &mut self.exp_avg[i];
                let _ = m.g_mul_scalar_(c.beta1).g_add_(&(&g * (1.0 - c.beta1)));
                let v = &mut self.exp_avg_sq[i];
                let _ = v
                    .g_mul_scalar_(c.beta2)
                    .g_add_(&(g.square() * (1.0 - c.beta2)));
                let denom = (v.sqrt() / bc2.sqrt()) + c.eps;
                let upd = (&*m / denom) * (c.lr / bc1);
                let _ = p.g_sub_(&upd);
            }
        });
    }

    /// Named state tensors for a checkpoint (`<prefix>.m.<name>`, `<prefix>.v.<name>`).
    pub fn state(&self, prefix: &str) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (i, n) in self.names.iter().enumerate() {
            out.push((format!("{prefix}.m.{n}"), self.exp_avg[i].shallow_clone()));
            out.push((
                format!("{prefix}.v.{n}"),
                self.exp_avg_sq[i].shallow_clone(),
            ));
        }
        out.push((format!("{prefix}.step"), Tensor::from_slice(&[self.step])));
        out
    }

    /// Restore from [`AdamW::state`] entries; every moment must be present.
    pub fn load_state(
        &mut self,
        prefix: &str,
        get: &dyn Fn(&str) -> Option<Tensor>,
    ) -> Result<(), String> {
        tch::no_grad(|| {
            for (i, n) in self.names.iter().enumerate() {
                let m = get(&format!("{prefix}.m.{n}"))
                    .ok_or(format!("optimizer state {prefix}.m.{n} missing"))?;
                let v = get(&format!("{prefix}.v.{n}"))
                    .ok_or(format!("optimizer state {prefix}.v.{n} missing"))?;
                self.exp_avg[i].copy_(&m);
                self.exp_avg_sq[i].copy_(&v);
            }
            Ok::<(), String>(())
        })?;
        let s = get(&format!("{prefix}.step")).ok_or(format!("{prefix}.step missing"))?;
        self.step = s.int64_value(&[0]);
        Ok(())
    }
}

/// Exponential moving average of a network's weights (ema_pytorch semantics).
pub struct Ema {
    pub beta: f64,
    pub update_every: i64,
    pub update_after_step: i64,
    pub inv_gamma: f64,
    pub power: f64,
    /// Number of `update` calls so far (ema_pytorch's `step` buffer).
    pub calls: i64,
}

impl Default for Ema {
    fn default() -> Self {
        Ema {
            beta: 0.9999,
            update_every: 5,
            update_after_step: 100,
            inv_gamma: 1.0,
            power: 2.0 / 3.0,
            calls: 0,
        }
    }
}

impl Ema {
    /// The decay used at call index `n` (0-based, before increment); `None` = no update,
    /// `Some(0.0)` = hard copy.
    pub fn decay_at(&self, n: i64) -> Option<f64> {
        if n % self.update_every != 0 {
            return None;
        }
        if n <= self.update_after_step {
            return Some(0.0);
        }
        // ema_pytorch increments its step before computing the decay.
        let epoch = (n - self.update_after_step).max(0) as f64;
        let value = 1.0 - (1.0 + epoch / self.inv_gamma).powf(-self.power);
        if epoch <= 0.0 {
            return Some(0.0);
        }
        Some(value.clamp(0.0, self.beta))
    }

    /// One `update()` call: maybe blend `online` into `ema`.
    pub fn update(&mut self, ema: &nn::VarStore, online: &nn::VarStore) {
        let n = self.calls;
        self.calls += 1;
        let Some(decay) = self.decay_at(n) else {
            return;
        };
        let on = online.variables();
        tch::no_grad(|| {
            for (name, mut e) in ema.variables() {
                let o = &on[&name];
                if decay == 0.0 {
                    e.copy_(o);
                } else {
                    let diff = (o - &e) * (1.0 - decay);
                    let _ = e.g_add_(&diff);
                }
            }
        });
    }
}

/// Global L2 norm of a list of tensors.
pub fn global_norm(ts: &[Tensor]) -> f64 {
    ts.iter()
        .map(|t| {
            t.to_kind(Kind::Double)
                .square()
                .sum(Kind::Double)
                .double_value(&[])
        })
        .sum::<f64>()
        .sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn ema_schedule_follows_ema_pytorch() {
        let e = Ema::default();
        assert_eq!(e.decay_at(1), None);
        assert_eq!(e.decay_at(100), Some(0.0));
        // first averaging call n = 105: 1 - (1 + 5)^(-2/3) = 0.697 (docs/algorithm.md §5.7)
        let d = e.decay_at(105).unwrap();
        assert!((d - (1.0 - 6f64.powf(-2.0 / 3.0))).abs() < 1e-12, "{d}");
        assert!((d - 0.697).abs() < 1e-3);
        // ~31.6K calls -> 0.999
        let d = e.decay_at(31_725).unwrap();
        assert!((d - 0.999).abs() < 1e-5, "{d}");
        assert_eq!(e.decay_at(10_000_000).unwrap(), 0.9999);
    }

    #[test]
    fn ema_blends_after_warmup() {
        let a = nn::VarStore::new(Device::Cpu);
        let b = nn::VarStore::new(Device::Cpu);
        let _ = a.root().zeros("w", &[3]);
        let wb = b.root().ones("w", &[3]);
        let mut e = Ema {
            update_after_step: 0,
            ..Default::default()
        };
        e.update(&a, &b); // n = 0 -> hard copy
        assert_eq!(a.variables()["w"].double_value(&[0]), 1.0);
        let _ = tch::no_grad(|| wb.shallow_clone().fill_(3.0));
        for _ in 0..5 {
            e.update(&a, &b);
        }
        // n = 5: epoch 5 -> decay 1 - 6^(-2/3)
        let d = 1.0 - 6f64.powf(-2.0 / 3.0);
        let want = 1.0 + (1.0 - d) * 2.0;
        assert!((a.variables()["w"].double_value(&[0]) - want).abs() < 1e-6);
    }

    #[test]
    fn adamw_matches_closed_form_first_step() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().ones("w", &[2]);
        let mut opt = AdamW::new(
            &vs,
            AdamWConfig {
                lr: 0.1,
                ..Default::default()
            },
        );
        let loss = (&w * Tensor::from_slice(&[2.0f32, -3.0])).sum(Kind::Float);
        loss.backward();
        opt.step();
        // first step: p*(1 - lr*wd) - lr * sign(g) (m/sqrt(v) = g/|g| after bias correction)
        let v = Vec::<f32>::try_from(&w.detach()).unwrap();
        assert!((v[0] as f64 - (0.999 - 0.1)).abs() < 1e-5, "{v:?}");
        assert!((v[1] as f64 - (0.999 + 0.1)).abs() < 1e-5, "{v:?}");
    }
}
