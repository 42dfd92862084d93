//! One-step restoration, exactly as the official evaluator does it (docs/algorithm.md §6.1).
//!
//! 1. lift the measurement to image space (`check_dims`);
//! 2. `x_in = mu_x0[999]·ŷ + mu_x1[999]·ŷ + (1 - abar_999)·h·z` = `ŷ + 0.999267·h·z`;
//! 3. one U-Net evaluation at t = 999, keep the ε channels;
//! 4. `x̂ = tanh(x_in - std_fwd[999]·ε)`.
//!
//! Runs under no-grad. `h = 0` makes the result a deterministic function of the input; with
//! `h > 0`, `z` comes from a generator seeded by the caller, so results reproduce on CPU.
//!
//! Step 3 may run in reduced precision ([`Restorer::set_precision`], [`Precision`]): the
//! network's weights and its input are bf16 or fp16, everything else stays f32.
use crate::diffusion::{schedule::timesteps, Bridge, Diffusion};
use crate::ensemble;
use crate::error::{EngineError, Result};
use crate::operators::Operator;
pub use crate::precision::Precision;
use crate::tiling::{map_tiles_parallel, SharedRead, Tiling};
use crate::weights::LoadedModel;
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Device, Kind, Tensor};

/// The timestep every official restoration uses.
pub const RESTORE_T: i64 = 999;

/// A loaded generator plus the bridge arrays of its schedule.
pub struct Restorer {
    pub model: LoadedModel,
    pub bridge: Bridge,
    pub device: Device,
    /// How the tile batches of a CPU restore are run: `0` (the default) = one worker thread
    /// per libtorch intra-op thread (`tch::get_num_threads()` when the restore starts), each
    /// worker running its batches with one intra-op thread; `1` = one batch at a time with
    /// libtorch's intra-op threads (the behaviour before workers existed); `n` = n workers.
    /// See [`crate::tiling::map_tiles_parallel`] and docs/performance.md. CUDA restores and
    /// single-tile images always run one call at a time.
    pub tile_workers: usize,
    /// Self-ensemble size: 1 (the default) runs the network once per tile; 2, 4 or 8 restore
    /// the image in that many orientations and average them ([`crate::ensemble`]), for a
    /// better result at that many times the work. Checked when a restore starts.
    pub ensemble: usize,
    /// The precision the network runs in ([`Self::set_precision`]); the weights in `model`
    /// are of its kind.
    precision: Precision,
    work: WorkCounter,
    /// A window model's measurement denoiser ([`crate::weights::LoadedModel::denoiser`]): a
    /// tile generator run on the window model's answer, whose measured part it cleans
    /// ([`crate::windows::clean_measured_part`]).
    denoiser: Option<Box<Restorer>>,
}

/// Network work a [`Restorer`] has done since it was made (or since
/// [`Restorer::reset_network_work`]): what a benchmark needs to compute its floor
/// (`scripts/bench-photo.sh`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NetworkWork {
    /// Network evaluations (calls of the U-Net's forward).
    pub calls: u64,
    /// Samples evaluated (tiles or windows, times the image batch).
    pub samples: u64,
    /// Pixels evaluated, padding included.
    pub pixels: u64,
    /// Floating-point operations of those evaluations, [`crate::unet::UNetConfig::forward_flops`].
    pub flops: f64,
}

impl std::ops::Add for NetworkWork {
    type Output = NetworkWork;
    fn add(self, o: NetworkWork) -> NetworkWork {
        NetworkWork {
            calls: self.calls + o.calls,
            samples: self.samples + o.samples,
            pixels: self.pixels + o.pixels,
            flops: self.flops + o.flops,
        }
    }
}

#[derive(Default)]
struct WorkCounter {
    calls: AtomicU64,
    samples: AtomicU64,
    pixels: AtomicU64,
    flops: AtomicU64,
}

impl WorkCounter {
    /// Count one network call on `b` samples of `h × w` (padded) pixels.
    fn count(&self, b: i64, h: i64, w: i64, cfg: &crate::unet::UNetConfig) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.samples.fetch_add(b as u64, Ordering::Relaxed);
        self.pixels.fetch_add((b * h * w) as u64, Ordering::Relaxed);
        self.flops.fetch_add(
            (b as f64 * cfg.forward_flops(h, w)) as u64,
            Ordering::Relaxed,
        );
    }
}

impl Restorer {
    pub fn new(mut model: LoadedModel, device: Device) -> Self {
        let d = Diffusion::new(model.meta.schedule, model.meta.diffusion_steps);
        let denoiser = model
            .denoiser
            .take()
            .map(|m| Box::new(Restorer::new(*m, device)));
        Restorer {
            bridge: Bridge::new(&d),
            model,
            device,
            tile_workers: 0,
            ensemble: 1,
            precision: Precision::Fp32,
            work: WorkCounter::default(),
            denoiser,
        }
    }

    /// The measurement denoiser of a window model, if its file holds one.
    pub fn measurement_denoiser(&self) -> Option<&Restorer> {
        self.denoiser.as_deref()
    }

    /// Run the network in `precision` from now on. The weights are converted once, in place
    /// (the f32 copy is not kept, so a bf16 restorer holds half the weight memory); going back
    /// to f32 after a conversion is refused, since the rounded weights could not give f32
    /// results: load the model again instead. `Device` error when the device cannot run the
    /// precision ([`Precision::check_device`]).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == self.precision {
            return Ok(());
        }
        precision.check_device(self.device)?;
        if self.precision != Precision::Fp32 {
            return Err(EngineError::InvalidInput(format!(
                "the weights are already converted to {}; load the model again for {precision}",
                self.precision
            )));
        }
        tch::no_grad(|| self.model.vs.set_kind(precision.kind()));
        self.precision = precision;
        if let Some(d) = &mut self.denoiser {
            d.set_precision(precision)?;
        }
        Ok(())
    }

    /// The precision the network runs in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The network work done so far (all threads, all restores of this restorer, its
    /// measurement denoiser's included).
    pub fn network_work(&self) -> NetworkWork {
        let w = &self.work;
        let own = NetworkWork {
            calls: w.calls.load(Ordering::Relaxed),
            samples: w.samples.load(Ordering::Relaxed),
            pixels: w.pixels.load(Ordering::Relaxed),
            flops: w.flops.load(Ordering::Relaxed) as f64,
        };
        match &self.denoiser {
            None => own,
            Some(d) => own + d.network_work(),
        }
    }

    /// Set the counters of [`Self::network_work`] back to zero.
    pub fn reset_network_work(&self) {
        for c in [
            &self.work.calls,
            &self.work.samples,
            &self.work.pixels,
            &self.work.flops,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        if let Some(d) = &self.denoiser {
            d.reset_network_work();
        }
    }

    /// Worker threads for the tile batches of one restore (see [`Self::tile_workers`]).
    fn workers_for(&self) -> usize {
        if self.device != Device::Cpu {
            return 1;
        }
        match self.tile_workers {
            0 => tch::get_num_threads().max(1) as usize,
            n => n,
        }
    }

    /// The perturbation `h` to use: the explicit value, else the model's, else 0.1.
    pub fn perturb_h(&self, h: Option<f64>) -> f64 {
        h.or(self.model.meta.perturb_h).unwrap_or(0.1)
    }

    /// Restore from an already lifted measurement `y_img` `(B, C, H, W)` in [-1, 1], any
    /// size: the perturbed input is formed for the whole image (so the noise does not depend
    /// on the tiling), then the network runs per tile (padded by reflection to a multiple of
    /// its down-sampling factor) and the tiles are blended. `progress(fraction)` returns
    /// false to cancel.
    pub fn restore_lifted(
        &self,
        y_img: &Tensor,
        opts: &RestoreOptions,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Tensor> {
        self.restore_lifted_with(y_img, opts, self.workers_for(), self.ensemble, progress)
    }

    /// [`Self::restore_lifted`] with the tile workers and self-ensemble given (a measurement
    /// denoiser runs with its window model's workers, and without an ensemble).
    fn restore_lifted_with(
        &self,
        y_img: &Tensor,
        opts: &RestoreOptions,
        workers: usize,
        ensemble_size: usize,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Tensor> {
        let cfg = &self.model.meta.unet;
        let (_, c, hh, ww) = y_img
            .size4()
            .map_err(|_| EngineError::InvalidInput("expected a (B, C, H, W) batch".into()))?;
        if c != cfg.in_channels {
            return Err(EngineError::InvalidInput(format!(
                "the model takes {} channels, the image has {c}",
                cfg.in_channels
            )));
        }
        if hh < 1 || ww < 1 {
            return Err(EngineError::InvalidInput("empty image".into()));
        }
        ensemble::check_size(ensemble_size)?;
        let h = self.perturb_h(opts.perturb_h);
        let t_val = RESTORE_T.min(self.model.meta.diffusion_steps as i64 - 1);
        let m = cfg.size_multiple();
        let tiling = opts.tiling.unwrap_or_else(|| self.default_tiling());
        if tiling.tile < m
            || tiling.tile % m != 0
            || tiling.overlap < 0
            || tiling.overlap >= tiling.tile
        {
            return Err(EngineError::InvalidInput(format!(
                "tile size {} must be a positive multiple of {m} and larger than the overlap {}",
                tiling.tile, tiling.overlap
            )));
        }
        tch::no_grad(|| {
            let y = y_img.to_device(self.device).to_kind(Kind::Float);
            let b = y.size()[0];
            let t_full = timesteps(t_val, b, self.device);
            // With h = 0 the noise is never read: no image-sized buffer of zeros for it.
            let z = if h != 0.0 {
                seeded_normal(&y.size(), opts.seed).to_device(self.device)
            } else {
                y.shallow_clone()
            };
            let x_in = self.bridge.perturbed_interpolation(&t_full, &y, &y, h, &z);
            drop(z);
            // The workers only read the network (tiling::SharedRead).
            let shared = SharedRead(self);
            let run = |tile: &Tensor| shared.get().denoise_tile(tile, t_val, m);
            // One pass per orientation of the self-ensemble, each turned back and summed.
            let turns = ensemble::orientations(ensemble_size);
            let n = turns.len() as f32;
            let mut sum: Option<Tensor> = None;
            for (i, &k) in turns.iter().enumerate() {
                let mut report = |done: usize, total: usize| {
                    progress((i as f32 + done as f32 / total.max(1) as f32) / n)
                };
                let x_k = ensemble::orient(&x_in, k);
                let out = map_tiles_parallel(&x_k, tiling, workers, &run, &mut report)
                    .ok_or(EngineError::Cancelled)?;
                let out = ensemble::unorient(&out, k);
                sum = Some(match sum {
                    None => out,
                    Some(acc) => acc + out,
                });
            }
            let sum = sum.expect("an ensemble has at least one orientation");
            Ok(if turns.len() == 1 {
                sum
            } else {
                sum / turns.len() as f64
            })
        })
    }

    /// The model's preferred tiling: its `restore_tile` (a quarter of it as overlap), else
    /// 256-pixel tiles with 32 pixels of overlap.
    pub fn default_tiling(&self) -> Tiling {
        match self.model.meta.restore_tile {
            Some(t) if t > 0 => Tiling {
                tile: t,
                overlap: t / 4,
            },
            _ => Tiling::default(),
        }
    }

    /// One network evaluation on a tile of the perturbed input, `x̂ = tanh(x - std_fwd·ε)`.
    /// Only the forward runs in [`Self::precision`]: its input is cast to it, the ε channels
    /// back to f32, and `x_in` and the bridge arithmetic stay f32.
    fn denoise_tile(&self, x_in: &Tensor, t_val: i64, m: i64) -> Tensor {
        let (b, c, h, w) = x_in.size4().expect("4-D tile");
        let (ph, pw) = ((m - h % m) % m, (m - w % m) % m);
        let padded = if ph > 0 || pw > 0 {
            pad_reflect(x_in, ph, pw)
        } else {
            x_in.shallow_clone()
        };
        let padded = padded.to_kind(self.precision.kind());
        let t = timesteps(t_val, b, self.device);
        self.work.count(b, h + ph, w + pw, &self.model.meta.unet);
        let out = self.model.net.forward(&padded, &t);
        drop(padded);
        let eps = out
            .narrow(1, 0, c)
            .narrow(2, 0, h)
            .narrow(3, 0, w)
            .to_kind(Kind::Float);
        self.bridge.generator_output(&t, x_in, &eps)
    }

    /// Restore from a raw measurement: lift it with the operator, then [`Self::restore_lifted`].
    pub fn restore(
        &self,
        op: &dyn Operator,
        y: &Tensor,
        opts: &RestoreOptions,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Tensor> {
        let y = y.to_device(self.device);
        if let Some(side) = self.model.meta.restore_window {
            // A window model: one pass per low-resolution context window, then projection
            // onto the measurement (`crate::windows`); tile options do not apply.
            let m = self.model.meta.unet.size_multiple();
            let mut one_pass = |t: &Tensor| {
                let (_, _, h, w) = t.size4()?;
                let tile = (h.max(w) + m - 1) / m * m;
                let single = RestoreOptions {
                    tiling: Some(Tiling { tile, overlap: 0 }),
                    ..*opts
                };
                self.restore_lifted(t, &single, &mut |_| true)
            };
            let sigma = opts.measurement_noise.unwrap_or_else(|| {
                self.model
                    .meta
                    .operator
                    .as_ref()
                    .map_or(0.0, |o| o.noise_sigma())
            });
            let denoiser = self.denoiser.as_deref().filter(|_| sigma > 0.0);
            // With a denoiser to run, the windows are the first half of the progress.
            let share = if denoiser.is_some() { 0.5 } else { 1.0 };
            let mut report =
                |done: usize, total: usize| progress(share * done as f32 / total.max(1) as f32);
            let answer =
                crate::windows::restore_windowed(op, &y, side, m, &mut one_pass, &mut report)?;
            let Some(d) = denoiser else {
                return Ok(answer);
            };
            // The denoiser's own tiling, perturbation and seed stream; no ensemble.
            let d_opts = RestoreOptions {
                seed: opts.seed.wrapping_add(1),
                ..RestoreOptions::default()
            };
            let passes = crate::windows::denoiser_passes(op, &answer);
            let mut cleaned = answer.shallow_clone();
            for pass in 0..passes {
                let mut d_progress =
                    |f: f32| progress(0.5 + 0.5 * (pass as f32 + f) / passes as f32);
                cleaned = d.restore_lifted_with(
                    &cleaned,
                    &d_opts,
                    self.workers_for(),
                    1,
                    &mut d_progress,
                )?;
            }
            return Ok(crate::windows::clean_measured_part(op, &answer, &cleaned));
        }
        let y_img = tch::no_grad(|| op.lift(&y));
        self.restore_lifted(&y_img, opts, progress)
    }
}

/// Options of one restoration call.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreOptions {
    /// Bridge perturbation `h`; `None` uses the model's (official 0.1 / 0.01). 0 makes the
    /// result a deterministic function of the input.
    pub perturb_h: Option<f64>,
    /// Seed of the perturbation noise.
    pub seed: u64,
    /// Tile geometry; `None` = the model's preferred tiling (`restore_tile`, else 256-pixel
    /// tiles with 32 pixels of overlap, the official training size). Images no larger than a
    /// tile run in one pass.
    pub tiling: Option<Tiling>,
    /// The noise σ of the measurement ([-1, 1] units), read only by a window model with a
    /// measurement denoiser: above 0, the measured part of its answer (the observed pixels
    /// of inpainting, the gray of colorization) comes from the denoised answer; 0 keeps it
    /// exactly as observed (a clean photograph). `None`: the noise of the operator the model
    /// was trained for.
    pub measurement_noise: Option<f64>,
}

/// Pad bottom/right by reflection (replication where the image is too small to reflect).
fn pad_reflect(x: &Tensor, ph: i64, pw: i64) -> Tensor {
    let (_, _, h, w) = x.size4().expect("4-D");
    if ph < h && pw < w {
        x.reflection_pad2d([0, pw, 0, ph])
    } else {
        x.replication_pad2d([0, pw, 0, ph])
    }
}

/// Standard normal noise from a CPU generator seeded by `seed`, independent of the global
/// tch RNG (so concurrent restores on other threads do not disturb reproducibility).
pub fn seeded_normal(shape: &[i64], seed: u64) -> Tensor {
    let mut rng = SplitMix64(seed);
    let n: i64 = shape.iter().product();
    let mut v = Vec::with_capacity(n as usize);
    while (v.len() as i64) < n {
        // Box–Muller
        let u1 = ((rng.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = ((rng.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let r = (-2.0 * u1.ln()).sqrt();
        let th = 2.0 * std::f64::consts::PI * u2;
        v.push((r * th.cos()) as f32);
        if (v.len() as i64) < n {
            v.push((r * th.sin()) as f32);
        }
    }
    Tensor::from_slice(&v).reshape(shape)
}

/// A tiny, well-mixed 64-bit generator (SplitMix64) for reproducible noise.
pub struct SplitMix64(pub u64);
impl SplitMix64 {
    /// The next 64 random bits (a generator, never exhausted: not an `Iterator`).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform draw in [0, 1) from the top 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
