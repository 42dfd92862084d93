//! The safe Rust API the C layer adapts: a [`Context`] owns one DAVI generator on a device and
//! restores interleaved images described by validated views.
//!
//! Everything here is safe code over the engine ([`davi_engine::generator::Generator`], shared
//! with the engine's plugin) and the SDK's image views. The C functions in `capi.rs` only
//! check pointers, decode C structs and call in.
//!
//! Memory: the network runs on one overlapped tile at a time, so its working memory (the
//! activations, by far the largest part) is bounded by the tile. Pixel buffers are whole-image:
//! the input as `f32` planes, the measurement and its lift, the perturbed input, the blending
//! accumulator and the restored planes — roughly ten `f32` copies of the output image (12
//! bytes per output pixel each, for colour), independent of the model's size.
//! The restored image must exist in full before anything is written, because outputs are
//! written only on success and may alias the input.

use davi_engine::device::parse_device;
use davi_engine::generator::Generator;
use davi_engine::restore::{Precision, RestoreOptions};
use davi_engine::tiling::Tiling;
use davi_sdk::image::AlphaPlane;
use davi_sdk::plugin::spec_output_size;
use davi_sdk::{
    DaviError, DaviStatus, ImageFormat, ImageView, ImageViewMut, OperatorSpec, PlanarImage,
};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, TryLockError};

/// The largest `threads` a context accepts: more intra-op threads than this only adds
/// overhead on any machine libtorch runs on (and `0xFFFFFFFF` would reach libtorch as -1).
pub const MAX_THREADS: u32 = 1024;

/// The largest bridge perturbation `h` a restore accepts (the range model files may carry; the
/// official models use 0.1 and 0.01). Larger values drown the input in noise.
pub const MAX_PERTURB_H: f64 = 10.0;

/// Where a context's model comes from.
#[derive(Clone, Copy, Debug)]
pub enum ModelSource<'a> {
    /// A model file.
    File(&'a Path),
    /// The bytes of a model file.
    Bytes(&'a [u8]),
    /// The installed default model of a task (`deblur`, `sr4`, `inpaint`, `denoise`, `colorize`).
    Task(&'a str),
}

/// Options of one restore, decoded from `DaviRestoreOptions`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RestoreParams {
    /// Tile edge in output pixels; `None` = the model's preferred tile (`restore_tile`, else 256).
    pub tile: Option<u32>,
    /// Tile overlap; `None` = 32 (a quarter of the tile below 128).
    pub overlap: Option<u32>,
    /// Bridge perturbation; `None` = the model's.
    pub perturb_h: Option<f64>,
    pub seed: u64,
    /// Self-ensemble size: 1 (off), 2, 4 or 8 orientations (`davi_engine::ensemble`); 0 is
    /// taken as 1.
    pub ensemble: u32,
    /// Fail with `Busy` instead of waiting when another restore holds the context (set for
    /// restores started inside a progress callback, where waiting could deadlock).
    pub no_wait: bool,
}

impl RestoreParams {
    /// The self-ensemble size the engine takes: `ensemble`, with 0 meaning 1.
    fn ensemble_size(&self) -> usize {
        self.ensemble.max(1) as usize
    }

    /// The engine's options; refuses a `perturb_h` outside `[0, MAX_PERTURB_H]` and an
    /// overlap without a tile.
    fn engine_options(&self) -> Result<RestoreOptions, DaviError> {
        if let Some(h) = self.perturb_h {
            if !(0.0..=MAX_PERTURB_H).contains(&h) {
                return Err(DaviError::invalid_argument(format!(
                    "perturb_h must be in [0, {MAX_PERTURB_H}] (NaN = the model's value), got {h}"
                )));
            }
        }
        if davi_engine::ensemble::check_size(self.ensemble_size()).is_err() {
            return Err(DaviError::invalid_argument(format!(
                "ensemble must be 0 or 1 (off), 2, 4 or 8, got {}",
                self.ensemble
            )));
        }
        if let (None, Some(o)) = (self.tile, self.overlap) {
            return Err(DaviError::invalid_argument(format!(
                "overlap {o} is set without a tile: the model's own tiling (tile 0) chooses its \
                 overlap, so set overlap 0 or a tile"
            )));
        }
        // No tile given: the model's preferred tiling (its training patch size, else 256).
        let tiling = self.tile.map(|t| {
            let tile = t as i64;
            let overlap = match self.overlap {
                Some(o) => o as i64,
                None if tile < 128 => tile / 4,
                None => 32,
            };
            Tiling { tile, overlap }
        });
        Ok(RestoreOptions {
            perturb_h: self.perturb_h,
            seed: self.seed,
            tiling,
            // The restore's operator spec says (`Generator::restore`).
            measurement_noise: None,
        })
    }
}

/// One DAVI generator on a device. `Send + Sync`: calls may come from any thread; restores on
/// one context run one at a time, in turn (see [`RestoreParams::no_wait`]).
#[derive(Debug)]
pub struct Context {
    generator: Mutex<Generator>,
    trained: Option<OperatorSpec>,
    origin: String,
    threads: u32,
}

impl Context {
    /// Load a model on `device` (exactly `auto`, `cpu`, `cuda` or `cuda:N`). `threads` in
    /// `1..=MAX_THREADS` sets libtorch's intra-op threads before each restore; 0 leaves them.
    /// `precision` (exactly `fp32`, `bf16` or `fp16`) is the network's; anything else is
    /// `InvalidArgument`, one the device cannot run `DeviceError`, both before the model is
    /// read.
    pub fn new(
        source: ModelSource<'_>,
        device: &str,
        threads: u32,
        precision: &str,
    ) -> Result<Self, DaviError> {
        if threads > MAX_THREADS {
            return Err(DaviError::invalid_argument(format!(
                "threads is {threads}, at most {MAX_THREADS} (0 leaves libtorch's setting)"
            )));
        }
        check_device_name(device)?;
        let precision = Precision::parse(precision).map_err(|_| {
            DaviError::invalid_argument(format!(
                "precision {precision:?} is not one of \"fp32\", \"bf16\", \"fp16\" (lower \
                 case, no spaces; NULL means \"fp32\")"
            ))
        })?;
        let device = parse_device(device)?;
        precision.check_device(device)?;
        let mut generator = match source {
            ModelSource::File(path) => Generator::from_file(path, device)?,
            ModelSource::Bytes(bytes) => Generator::from_bytes(bytes, device)?,
            ModelSource::Task(task) => {
                // Refuse unknown names with the spec's list before looking for files.
                OperatorSpec::for_task(task)
                    .map_err(|e| DaviError::invalid_argument(e.to_string()))?;
                Generator::default_for_task(task, device)?
            }
        };
        generator.set_precision(precision)?;
        Ok(Context {
            trained: generator.trained_spec().cloned(),
            origin: generator.origin().to_string(),
            generator: Mutex::new(generator),
            threads,
        })
    }

    /// The operator the model was trained for, if its file says.
    pub fn trained_spec(&self) -> Option<&OperatorSpec> {
        self.trained.as_ref()
    }

    /// Where the model came from, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Check a restore before any pixel is read: the spec suits the model and the image sizes,
    /// and the output has the size (and, for colorization, the colour) the operator produces.
    pub fn check(
        &self,
        spec: &OperatorSpec,
        input: &ImageFormat,
        output: &ImageFormat,
    ) -> Result<(), DaviError> {
        if let Some(t) = &self.trained {
            if t.kind_name() != spec.kind_name() {
                return Err(DaviError::unsupported_operator(format!(
                    "the model {} restores {}, not {}",
                    self.origin,
                    t.kind_name(),
                    spec.kind_name()
                )));
            }
        }
        let (ow, oh) = output_size(spec, input.width, input.height)?;
        if (output.width, output.height) != (ow as usize, oh as usize) {
            return Err(DaviError::invalid_argument(format!(
                "the output image is {}x{}, {} of a {}x{} input produces {ow}x{oh}",
                output.width,
                output.height,
                spec.kind_name(),
                input.width,
                input.height
            )));
        }
        if matches!(spec, OperatorSpec::Colorization(_)) && output.layout.color_channels() != 3 {
            return Err(DaviError::invalid_argument(
                "colorization produces colour: the output layout must be RGB or RGBA",
            ));
        }
        Ok(())
    }

    /// Restore planar colour (1 or 3 planes in `[0, 1]`). `progress` runs on this thread
    /// between tiles; `false` cancels.
    pub fn restore_planar(
        &self,
        spec: &OperatorSpec,
        input: &PlanarImage,
        params: &RestoreParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<PlanarImage, DaviError> {
        let options = params.engine_options()?;
        let mut generator = self.lock(params.no_wait)?;
        generator.set_ensemble(params.ensemble_size())?;
        if self.threads > 0 {
            tch::set_num_threads(self.threads as i32);
        }
        let m = generator.size_multiple();
        if let Some(Tiling { tile, overlap }) = options.tiling {
            if tile % m != 0 || overlap >= tile {
                return Err(DaviError::invalid_argument(format!(
                    "tile {tile} must be a multiple of {m} (the model's down-sampling factor) and \
                        larger than the overlap {overlap}"
                )));
            }
        }
        generator.restore(spec, input, &options, progress)
    }

    /// The generator, waiting for a restore in progress unless `no_wait`.
    fn lock(&self, no_wait: bool) -> Result<MutexGuard<'_, Generator>, DaviError> {
        // A panic inside an earlier restore left nothing half-changed: restores only read.
        if !no_wait {
            return Ok(self.generator.lock().unwrap_or_else(|p| p.into_inner()));
        }
        match self.generator.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => Err(DaviError::new(
                DaviStatus::Busy,
                "the context is restoring, and a restore started from a progress callback \
                 does not wait (it could wait for itself)",
            )),
        }
    }

    /// Restore `input` into `output` (separate memory). Colour goes through the model; alpha
    /// is carried through untouched (resampled bilinearly when the size changes); `output`
    /// is written only on success. For memory that may alias, see [`read_planar`] and
    /// [`write_planar`], which this composes.
    pub fn restore_image(
        &self,
        spec: &OperatorSpec,
        input: &ImageView<'_>,
        output: &mut ImageViewMut<'_>,
        params: &RestoreParams,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<(), DaviError> {
        self.check(spec, &input.format(), &output.format())?;
        let (color, alpha) = read_planar(input)?;
        let restored = self.restore_planar(spec, &color, params, progress)?;
        write_planar(output, &restored, alpha.as_ref())
    }
}

/// Refuse device names `parse_device` would only accept after trimming or lower-casing
/// (`"cpu "`, `"CPU"`): the C API takes the documented names exactly.
fn check_device_name(device: &str) -> Result<(), DaviError> {
    let index_ok = |n: &str| !n.is_empty() && n.len() <= 4 && n.bytes().all(|b| b.is_ascii_digit());
    let ok = matches!(device, "auto" | "cpu" | "cuda")
        || device.strip_prefix("cuda:").is_some_and(index_ok);
    if ok {
        Ok(())
    } else {
        Err(DaviError::new(
            DaviStatus::DeviceError,
            format!("device {device:?} is not one of \"auto\", \"cpu\", \"cuda\", \"cuda:N\""),
        ))
    }
}

/// Output size of an operator on a `width x height` input, checked against the spec (boxes
/// inside the image) and `u32`.
pub fn output_size(
    spec: &OperatorSpec,
    width: usize,
    height: usize,
) -> Result<(u32, u32), DaviError> {
    let dim = |v: usize| {
        u32::try_from(v).map_err(|_| {
            DaviError::invalid_argument(format!("image size {width}x{height} is too large"))
        })
    };
    if width == 0 || height == 0 {
        return Err(DaviError::invalid_argument(format!(
            "image size {width}x{height} is empty"
        )));
    }
    let (ow, oh) = spec_output_size(spec, dim(width)?, dim(height)?).ok_or_else(|| {
        DaviError::invalid_argument(format!(
            "the output size of a {width}x{height} input overflows"
        ))
    })?;
    spec.validate_for_size(oh as usize, ow as usize)?;
    Ok((ow, oh))
}

/// Interleaved pixels to planar colour (one plane for gray layouts, three for colour) and the
/// alpha plane in its own sample type.
pub fn read_planar(input: &ImageView<'_>) -> Result<(PlanarImage, Option<AlphaPlane>), DaviError> {
    let (mut color, alpha) = input.to_planar_rgb()?;
    if input.format().layout.color_channels() == 1 {
        color.data.truncate(color.plane_len());
        color.data.shrink_to_fit();
        color.channels = 1;
    }
    Ok((color, alpha))
}

/// Write restored colour and the input's alpha (resized to the output if needed) into
/// `output`. Output layouts without alpha drop it; an input without alpha writes opaque.
pub fn write_planar(
    output: &mut ImageViewMut<'_>,
    color: &PlanarImage,
    alpha: Option<&AlphaPlane>,
) -> Result<(), DaviError> {
    let (w, h) = (output.width(), output.height());
    if (color.width, color.height) != (w, h) {
        return Err(DaviError::internal(format!(
            "restored image is {}x{}, the output {w}x{h}",
            color.width, color.height
        )));
    }
    let resized;
    let alpha = match alpha {
        Some(a) if (a.width, a.height) != (w, h) => {
            resized = a.resized(w, h);
            Some(&resized)
        }
        other => other,
    };
    output.write_planar(color, alpha)?;
    Ok(())
}
