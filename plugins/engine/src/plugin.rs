//! The DAVI engine as a libdavi restoration plugin, and the one restore path both boundaries
//! share.
//!
//! - [`Generator`]: a loaded DAVI generator on a device, with the operator it was trained for.
//!   [`Generator::restore`] is the whole pipeline for one planar image:
//!   [`problem_from_observation`] → [`Restorer::restore`] (overlapped tiles, so the network's
//!   working memory is bounded by the tile, not the image) → [`to_picture`]. The C API of
//!   `libdavi` (`sdk/capi`) and [`DaviPlugin`] both call it, so a host gets the same pixels
//!   whichever door it uses.
//! - [`DaviPlugin`]: [`davi_sdk::RestorePlugin`] for the engine, exported as this library's
//!   `davi_plugin_entry` with [`davi_sdk::davi_export_plugin!`]; `libdavi_engine.so` is what a
//!   host's plugin directory holds. It claims all five operator kinds, CPU and CUDA, and
//!   [`DAVI_PLUGIN_FLAG_LEARNED`] (hosts prefer it over the classical baseline).
//!
//! # Models
//! With `PluginOptions::model_path` the instance loads that generator at once (a broken file
//! fails `instance_new` with `DaviStatus::ModelError`) and restores only the operator kind it
//! was trained for. Without one it loads, on first use and then keeps, the project's default
//! generator for the spec's task ([`defaults::task_for_spec`], [`defaults::model_path`]); a
//! spec with no default model (super-resolution ×2 or ×8) is `DaviStatus::UnsupportedOperator`.
//!
//! # Colorization and channel counts
//! The SDK contract ([`davi_sdk::RestorePlugin::restore`]) returns "the same number of
//! channels" as the input, and every ABI 1.0 host passes RGB (`channels = 3`). So for
//! colorization a host passes the gray observation as RGB (gray replicated into the three
//! planes, which is what [`davi_sdk::ImageView::to_planar_rgb`] does) or a colour picture, and
//! the plugin forms the gray measurement with the spec's `weights` before restoring three
//! channels. A one-channel colorization input is refused with `DaviStatus::UnsupportedFormat`
//! (its result would need three channels). The C API of `libdavi` has no such restriction: it
//! calls [`Generator::restore`] directly, takes a gray image and writes an RGB one.
//!
//! # Threads, progress, cancellation
//! Restores run on the calling thread; the host's progress callback is called on that thread,
//! before each tile and once at the end, with the fraction of tiles done. A cancel is seen
//! before the next tile starts. Options the plugin table has no field for use the model's
//! defaults: perturbation `h` from the model file, seed 0, 256-pixel tiles with 32 pixels of
//! overlap, and an fp32 network (the plugin table has no precision field; libdavi's C API has,
//! `DaviContextOptions.precision`).
use crate::defaults;
use crate::device::{device_name, parse_device};
use crate::error::EngineError;
use crate::pipeline::{problem_from_observation, to_picture};
use crate::restore::{Precision, RestoreOptions, Restorer};
use crate::weights::{model_file, LoadedModel, ModelRole};
use davi_sdk::plugin::{
    DAVI_DEVICE_CPU, DAVI_DEVICE_CUDA, DAVI_OPERATOR_COLORIZATION, DAVI_OPERATOR_DENOISING,
    DAVI_OPERATOR_GAUSSIAN_BLUR, DAVI_OPERATOR_INPAINTING, DAVI_OPERATOR_SUPER_RESOLUTION,
    DAVI_PLUGIN_FLAG_LEARNED,
};
use davi_sdk::{
    DaviError, DaviStatus, OperatorSpec, PlanarImage, PluginInfo, PluginOptions, Progress,
    RestorePlugin,
};
use std::path::Path;
use tch::{Device, Kind, Tensor};

impl From<EngineError> for DaviError {
    /// The status a host sees for an engine error, grouped by who is at fault.
    fn from(e: EngineError) -> Self {
        let status = match &e {
            EngineError::InvalidInput(_) => DaviStatus::InvalidArgument,
            EngineError::Spec(_) => DaviStatus::InvalidSpec,
            EngineError::Model { .. } | EngineError::Weights(_) => DaviStatus::ModelError,
            EngineError::Device(_) => DaviStatus::DeviceError,
            EngineError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                DaviStatus::NotFound
            }
            EngineError::Io { .. } => DaviStatus::ModelError,
            EngineError::Torch(t) if is_out_of_memory(&t.to_string()) => DaviStatus::OutOfMemory,
            EngineError::Torch(_) => DaviStatus::Internal,
            EngineError::Cancelled => DaviStatus::Cancelled,
        };
        DaviError::new(status, e.to_string())
    }
}

/// libtorch reports allocation failures only as text ("CUDA out of memory", "DefaultCPUAllocator:
/// can't allocate memory", "not enough memory").
fn is_out_of_memory(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("out of memory")
        || m.contains("can't allocate memory")
        || m.contains("not enough memory")
}

/// A DAVI generator loaded on a device, ready to restore planar images.
pub struct Generator {
    restorer: Restorer,
    origin: String,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("origin", &self.origin)
            .field("device", &device_name(self.restorer.device))
            .field("precision", &self.restorer.precision())
            .field("operator", &self.restorer.model.meta.operator)
            .finish()
    }
}

impl Generator {
    /// Load a model file. Missing files are `NotFound`, malformed ones `ModelError`, a
    /// diffusion prior (not a generator) `ModelError`.
    pub fn from_file(path: &Path, device: Device) -> Result<Self, DaviError> {
        let model = model_file::load(path, device)?;
        Self::from_model(model, device, path.display().to_string())
    }

    /// Load a model from the bytes of a model file (e.g. embedded in a host application).
    pub fn from_bytes(bytes: &[u8], device: Device) -> Result<Self, DaviError> {
        let model = model_file::load_bytes(bytes, device)?;
        Self::from_model(model, device, format!("<{} bytes in memory>", bytes.len()))
    }

    /// The project's default generator for a short task name (`deblur`, `sr4`, `inpaint`,
    /// `denoise`, `colorize`); `NotFound` if it is not installed.
    pub fn default_for_task(task: &str, device: Device) -> Result<Self, DaviError> {
        let path = defaults::model_path(task).map_err(|e| match e {
            EngineError::InvalidInput(m) if m.contains("not found") => {
                DaviError::new(DaviStatus::NotFound, m)
            }
            EngineError::InvalidInput(m) => DaviError::invalid_argument(m),
            other => other.into(),
        })?;
        Self::from_file(&path, device)
    }

    /// Wrap an already loaded model (tests, hosts that build models in memory).
    pub fn from_model(
        model: LoadedModel,
        device: Device,
        origin: String,
    ) -> Result<Self, DaviError> {
        if model.meta.role != ModelRole::Generator {
            return Err(DaviError::new(
                DaviStatus::ModelError,
                format!("{origin} is a diffusion prior (a training teacher), not a DAVI generator"),
            ));
        }
        Ok(Generator {
            restorer: Restorer::new(model, device),
            origin,
        })
    }

    /// The operator the model was trained for, if its file says.
    pub fn trained_spec(&self) -> Option<&OperatorSpec> {
        self.restorer.model.meta.operator.as_ref()
    }

    /// The device the model lives on.
    pub fn device(&self) -> Device {
        self.restorer.device
    }

    /// Run the network in `precision` from now on (weights converted once, in place; see
    /// [`Restorer::set_precision`]). `DeviceError` when the device cannot run it (fp16 on a
    /// CPU, bf16 on a CPU without bf16 instructions).
    pub fn set_precision(&mut self, precision: Precision) -> Result<(), DaviError> {
        Ok(self.restorer.set_precision(precision)?)
    }

    /// The precision the network runs in.
    pub fn precision(&self) -> Precision {
        self.restorer.precision()
    }

    /// Where the model came from (a path or a description), for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Colour channels the network works on (3 for every shipped model).
    pub fn colour_channels(&self) -> i64 {
        self.restorer.model.meta.unet.in_channels
    }

    /// The spatial multiple tile sizes must respect.
    pub fn size_multiple(&self) -> i64 {
        self.restorer.model.meta.unet.size_multiple()
    }

    /// `UnsupportedOperator` unless this model restores the spec's kind (a model whose file
    /// names no operator accepts every kind).
    pub fn check_kind(&self, spec: &OperatorSpec) -> Result<(), DaviError> {
        match self.trained_spec() {
            Some(t) if t.kind_name() != spec.kind_name() => {
                Err(DaviError::unsupported_operator(format!(
                    "the model {} restores {}, not {}",
                    self.origin,
                    t.kind_name(),
                    spec.kind_name()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Restore one observation: `input` is planar in `[0, 1]`, 1 (gray) or 3 (RGB) channels,
    /// at the observation's size (the small image for super-resolution). Returns the restored
    /// image at the operator's output size: 3 channels for colorization and colour inputs, 1
    /// for gray inputs of the other kinds. `progress(fraction)` is called on this thread
    /// between tiles; returning `false` cancels (`DaviStatus::Cancelled`).
    pub fn restore(
        &self,
        spec: &OperatorSpec,
        input: &PlanarImage,
        options: &RestoreOptions,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<PlanarImage, DaviError> {
        self.check_kind(spec)?;
        let (w, h, c) = (input.width, input.height, input.channels);
        if c != 1 && c != 3 {
            return Err(DaviError::unsupported_format(format!(
                "expected 1 or 3 colour channels, got {c}"
            )));
        }
        if input.data.len() != w * h * c {
            return Err(DaviError::invalid_argument(
                "planar image data does not match its size",
            ));
        }
        let dim =
            |v: usize| i64::try_from(v).map_err(|_| DaviError::invalid_argument("image too large"));
        let (oh, ow) = crate::pipeline::output_size(spec, dim(h)?, dim(w)?);
        spec.validate_for_size(oh as usize, ow as usize)?;
        if let Some(i) = input.data.iter().position(|v| !v.is_finite()) {
            return Err(DaviError::invalid_argument(format!(
                "input sample {i} is not finite"
            )));
        }
        let device = self.restorer.device;
        let obs = Tensor::from_slice(&input.data).view([1, c as i64, h as i64, w as i64]);
        let problem = problem_from_observation(spec, &obs, self.colour_channels(), device)?;
        let x_hat = self
            .restorer
            .restore(problem.op.as_ref(), &problem.y, options, progress)?;
        let picture = tch::no_grad(|| {
            to_picture(&x_hat, problem.gray_out)
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
        });
        drop(x_hat);
        let (_, pc, ph, pw) = picture.size4().map_err(EngineError::from)?;
        if (ph, pw) != (oh, ow) {
            return Err(DaviError::internal(format!(
                "the engine produced a {pw}x{ph} image, {ow}x{oh} was expected"
            )));
        }
        let data =
            Vec::<f32>::try_from(&picture.contiguous().view([-1])).map_err(EngineError::from)?;
        if data.iter().any(|v| !v.is_finite()) {
            return Err(DaviError::new(
                DaviStatus::ModelError,
                format!("the model {} produced non-finite values", self.origin),
            ));
        }
        Ok(PlanarImage::from_vec(
            ow as usize,
            oh as usize,
            pc as usize,
            data,
        )?)
    }
}

/// The DAVI engine behind the plugin table (see the module docs).
pub struct DaviPlugin {
    device: Device,
    /// The generator named by `PluginOptions::model_path`, if any.
    explicit: Option<Generator>,
    /// Default generators loaded so far, by task.
    defaults: Vec<(&'static str, Generator)>,
}

impl DaviPlugin {
    /// The generator for a spec: the explicit model, else the (cached) default of its task.
    fn generator(&mut self, spec: &OperatorSpec) -> Result<&Generator, DaviError> {
        if let Some(g) = &self.explicit {
            g.check_kind(spec)?;
            return Ok(g);
        }
        let task = defaults::task_for_spec(spec).ok_or_else(|| {
            DaviError::unsupported_operator(format!(
                "no default model restores {spec}; pass a model file (PluginOptions::model_path)"
            ))
        })?;
        let i = match self.defaults.iter().position(|(t, _)| *t == task) {
            Some(i) => i,
            None => {
                let g = Generator::default_for_task(task, self.device)?;
                self.defaults.push((task, g));
                self.defaults.len() - 1
            }
        };
        Ok(&self.defaults[i].1)
    }
}

impl RestorePlugin for DaviPlugin {
    const INFO: PluginInfo = PluginInfo {
        id: c"davi",
        version: davi_sdk::cstr!(env!("CARGO_PKG_VERSION")),
        description: c"DAVI one-step diffusion-prior restoration (ECCV 2024): deblurring, super-resolution, inpainting, denoising, colorization",
        operator_kinds: DAVI_OPERATOR_GAUSSIAN_BLUR
            | DAVI_OPERATOR_SUPER_RESOLUTION
            | DAVI_OPERATOR_INPAINTING
            | DAVI_OPERATOR_DENOISING
            | DAVI_OPERATOR_COLORIZATION,
        devices: DAVI_DEVICE_CPU | DAVI_DEVICE_CUDA,
        flags: DAVI_PLUGIN_FLAG_LEARNED,
    };

    fn new(options: &PluginOptions) -> Result<Self, DaviError> {
        let device = parse_device(&options.device)?;
        let explicit = match &options.model_path {
            Some(path) => Some(Generator::from_file(path, device)?),
            None => None,
        };
        Ok(DaviPlugin {
            device,
            explicit,
            defaults: Vec::new(),
        })
    }

    fn restore(
        &mut self,
        spec: &OperatorSpec,
        input: &PlanarImage,
        progress: &mut Progress<'_>,
    ) -> Result<PlanarImage, DaviError> {
        if input.channels == 1 && matches!(spec, OperatorSpec::Colorization(_)) {
            return Err(DaviError::unsupported_format(
                "colorization returns three channels: pass the gray image as RGB (gray replicated)",
            ));
        }
        let generator = self.generator(spec)?;
        let mut report = |fraction: f32| progress.update(fraction).is_ok();
        let out = generator.restore(spec, input, &RestoreOptions::default(), &mut report)?;
        if out.channels != input.channels {
            // Only a gray input of a kind other than colorization could get here, and those
            // come back gray; keep the contract even if the engine changes.
            return Err(DaviError::internal(format!(
                "the engine returned {} channels for a {}-channel input",
                out.channels, input.channels
            )));
        }
        Ok(out)
    }
}

/// The entry symbol lives in its own module (and so in its own codegen unit in incremental
/// builds): a binary that links this crate's rlib and uses [`DaviPlugin`] in-process does not
/// pull the symbol in, so it can also link another plugin's rlib (see the SDK's `export` docs
/// on one exporting crate per binary).
mod entry {
    davi_sdk::davi_export_plugin!(super::DaviPlugin);
}

#[cfg(test)]
mod tests {
    use super::*;
    use davi_sdk::export::api_of;
    use std::ffi::CStr;

    #[test]
    fn table_describes_the_engine() {
        let api = api_of::<DaviPlugin>();
        assert_eq!(unsafe { CStr::from_ptr(api.id) }, c"davi");
        assert_eq!(
            api.flags & DAVI_PLUGIN_FLAG_LEARNED,
            DAVI_PLUGIN_FLAG_LEARNED
        );
        assert_eq!(davi_sdk::OperatorKind::in_mask(api.operator_kinds).len(), 5);
        assert_eq!(api.devices, DAVI_DEVICE_CPU | DAVI_DEVICE_CUDA);
    }

    #[test]
    fn engine_errors_map_to_statuses() {
        let s = |e: EngineError| DaviError::from(e).status;
        assert_eq!(s(EngineError::Cancelled), DaviStatus::Cancelled);
        assert_eq!(s(EngineError::Device("x".into())), DaviStatus::DeviceError);
        assert_eq!(s(EngineError::Weights("x".into())), DaviStatus::ModelError);
        assert_eq!(
            s(EngineError::InvalidInput("x".into())),
            DaviStatus::InvalidArgument
        );
        let nf = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(s(EngineError::io("/nope", nf)), DaviStatus::NotFound);
        assert!(is_out_of_memory("CUDA out of memory. Tried to allocate"));
        assert!(is_out_of_memory(
            "DefaultCPUAllocator: can't allocate memory: you tried"
        ));
    }

    #[test]
    fn a_bad_device_or_model_path_fails_instance_creation() {
        let opts = PluginOptions {
            model_path: None,
            device: "gpu".into(),
        };
        assert_eq!(
            DaviPlugin::new(&opts).err().map(|e| e.status),
            Some(DaviStatus::DeviceError)
        );
        let opts = PluginOptions {
            model_path: Some("/nonexistent/model.safetensors".into()),
            device: "cpu".into(),
        };
        assert_eq!(
            DaviPlugin::new(&opts).err().map(|e| e.status),
            Some(DaviStatus::NotFound)
        );
    }
}
