//! `davi restore` with the built-in engine, shared with `davi batch`: the options (model,
//! operator, device, precision, seed, perturbation, tiling), one model load ([`Engine::load`]) and
//! the restoration of one file to another ([`Engine::restore_file`]), metadata carried and the
//! output written atomically (`imageio::write_with_meta`).
use crate::{imageio, load_generator, OpArgs};
use anyhow::{bail, Result};
use clap::Args;
use davi_engine::pipeline;
use davi_engine::restore::{Precision, RestoreOptions, Restorer};
use davi_engine::tiling::Tiling;
use davi_sdk::OperatorSpec;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The values of every `--precision` option ([`Precision::name`]).
pub const PRECISIONS: [&str; 3] = ["fp32", "bf16", "fp16"];

/// The options of `davi restore` that also apply to `davi batch`.
#[derive(Args, Clone)]
pub struct RestoreArgs {
    /// Model file (.safetensors written by `davi convert` or the trainer). Default: the
    /// shipped model for the task (see docs/models.md).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub op: OpArgs,
    /// auto | cpu | cuda | cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Precision of the network: fp32, bf16 (CUDA, and CPUs with bf16 instructions; slightly
    /// less exact, and faster only on CPUs with AMX and on GPUs: docs/performance.md) or fp16
    /// (CUDA only). The rest of the restore stays fp32.
    #[arg(long, default_value = "fp32", value_parser = PRECISIONS)]
    pub precision: String,
    /// Seed of the bridge perturbation noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bridge perturbation h (default: the model's; 0 = deterministic).
    #[arg(long)]
    pub perturb_h: Option<f64>,
    /// Tile size in pixels (a multiple of the network's down-sampling factor). Default:
    /// the model's preferred tile (its training patch size), else 256.
    #[arg(long)]
    pub tile: Option<i64>,
    /// Overlap between neighbouring tiles, blended smoothly (default: a quarter tile).
    #[arg(long)]
    pub overlap: Option<i64>,
    /// CPU threads libtorch uses (default: its own choice, one per core, or OMP_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<u32>,
    /// How tile batches use those threads on a CPU: 0 = one worker per thread, each running
    /// whole batches with one intra-op thread (default; robust when other programs use the
    /// cores); 1 = one batch at a time split across all threads; N = N workers.
    #[arg(long, default_value_t = 0)]
    pub tile_workers: usize,
    /// Self-ensemble: restore in 1 (default), 2, 4 or 8 orientations of the image (mirrored,
    /// turned) and average them. Better results at that many times the time: +0.25 dB for
    /// denoising with 8 (docs/models.md, "Self-ensemble").
    #[arg(long, default_value_t = 1, value_parser = parse_ensemble)]
    pub ensemble: usize,
}

/// `--ensemble`: one of [`davi_engine::ensemble::SIZES`].
fn parse_ensemble(s: &str) -> std::result::Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    davi_engine::ensemble::check_size(n).map_err(|e| e.to_string())?;
    Ok(n)
}

impl RestoreArgs {
    /// The restore options these flags ask for. `model_tiling` is the model's own, which a
    /// lone `--overlap` (or `--tile`) changes only in what it names.
    pub fn options(&self, model_tiling: Tiling) -> RestoreOptions {
        let tiling = (self.tile.is_some() || self.overlap.is_some()).then(|| {
            let tile = self.tile.unwrap_or(model_tiling.tile);
            Tiling {
                tile,
                overlap: self.overlap.unwrap_or(tile / 4),
            }
        });
        RestoreOptions {
            perturb_h: self.perturb_h,
            seed: self.seed,
            tiling,
            measurement_noise: None,
        }
    }
}

/// A loaded generator and everything needed to restore files with it.
pub struct Engine {
    restorer: Restorer,
    spec: OperatorSpec,
    channels: i64,
    device: tch::Device,
    opts: RestoreOptions,
}

impl Engine {
    /// Load the model once (the given file, else the shipped default for the task).
    pub fn load(a: &RestoreArgs) -> Result<Engine> {
        match a.threads {
            Some(0) => bail!("--threads must be at least 1"),
            Some(n) if n > 1024 => bail!("--threads is {n}, at most 1024"),
            Some(n) => tch::set_num_threads(n as i32),
            None => {}
        }
        let device = davi_engine::parse_device(&a.device)?;
        let precision = Precision::parse(&a.precision)?;
        precision.check_device(device)?;
        let (loaded, spec) = load_generator(a.model.as_deref(), &a.op, device)?;
        let channels = loaded.meta.unet.in_channels;
        let mut restorer = Restorer::new(loaded, device);
        restorer.tile_workers = a.tile_workers;
        restorer.ensemble = a.ensemble;
        restorer.set_precision(precision)?;
        // The measurement noise the observation has (the model's, or `--noise-sigma`).
        let opts = RestoreOptions {
            measurement_noise: Some(spec.noise_sigma()),
            ..a.options(restorer.default_tiling())
        };
        Ok(Engine {
            restorer,
            spec,
            channels,
            device,
            opts,
        })
    }

    /// Restore `input` into `output` (an image, or `.npy` for the raw f32 result). ICC
    /// profile and EXIF travel as `imageio::Metadata` says; the output appears only whole.
    /// `show_progress`: a percentage on stderr when it is a terminal.
    pub fn restore_file(&self, input: &Path, output: &Path, show_progress: bool) -> Result<()> {
        self.restore_file_timed(input, output, show_progress)
            .map(|_| ())
    }

    /// [`Self::restore_file`], returning how long reading, restoring and writing took.
    pub fn restore_file_timed(
        &self,
        input: &Path,
        output: &Path,
        show_progress: bool,
    ) -> Result<FileTimings> {
        let clock = Instant::now();
        let (pic, meta) = imageio::read_with_meta(input)?;
        let read_s = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let imageio::Picture {
            color,
            alpha,
            sixteen_bit,
        } = pic;
        let problem =
            pipeline::problem_from_observation(&self.spec, &color, self.channels, self.device)?;
        // Whole photographs: hold no image-sized buffer longer than needed (peak RSS,
        // docs/performance.md). The observation is not needed once the measurement exists.
        drop(color);
        let mut last = -1i32;
        let tty = show_progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut progress = |f: f32| {
            let pct = (f * 100.0) as i32;
            if tty && pct / 10 != last / 10 {
                eprint!("\rrestoring {pct:3}%");
                last = pct;
            }
            true
        };
        let x_hat =
            self.restorer
                .restore(problem.op.as_ref(), &problem.y, &self.opts, &mut progress)?;
        let gray_out = problem.gray_out;
        drop(problem);
        if last >= 0 {
            eprintln!();
        }
        let (out_h, out_w) = (x_hat.size()[2], x_hat.size()[3]);
        let restore_s = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let timings = |write_s: f64| FileTimings {
            read_s,
            restore_s,
            write_s,
            width: out_w,
            height: out_h,
        };
        if output
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.eq_ignore_ascii_case("npy"))
            == Some(true)
        {
            imageio::write_npy(output, &x_hat.squeeze_dim(0))?;
            return Ok(timings(clock.elapsed().as_secs_f64()));
        }
        let color = pipeline::to_picture(&x_hat, gray_out).to_device(tch::Device::Cpu);
        drop(x_hat);
        let alpha = alpha.as_ref().map(|a| {
            let (h, w) = (color.size()[2], color.size()[3]);
            if a.size()[2] == h && a.size()[3] == w {
                a.shallow_clone()
            } else {
                a.upsample_bilinear2d([h, w], false, None, None)
                    .clamp(0.0, 1.0)
            }
        });
        imageio::write_with_meta(
            output,
            &imageio::Picture {
                color,
                alpha,
                sixteen_bit,
            },
            &meta,
        )?;
        Ok(timings(clock.elapsed().as_secs_f64()))
    }

    /// What `davi restore --stats-json` writes: the settings that decide speed, the phases'
    /// seconds and the network work of the restores so far (docs/performance.md).
    pub fn stats_json(
        &self,
        input: &Path,
        output: &Path,
        load_s: f64,
        t: &FileTimings,
    ) -> serde_json::Value {
        let work = self.restorer.network_work();
        let meta = &self.restorer.model.meta;
        serde_json::json!({
            "input": input.display().to_string(),
            "output": output.display().to_string(),
            "output_width": t.width,
            "output_height": t.height,
            "device": davi_engine::device::device_name(self.device),
            "threads": tch::get_num_threads(),
            "precision": self.restorer.precision().name(),
            "tile_workers": self.restorer.tile_workers,
            "ensemble": self.restorer.ensemble,
            "tile": meta.restore_tile,
            "window": meta.restore_window,
            "allocator": crate::runtime::allocator_setting(),
            "omp_wait_policy": std::env::var("OMP_WAIT_POLICY").ok(),
            "load_s": load_s,
            "read_s": t.read_s,
            "restore_s": t.restore_s,
            "write_s": t.write_s,
            "network": {
                "calls": work.calls,
                "samples": work.samples,
                "pixels": work.pixels,
                "flops": work.flops,
                "flops_per_sample_pixel":
                    if work.pixels > 0 { work.flops / work.pixels as f64 } else { 0.0 },
            },
        })
    }
}

/// Seconds spent in each phase of [`Engine::restore_file_timed`], and the output's size.
#[derive(Clone, Copy, Debug)]
pub struct FileTimings {
    pub read_s: f64,
    /// Forming the measurement and restoring it (conversion to a picture counts as writing).
    pub restore_s: f64,
    pub write_s: f64,
    pub width: i64,
    pub height: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RestoreArgs,
    }

    fn tiling(flags: &[&str]) -> Option<Tiling> {
        let cli = Cli::try_parse_from(std::iter::once("davi").chain(flags.iter().copied()))
            .expect("valid flags");
        cli.args
            .options(Tiling {
                tile: 64,
                overlap: 16,
            })
            .tiling
    }

    #[test]
    fn tile_and_overlap_flags_resolve_against_the_models_tiling() {
        // Neither flag: the engine picks the model's tiling itself.
        assert_eq!(tiling(&[]), None);
        // A lone --overlap keeps the model's tile (it used to be ignored).
        assert_eq!(
            tiling(&["--overlap", "32"]),
            Some(Tiling {
                tile: 64,
                overlap: 32
            })
        );
        // A lone --tile takes a quarter of itself as overlap.
        assert_eq!(
            tiling(&["--tile", "128"]),
            Some(Tiling {
                tile: 128,
                overlap: 32
            })
        );
        assert_eq!(
            tiling(&["--tile", "128", "--overlap", "8"]),
            Some(Tiling {
                tile: 128,
                overlap: 8
            })
        );
    }
}
