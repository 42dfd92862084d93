//! `davi restore` with the built-in engine, shared with `davi batch`: the options (model,
//! operator, device, seed, perturbation, tiling), one model load ([`Engine::load`]) and the
//! restoration of one file to another ([`Engine::restore_file`]), metadata carried and the
//! output written atomically (`imageio::write_with_meta`).
use crate::{imageio, load_generator, OpArgs};
use anyhow::Result;
use clap::Args;
use davi_engine::pipeline;
use davi_engine::restore::{RestoreOptions, Restorer};
use davi_engine::tiling::Tiling;
use davi_sdk::OperatorSpec;
use std::path::{Path, PathBuf};

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
}

impl RestoreArgs {
    pub fn options(&self) -> RestoreOptions {
        let tiling = self.tile.map(|t| Tiling { tile: t, overlap: self.overlap.unwrap_or(t / 4) });
        RestoreOptions { perturb_h: self.perturb_h, seed: self.seed, tiling }
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
        let device = davi_engine::parse_device(&a.device)?;
        let (loaded, spec) = load_generator(a.model.as_deref(), &a.op, device)?;
        let channels = loaded.meta.unet.in_channels;
        Ok(Engine { restorer: Restorer::new(loaded, device), spec, channels, device, opts: a.options() })
    }

    /// Restore `input` into `output` (an image, or `.npy` for the raw f32 result). ICC
    /// profile and EXIF travel as `imageio::Metadata` says; the output appears only whole.
    /// `show_progress`: a percentage on stderr when it is a terminal.
    pub fn restore_file(&self, input: &Path, output: &Path, show_progress: bool) -> Result<()> {
        let (pic, meta) = imageio::read_with_meta(input)?;
        let problem = pipeline::problem_from_observation(&self.spec, &pic.color, self.channels, self.device)?;
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
        let x_hat = self.restorer.restore(problem.op.as_ref(), &problem.y, &self.opts, &mut progress)?;
        if last >= 0 {
            eprintln!();
        }
        if output.extension().and_then(|e| e.to_str()).map(|e| e.eq_ignore_ascii_case("npy")) == Some(true) {
            return imageio::write_npy(output, &x_hat.squeeze_dim(0));
        }
        let color = pipeline::to_picture(&x_hat, problem.gray_out).to_device(tch::Device::Cpu);
        let alpha = pic.alpha.as_ref().map(|a| {
            let (h, w) = (color.size()[2], color.size()[3]);
            if a.size()[2] == h && a.size()[3] == w {
                a.shallow_clone()
            } else {
                a.upsample_bilinear2d([h, w], false, None, None).clamp(0.0, 1.0)
            }
        });
        imageio::write_with_meta(output, &imageio::Picture { color, alpha, sixteen_bit: pic.sixteen_bit }, &meta)
    }
}
