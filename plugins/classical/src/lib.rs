//! `davi-classical`: the classical restoration baseline, as a libdavi plugin.
//!
//! What users compare DAVI against, with no learning and no model file, on the CPU:
//!
//! | operator kind      | method                                                   | module      |
//! |--------------------|----------------------------------------------------------|-------------|
//! | `gaussian_blur`    | Richardson–Lucy deconvolution with TV regularisation     | [`deblur`]  |
//! | `super_resolution` | Lanczos-3 up-sampling (+ back-projection when noiseless) | [`upscale`] |
//! | `denoising`        | non-local means (Buades–Coll–Morel, IPOL 2011)           | [`denoise`] |
//! | `inpainting`       | Telea's fast-marching inpainting of the spec's boxes     | [`inpaint`] |
//!
//! Colorization has no classical solution worth the name, so the plugin does not claim it:
//! hosts asking for it get `DaviStatus::UnsupportedOperator` (or pick another plugin).
//!
//! Every method reads its parameters from the operator spec: the blur's `sigma` and `size`,
//! the super-resolution `factor` and `method`, the inpainting boxes, and `noise_sigma`, which
//! is given in the network's `[-1, 1]` units and halved here for `[0, 1]` images.
//!
//! Why a second plugin: it proves the plugin contract is generic (nothing in it is specific
//! to DAVI or libtorch) and it is the baseline in every comparison. The crate builds as a
//! `cdylib` (`libdavi_classical.so`, loaded by hosts) and an `rlib` (registered in-process by
//! tests with `PluginRegistry::register::<Classical>()`); both run the same code.
//! Anchor: `GStreamer/gst-plugins-rs: video/videofx` (a plugin crate that is both).
//!
//! Run its tests with `cargo test -p davi-classical`.

pub mod deblur;
pub mod denoise;
pub mod inpaint;
pub mod upscale;

use davi_sdk::plugin::{
    DAVI_DEVICE_CPU, DAVI_OPERATOR_DENOISING, DAVI_OPERATOR_GAUSSIAN_BLUR,
    DAVI_OPERATOR_INPAINTING, DAVI_OPERATOR_SUPER_RESOLUTION,
};
use davi_sdk::{
    DaviError, DaviStatus, OperatorSpec, PlanarImage, PluginInfo, PluginOptions, Progress,
    RestorePlugin,
};

/// The classical plugin. Stateless: an instance only records that options were valid.
#[derive(Debug, Default)]
pub struct Classical;

impl RestorePlugin for Classical {
    const INFO: PluginInfo = PluginInfo {
        id: c"classical",
        version: davi_sdk::cstr!(env!("CARGO_PKG_VERSION")),
        description: c"Classical baseline: Richardson-Lucy deblurring, Lanczos-3 upscaling, \
            non-local means denoising, Telea inpainting (CPU, no learning)",
        operator_kinds: DAVI_OPERATOR_GAUSSIAN_BLUR
            | DAVI_OPERATOR_SUPER_RESOLUTION
            | DAVI_OPERATOR_INPAINTING
            | DAVI_OPERATOR_DENOISING,
        devices: DAVI_DEVICE_CPU,
        flags: 0,
    };

    fn new(options: &PluginOptions) -> Result<Self, DaviError> {
        if let Some(path) = &options.model_path {
            return Err(DaviError::invalid_argument(format!(
                "the classical plugin uses no model file (got {})",
                path.display()
            )));
        }
        match options.device.as_str() {
            "auto" | "cpu" => Ok(Classical),
            d if d == "cuda" || d.starts_with("cuda:") => Err(DaviError::new(
                DaviStatus::DeviceError,
                "the classical plugin runs on the CPU only",
            )),
            other => Err(DaviError::new(
                DaviStatus::DeviceError,
                format!("unknown device `{other}` (expected auto, cpu, cuda or cuda:N)"),
            )),
        }
    }

    fn restore(
        &mut self,
        spec: &OperatorSpec,
        input: &PlanarImage,
        progress: &mut Progress<'_>,
    ) -> Result<PlanarImage, DaviError> {
        restore(spec, input, progress)
    }
}

davi_sdk::davi_export_plugin!(Classical);

/// Restore `input` under `spec` (the plugin's work, callable directly from Rust).
pub fn restore(
    spec: &OperatorSpec,
    input: &PlanarImage,
    progress: &mut Progress<'_>,
) -> Result<PlanarImage, DaviError> {
    let (w, h, c) = (input.width, input.height, input.channels);
    // Noise standard deviation in [0, 1] units.
    let noise = spec.noise_sigma() / 2.0;
    let nlm = denoise::NlmParams::for_sigma(noise as f32);
    let out = match spec {
        OperatorSpec::GaussianBlur(b) => {
            let k = deblur::gaussian_kernel(b.sigma, b.size);
            let params = deblur::RlParams::for_noise(noise, b.sigma);
            let planes = per_channel(input, progress, |y, p| {
                deblur::richardson_lucy(y, w, h, &k, &params, p)
            })?;
            PlanarImage::from_vec(w, h, c, planes)?
        }
        OperatorSpec::SuperResolution(s) => {
            let (f, method) = (s.factor, s.method);
            let steps = upscale::back_projection_steps(noise);
            let planes = per_channel(input, progress, |y, p| {
                upscale::upscale(y, w, h, f, method, steps, p)
            })?;
            PlanarImage::from_vec(w * f, h * f, c, planes)?
        }
        OperatorSpec::Denoising(_) => {
            let data = denoise::non_local_means(&input.data, w, h, c, &nlm, progress)?;
            PlanarImage::from_vec(w, h, c, data)?
        }
        OperatorSpec::Inpainting(p) => {
            let mask = inpaint::box_mask(w, h, &p.boxes_for(h, w));
            // Denoise the measured pixels first: their noise would also be extrapolated.
            let clean = progress.scoped(0.0, 0.7, |p| {
                denoise::non_local_means(&input.data, w, h, c, &nlm, p)
            })?;
            let data = progress.scoped(0.7, 1.0, |p| inpaint::telea(&clean, w, h, c, &mask, p))?;
            PlanarImage::from_vec(w, h, c, data)?
        }
        OperatorSpec::Colorization(_) => {
            return Err(DaviError::unsupported_operator(
                "the classical plugin has no colorization method (use a learned plugin)",
            ))
        }
    };
    progress.update(1.0)?;
    Ok(out)
}

/// Run `f` on each plane of `img`, progress split evenly; the planes concatenated.
fn per_channel(
    img: &PlanarImage,
    progress: &mut Progress<'_>,
    mut f: impl FnMut(&[f32], &mut Progress<'_>) -> Result<Vec<f32>, DaviError>,
) -> Result<Vec<f32>, DaviError> {
    let c = img.channels as f32;
    let mut out = Vec::new();
    for ch in 0..img.channels {
        out.extend(progress.scoped(ch as f32 / c, (ch + 1) as f32 / c, |p| f(img.plane(ch), p))?);
    }
    Ok(out)
}
