//! The DAVI engine as a libdavi restoration plugin: [`DaviPlugin`], the engine's
//! [`davi_sdk::RestorePlugin`], exported as this library's `davi_plugin_entry` with
//! [`davi_sdk::davi_export_plugin!`]; `libdavi_engine.so` is what a host's plugin directory
//! holds. It claims all five operator kinds, CPU and CUDA, and [`DAVI_PLUGIN_FLAG_LEARNED`]
//! (hosts prefer it over the classical baseline). Restores go through
//! [`Generator::restore`](crate::generator::Generator::restore), the path libdavi's C API
//! shares.
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
use crate::device::parse_device;
use crate::generator::Generator;
use crate::restore::RestoreOptions;
use davi_sdk::plugin::{
    DAVI_DEVICE_CPU, DAVI_DEVICE_CUDA, DAVI_OPERATOR_COLORIZATION, DAVI_OPERATOR_DENOISING,
    DAVI_OPERATOR_GAUSSIAN_BLUR, DAVI_OPERATOR_INPAINTING, DAVI_OPERATOR_SUPER_RESOLUTION,
    DAVI_PLUGIN_FLAG_LEARNED,
};
use davi_sdk::{
    DaviError, OperatorSpec, PlanarImage, PluginInfo, PluginOptions, Progress, RestorePlugin,
};
use tch::Device;

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
        description: c"DAVI one-step diffusion-prior restoration (ECCV 2024): deblurring, \
            super-resolution, inpainting, denoising, colorization",
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
    use davi_sdk::DaviStatus;
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
