//! [`Generator`]: a loaded DAVI generator on a device, with the operator it was trained for,
//! and the one restore path both of the engine's doors share.
//!
//! [`Generator::restore`] is the whole pipeline for one planar image:
//! [`problem_from_observation`] → [`Restorer::restore`] (overlapped tiles, so the network's
//! working memory is bounded by the tile, not the image) → [`to_picture`]. The C API of
//! `libdavi` (`sdk/capi`) and the engine's plugin ([`crate::plugin::DaviPlugin`]) both call it,
//! so a host gets the same pixels whichever door it uses.
//!
//! Channels: a restore takes a gray (1-channel) or RGB (3-channel) observation and returns
//! three channels for colorization and colour inputs, one for gray inputs of the other kinds.
//! Errors are [`DaviError`]s (the engine's errors mapped to host statuses, see
//! [`crate::error`]).
use crate::defaults;
use crate::device::device_name;
use crate::error::EngineError;
use crate::pipeline::{problem_from_observation, to_picture};
use crate::restore::{Precision, RestoreOptions, Restorer};
use crate::weights::{model_file, LoadedModel, ModelRole};
use davi_sdk::{DaviError, DaviStatus, OperatorSpec, PlanarImage};
use std::path::Path;
use tch::{Device, Kind, Tensor};

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

    /// Restore in `n` orientations from now on (1 = off, 2, 4 or 8; [`crate::ensemble`]).
    pub fn set_ensemble(&mut self, n: usize) -> Result<(), DaviError> {
        crate::ensemble::check_size(n)?;
        self.restorer.ensemble = n;
        Ok(())
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
        // The measurement noise is the spec's unless the caller said otherwise.
        let options = &RestoreOptions {
            measurement_noise: options.measurement_noise.or(Some(spec.noise_sigma())),
            ..*options
        };
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
