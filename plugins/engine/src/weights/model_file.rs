//! The self-describing model file: safetensors plus metadata.
//!
//! Tensor names are the official state-dict names (`input_blocks.9.1.qkv.weight`). The
//! safetensors header's `__metadata__` holds:
//!
//! | key | value |
//! |---|---|
//! | `format` | `libdavi-model` |
//! | `format_version` | `1` |
//! | `meta` | JSON of [`ModelMeta`]: U-Net, schedule, role, operator, perturb_h, provenance |
//!
//! A window model may carry a second network of its own architecture, its measurement
//! denoiser ([`DenoiserMeta`]), as the same tensor names under the prefix
//! [`DENOISER_PREFIX`]: one file holds everything the restore needs, so a model copied, passed
//! by path or embedded as bytes restores the same way.
//!
//! Loading checks the whole file before building anything: every metadata field's range, then
//! every tensor by name against the shape list the metadata's architecture implies: a
//! missing, unexpected, mis-shaped or non-float tensor is an error naming it. Saving writes a
//! temporary file beside the target and renames it, so a crash never leaves a half model.
use crate::diffusion::BetaSchedule;
use crate::error::{EngineError, Result};
use crate::unet::{UNetConfig, UNetModel};
use davi_sdk::OperatorSpec;
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

pub const FORMAT: &str = "libdavi-model";
pub const FORMAT_VERSION: &str = "1";
/// Prefix of the tensor names of a window model's measurement denoiser.
pub const DENOISER_PREFIX: &str = "measurement_denoiser.";

/// What a model file is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelRole {
    /// An unconditional diffusion prior (ε-prediction with learned variance): a teacher.
    Prior,
    /// A DAVI one-step generator for one operator.
    Generator,
}

/// Everything needed to rebuild and use the network in a model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub role: ModelRole,
    pub unet: UNetConfig,
    #[serde(default)]
    pub schedule: BetaSchedule,
    #[serde(default = "thousand")]
    pub diffusion_steps: usize,
    /// The operator a generator was trained for (None for priors).
    #[serde(default)]
    pub operator: Option<OperatorSpec>,
    /// The bridge perturbation `h` used at inference (official 0.1 or 0.01).
    #[serde(default)]
    pub perturb_h: Option<f64>,
    /// Tile side the network restores best with: the patch size a patch-trained model saw
    /// (GroupNorm statistics and attention span depend on the input size). `None`: 256.
    #[serde(default)]
    pub restore_tile: Option<i64>,
    /// Side of the low-resolution windows a window-trained generator saw (inpainting,
    /// colorization): restoration then goes through [`crate::windows`] instead of tiles.
    #[serde(default)]
    pub restore_window: Option<i64>,
    /// Free-form provenance: source checkpoint, training run, steps, data, metrics.
    #[serde(default)]
    pub provenance: serde_json::Value,
    /// A window model's measurement denoiser, stored in the same file (tensors under
    /// [`DENOISER_PREFIX`], same architecture): see [`crate::windows`], "measured part".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement_denoiser: Option<DenoiserMeta>,
}

/// The second network of a window model: a tile generator trained to denoise at the
/// measurement noise of the window model's operator. The window model's answer keeps only
/// what the measurement does not determine (an inpainting hole, the colour of a gray image);
/// the measured part comes from the measurement, and a noisy measurement is first denoised
/// by this network instead of being kept with its noise.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenoiserMeta {
    /// The noise σ (in [-1, 1] units) it was trained to remove.
    pub noise_sigma: f64,
    /// Its tile side (its training patch size).
    pub restore_tile: i64,
    /// Its bridge perturbation `h` at inference.
    #[serde(default)]
    pub perturb_h: Option<f64>,
    /// Where it came from: training run, steps, held-out scores.
    #[serde(default)]
    pub provenance: serde_json::Value,
}

impl DenoiserMeta {
    /// The metadata of the denoiser as a model of its own, given its window model's.
    pub fn as_model_meta(&self, window_model: &ModelMeta) -> ModelMeta {
        ModelMeta {
            role: ModelRole::Generator,
            unet: window_model.unet.clone(),
            schedule: window_model.schedule,
            diffusion_steps: window_model.diffusion_steps,
            operator: Some(OperatorSpec::Denoising(davi_sdk::spec::Denoising {
                noise_sigma: Some(self.noise_sigma),
            })),
            perturb_h: self.perturb_h,
            restore_tile: Some(self.restore_tile),
            restore_window: None,
            provenance: self.provenance.clone(),
            measurement_denoiser: None,
        }
    }
}

fn thousand() -> usize {
    1000
}

impl ModelMeta {
    /// A tiny generator (32 base channels, two levels, GroupNorm of 8 groups; about 0.3 M
    /// parameters) on the official schedule: the one configuration tests, examples and smoke
    /// runs across the workspace share.
    pub fn tiny_generator(operator: Option<OperatorSpec>) -> Self {
        ModelMeta {
            role: ModelRole::Generator,
            unet: UNetConfig {
                image_size: 32,
                model_channels: 32,
                num_res_blocks: 1,
                attention_resolutions: vec![16],
                channel_mult: vec![1, 2],
                num_head_channels: 16,
                norm_groups: 8,
                ..UNetConfig::ffhq256()
            },
            schedule: BetaSchedule::I2sb,
            diffusion_steps: 1000,
            operator,
            perturb_h: Some(0.1),
            restore_tile: None,
            restore_window: None,
            provenance: serde_json::json!({ "note": "tiny generator for tests" }),
            measurement_denoiser: None,
        }
    }

    /// A much smaller generator than [`ModelMeta::tiny_generator`] (8 base channels, two
    /// levels, attention only in the middle block; about 53 k parameters, a 210 KB file): the
    /// model the fuzz targets restore with and the seed of the model-file corpus
    /// (`fuzz/`, docs/fuzzing.md), where thousands of loads and restores a minute matter more
    /// than resemblance to a real network.
    pub fn micro_generator(operator: Option<OperatorSpec>) -> Self {
        ModelMeta {
            unet: UNetConfig {
                image_size: 16,
                model_channels: 8,
                num_res_blocks: 1,
                attention_resolutions: vec![],
                channel_mult: vec![1, 2],
                num_head_channels: 8,
                norm_groups: 4,
                ..UNetConfig::ffhq256()
            },
            provenance: serde_json::json!({ "note": "micro generator for fuzzing" }),
            ..Self::tiny_generator(operator)
        }
    }
}

/// A network rebuilt from a model file, its variables on `device`.
pub struct LoadedModel {
    pub meta: ModelMeta,
    pub vs: nn::VarStore,
    pub net: UNetModel,
    /// The measurement denoiser of a window model whose file holds one
    /// ([`ModelMeta::measurement_denoiser`]); its `meta` is [`DenoiserMeta::as_model_meta`].
    pub denoiser: Option<Box<LoadedModel>>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("meta", &self.meta)
            .finish()
    }
}

fn kind_to_dtype(k: Kind) -> Option<Dtype> {
    Some(match k {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

fn dtype_to_kind(d: Dtype) -> Option<Kind> {
    Some(match d {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// Tensor bytes in little-endian, contiguous, on the CPU.
fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.to_device(Device::Cpu).contiguous();
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let mut buf = vec![0u8; n];
    t.copy_data_u8(&mut buf, t.numel());
    buf
}

/// Serialise named tensors and metadata to safetensors bytes.
pub fn to_bytes(meta: &ModelMeta, tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = kind_to_dtype(t.kind()).ok_or_else(|| {
            EngineError::Weights(format!("{name}: unsupported kind {:?}", t.kind()))
        })?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), dtype, shape, tensor_bytes(t)));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                TensorView::new(*d, s.clone(), b).expect("consistent view"),
            )
        })
        .collect();
    let mut md = HashMap::new();
    md.insert("format".to_string(), FORMAT.to_string());
    md.insert("format_version".to_string(), FORMAT_VERSION.to_string());
    md.insert(
        "meta".to_string(),
        serde_json::to_string(meta).expect("meta serialises"),
    );
    safetensors::tensor::serialize(views, &Some(md))
        .map_err(|e| EngineError::Weights(format!("serialising: {e:?}")))
}

/// Write bytes to `path` atomically: a temporary sibling (`.NAME.tmp<pid>.<host>`, see
/// [`temporary_name`]), fsync, rename over `path`, then fsync the directory so the rename
/// itself is durable. A crash (SIGKILL, power loss) at any moment leaves either the old file
/// or the new one under `path`, never a mix; at worst the temporary file stays behind until
/// the next successful write of the same `path` removes it ([`remove_stale_temporaries_of`];
/// training also sweeps its run folder, [`remove_stale_temporaries`]). A failed write (a full
/// disk, `EFBIG`) removes the temporary file and leaves `path` untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        EngineError::InvalidInput(format!("{} is not a file path", path.display()))
    })?;
    let tmp = dir.join(temporary_name(&name.to_string_lossy(), std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(EngineError::io(path, e));
    }
    // Best effort: some file systems refuse fsync on a directory, and the new file is in
    // place by now, so an error here is not worth failing the write for.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    remove_stale_temporaries_of(path);
    Ok(())
}

/// The name [`write_atomic`] gives the temporary file of `name` written by process `pid` on
/// this machine: `.NAME.tmp<pid>.<host>`. The host part matters on folders several machines
/// share (sharded `davi batch` jobs on NFS, containers that all run as pid 1): a process id
/// means nothing on another machine, so neither equal pids nor the stale-file sweep may
/// confuse two machines' temporaries.
pub fn temporary_name(name: &str, pid: u32) -> String {
    format!(".{name}.tmp{pid}.{}", host_tag())
}

/// This machine's host name as temporary names carry it: lower-case ASCII letters, digits and
/// `-` (anything else, dots included, becomes `-`), at most 63 characters; `host` when the
/// name cannot be read.
fn host_tag() -> &'static str {
    static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TAG.get_or_init(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_default();
        let tag: String = raw
            .trim()
            .chars()
            .take(63)
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '-' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '-',
            })
            .collect();
        if tag.is_empty() {
            "host".into()
        } else {
            tag
        }
    })
}

/// The writer's pid, when `name` is a temporary file name [`write_atomic`] gave on this
/// machine (`.NAME.tmp<pid>.<host>`, or `.NAME.tmp<pid>` as earlier versions wrote). Another
/// machine's temporaries give `None`: whether their writer still runs cannot be told here.
pub fn temporary_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let rest = rest
        .strip_suffix(host_tag())
        .and_then(|r| r.strip_suffix('.'))
        .unwrap_or(rest);
    let (base, pid) = rest.rsplit_once(".tmp")?;
    if base.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Remove the temporary files [`write_atomic`] left in `dir` when a writer was killed
/// mid-write (a training checkpoint's can be hundreds of MB). Only files of processes that
/// no longer run are removed; where that cannot be told (no `/proc`), nothing is. Returns
/// how many were removed.
pub fn remove_stale_temporaries(dir: &Path) -> usize {
    remove_stale_matching(dir, |_| true)
}

/// Remove the temporary files a killed writer of `path` left beside it (this machine's
/// `.NAME.tmp<pid>.<host>` of processes that no longer run), and no other file: the folder may
/// be the user's (an output of `davi restore` or `davi batch`), so only temporaries of this
/// very name are touched.
pub fn remove_stale_temporaries_of(path: &Path) -> usize {
    let Some(name) = path.file_name() else {
        return 0;
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = name.to_string_lossy();
    remove_stale_matching(dir, |file| {
        temporary_pid(file).is_some_and(|pid| file == temporary_name(&name, pid))
    })
}

/// Remove the temporary files in `dir` that `is_candidate` accepts and whose writer is gone.
fn remove_stale_matching(dir: &Path, is_candidate: impl Fn(&str) -> bool) -> usize {
    if !Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !is_candidate(&name) {
            continue;
        }
        let Some(pid) = temporary_pid(&name) else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive
            && e.file_type().is_ok_and(|t| t.is_file())
            && std::fs::remove_file(e.path()).is_ok()
        {
            n += 1;
        }
    }
    n
}

/// Save a network's variables with metadata (atomic).
pub fn save(path: &Path, meta: &ModelMeta, vs: &nn::VarStore) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let tensors: Vec<(String, Tensor)> = vars.into_iter().collect();
    write_atomic(path, &to_bytes(meta, &tensors)?)
}

/// The bytes of a model file. Only regular files are read: a device (`/dev/zero`), a FIFO or
/// a directory named as a model would otherwise hang, exhaust memory or fail obscurely.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let len = file.metadata().map_err(|e| EngineError::io(path, e))?;
    if !len.is_file() {
        return Err(EngineError::model(path, "is not a regular file"));
    }
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(len.len() as usize).map_err(|_| {
        EngineError::model(path, format!("{} bytes do not fit in memory", len.len()))
    })?;
    file.read_to_end(&mut bytes)
        .map_err(|e| EngineError::io(path, e))?;
    Ok(bytes)
}

/// Read only the metadata of a model file (cheap: the header).
pub fn read_meta(path: &Path) -> Result<ModelMeta> {
    let bytes = read_file(path)?;
    meta_from_bytes(&bytes).map_err(|m| EngineError::model(path, m))
}

fn meta_from_bytes(bytes: &[u8]) -> std::result::Result<ModelMeta, String> {
    let (_, md) = SafeTensors::read_metadata(bytes)
        .map_err(|e| format!("not a safetensors model file ({e:?})"))?;
    let map = md
        .metadata()
        .as_ref()
        .ok_or("no libdavi metadata (was it written by `davi convert`?)")?;
    if map.get("format").map(String::as_str) != Some(FORMAT) {
        return Err("not a libdavi model (metadata `format` missing)".into());
    }
    if map.get("format_version").map(String::as_str) != Some(FORMAT_VERSION) {
        return Err(format!(
            "model format version {:?} is not supported (this build reads {FORMAT_VERSION})",
            map.get("format_version")
        ));
    }
    let meta = map.get("meta").ok_or("metadata `meta` missing")?;
    let meta: ModelMeta =
        serde_json::from_str(meta).map_err(|e| format!("metadata `meta` is invalid: {e}"))?;
    meta.validate()?;
    Ok(meta)
}

impl ModelMeta {
    /// Check every field's range before any tensor is built, so a hostile or damaged file is
    /// refused with a message naming the field instead of failing (or dividing by zero) deep
    /// inside the network constructor or at restore time.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let u = &self.unet;
        let bad = |field: &str, why: String| Err(format!("metadata `{field}` {why}"));
        if !(1..=4).contains(&u.in_channels) {
            return bad(
                "unet.in_channels",
                format!("must be 1 to 4, got {}", u.in_channels),
            );
        }
        if u.out_channels != u.in_channels && u.out_channels != 2 * u.in_channels {
            return bad(
                "unet.out_channels",
                format!("must be in_channels or twice it, got {}", u.out_channels),
            );
        }
        if !(1..=4096).contains(&u.model_channels) {
            return bad(
                "unet.model_channels",
                format!("must be 1 to 4096, got {}", u.model_channels),
            );
        }
        if !(1..=8).contains(&u.channel_mult.len())
            || u.channel_mult.iter().any(|m| !(1..=16).contains(m))
        {
            return bad(
                "unet.channel_mult",
                format!(
                    "must hold 1 to 8 factors of 1 to 16, got {:?}",
                    u.channel_mult
                ),
            );
        }
        if !(1..=16).contains(&u.num_res_blocks) {
            return bad(
                "unet.num_res_blocks",
                format!("must be 1 to 16, got {}", u.num_res_blocks),
            );
        }
        if !(1..=1024).contains(&u.norm_groups) {
            return bad(
                "unet.norm_groups",
                format!("must be 1 to 1024, got {}", u.norm_groups),
            );
        }
        if !(1..=1 << 16).contains(&u.image_size) {
            return bad(
                "unet.image_size",
                format!("must be 1 to 65536, got {}", u.image_size),
            );
        }
        if u.attention_resolutions
            .iter()
            .any(|r| *r < 1 || *r > u.image_size)
        {
            return bad(
                "unet.attention_resolutions",
                format!(
                    "must lie in 1..=image_size, got {:?}",
                    u.attention_resolutions
                ),
            );
        }
        if u.num_head_channels < -1
            || u.num_head_channels == 0
            || u.num_heads < -1
            || u.num_heads == 0
        {
            return bad(
                "unet.num_head_channels / num_heads",
                format!(
                    "must be positive or -1, got {} / {}",
                    u.num_head_channels, u.num_heads
                ),
            );
        }
        if !u.dropout.is_finite() || !(0.0..1.0).contains(&u.dropout) {
            return bad(
                "unet.dropout",
                format!("must be in [0, 1), got {}", u.dropout),
            );
        }
        u.validate().map_err(|e| e.to_string())?;
        if !(2..=100_000).contains(&self.diffusion_steps) {
            return bad(
                "diffusion_steps",
                format!("must be 2 to 100000, got {}", self.diffusion_steps),
            );
        }
        let denoiser = self.measurement_denoiser.as_ref();
        for (field, h) in [
            ("perturb_h", self.perturb_h),
            (
                "measurement_denoiser.perturb_h",
                denoiser.and_then(|d| d.perturb_h),
            ),
        ] {
            if let Some(h) = h {
                if !h.is_finite() || !(0.0..=10.0).contains(&h) {
                    return bad(field, format!("must be in [0, 10], got {h}"));
                }
            }
        }
        let m = u.size_multiple();
        for (field, v) in [
            ("restore_tile", self.restore_tile),
            ("restore_window", self.restore_window),
            (
                "measurement_denoiser.restore_tile",
                denoiser.map(|d| d.restore_tile),
            ),
        ] {
            if let Some(t) = v {
                if t < m || t % m != 0 || t > 4096 {
                    return bad(
                        field,
                        format!("must be a multiple of {m} up to 4096, got {t}"),
                    );
                }
            }
        }
        if self.restore_tile.is_some() && self.restore_window.is_some() {
            return bad(
                "restore_window",
                "and `restore_tile` exclude each other".into(),
            );
        }
        if let Some(op) = &self.operator {
            op.validate()
                .map_err(|e| format!("metadata `operator`: {e}"))?;
        }
        if let Some(d) = &self.measurement_denoiser {
            if self.restore_window.is_none() {
                return bad(
                    "measurement_denoiser",
                    "belongs to window models (`restore_window`) only".into(),
                );
            }
            if !(d.noise_sigma > 0.0 && d.noise_sigma <= 2.0) {
                return bad(
                    "measurement_denoiser.noise_sigma",
                    format!("must be in (0, 2], got {}", d.noise_sigma),
                );
            }
        }
        Ok(())
    }

    /// Names and shapes of every tensor a file with this metadata holds: the network's, then
    /// its measurement denoiser's (same architecture, [`DENOISER_PREFIX`]).
    fn tensor_shapes(&self) -> Result<Vec<(String, Vec<i64>)>> {
        let own = self
            .unet
            .parameter_shapes()
            .map_err(|e| EngineError::Weights(format!("metadata `unet`: {e}")))?;
        let mut all = own.clone();
        if self.measurement_denoiser.is_some() {
            all.extend(
                own.into_iter()
                    .map(|(n, s)| (format!("{DENOISER_PREFIX}{n}"), s)),
            );
        }
        Ok(all)
    }
}

/// Load a model file from disk onto `device`.
pub fn load(path: &Path, device: Device) -> Result<LoadedModel> {
    let bytes = read_file(path)?;
    load_bytes(&bytes, device).map_err(|e| match e {
        EngineError::Weights(m) => EngineError::model(path, m),
        other => other,
    })
}

/// Load a model from in-memory safetensors bytes onto `device`. The whole file is checked
/// before anything is built: the metadata field by field ([`ModelMeta::validate`]), then every
/// tensor's name, dtype and shape against the shape list the U-Net config implies
/// ([`UNetConfig::parameter_shapes`], computed without allocating). Only then is the network
/// built and filled, so its size is bounded by the file's own bytes, whatever the metadata
/// claims, and no tensor is ever cast from an integer or reshaped.
pub fn load_bytes(bytes: &[u8], device: Device) -> Result<LoadedModel> {
    let meta = meta_from_bytes(bytes).map_err(EngineError::Weights)?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| EngineError::Weights(format!("corrupt tensor data: {e:?}")))?;
    let expected = meta.tensor_shapes()?;
    let kind = check_tensors(&st, &expected).map_err(EngineError::Weights)?;
    let (mut own, mut denoiser) = (Vec::new(), Vec::new());
    for (name, view) in st.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::from_data_size(view.data(), &shape, kind);
        match name.strip_prefix(DENOISER_PREFIX) {
            Some(inner) => denoiser.push((inner.to_string(), t)),
            None => own.push((name, t)),
        }
    }
    let build = |meta: ModelMeta, named: Vec<(String, Tensor)>| -> Result<LoadedModel> {
        let mut vs = nn::VarStore::new(device);
        let net = tch::no_grad(|| UNetModel::new(&vs.root(), &meta.unet))?;
        copy_by_name(&mut vs, named)?;
        vs.freeze();
        Ok(LoadedModel {
            meta,
            vs,
            net,
            denoiser: None,
        })
    };
    let denoiser_meta = meta
        .measurement_denoiser
        .as_ref()
        .map(|d| d.as_model_meta(&meta));
    let mut model = build(meta, own)?;
    if let Some(dm) = denoiser_meta {
        model.denoiser = Some(Box::new(build(dm, denoiser)?));
    }
    Ok(model)
}

/// Check a model file's tensors against the architecture's `expected` names and shapes, from
/// the header alone: every tensor present once, none extra, each of its expected shape, all of
/// one floating-point dtype (a model file is written from one network; an integer tensor
/// would otherwise be cast silently into nonsense weights). Returns the file's dtype as a
/// libtorch kind; the first problem, in name order, is the error, naming the tensor.
fn check_tensors(
    st: &SafeTensors,
    expected: &[(String, Vec<i64>)],
) -> std::result::Result<Kind, String> {
    let expected: HashMap<&str, &[i64]> = expected
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut file_dtype: Option<(Dtype, &str)> = None;
    let mut extra = Vec::new();
    for (name, view) in &tensors {
        let dtype = view.dtype();
        if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64) {
            return Err(format!(
                "tensor `{name}` has dtype {dtype:?}; model weights must be F32, F16, BF16 or F64"
            ));
        }
        match file_dtype {
            None => file_dtype = Some((dtype, name)),
            Some((first, first_name)) if first != dtype => {
                return Err(format!(
                    "tensor `{name}` has dtype {dtype:?} but `{first_name}` has \
                    {first:?}; a model file holds one dtype"
                ));
            }
            Some(_) => {}
        }
        let Some(want) = expected.get(name.as_str()) else {
            extra.push(name.as_str());
            continue;
        };
        let got: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        if got != *want {
            return Err(format!(
                "tensor `{name}` has shape {got:?}, the architecture expects {want:?}"
            ));
        }
    }
    if let Some(first) = extra.first() {
        return Err(format!(
            "unexpected tensor `{first}` ({} not in the architecture)",
            extra.len()
        ));
    }
    let present: std::collections::HashSet<&str> =
        tensors.iter().map(|(n, _)| n.as_str()).collect();
    let mut missing: Vec<&str> = expected
        .keys()
        .copied()
        .filter(|n| !present.contains(n))
        .collect();
    missing.sort();
    if let Some(first) = missing.first() {
        return Err(format!(
            "missing tensor `{first}` ({} missing in all)",
            missing.len()
        ));
    }
    let (dtype, _) = file_dtype.ok_or("the file holds no tensors")?;
    Ok(dtype_to_kind(dtype).expect("float dtypes have a kind"))
}

/// Copy named tensors into a var store, strictly: every variable must be present once with
/// its exact shape, and no extra tensor may remain. Values are cast to the variable's kind.
pub fn copy_by_name(vs: &mut nn::VarStore, tensors: Vec<(String, Tensor)>) -> Result<()> {
    let mut vars = vs.variables();
    let mut seen = std::collections::HashSet::new();
    let mut extra = Vec::new();
    tch::no_grad(|| -> Result<()> {
        for (name, t) in &tensors {
            match vars.get_mut(name) {
                Some(var) => {
                    if var.size() != t.size() {
                        return Err(EngineError::Weights(format!(
                            "tensor `{name}` has shape {:?}, the architecture expects {:?}",
                            t.size(),
                            var.size()
                        )));
                    }
                    var.copy_(&t.to_kind(var.kind()).to_device(var.device()));
                    seen.insert(name.clone());
                }
                None => extra.push(name.clone()),
            }
        }
        Ok(())
    })?;
    if !extra.is_empty() {
        extra.sort();
        return Err(EngineError::Weights(format!(
            "unexpected tensor `{}` ({} not in the architecture)",
            extra[0],
            extra.len()
        )));
    }
    let mut missing: Vec<&String> = vars.keys().filter(|k| !seen.contains(*k)).collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(EngineError::Weights(format!(
            "missing tensor `{}` ({} missing in all)",
            missing[0],
            missing.len()
        )));
    }
    Ok(())
}

impl LoadedModel {
    /// A freshly initialised network (guided-diffusion initialisation) for `meta`; used by
    /// training, benchmarks and tests. `seed` fixes the weights.
    pub fn random(meta: ModelMeta, device: Device, seed: i64) -> Result<Self> {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(device);
        let net = UNetModel::new(&vs.root(), &meta.unet)?;
        Ok(LoadedModel {
            meta,
            vs,
            net,
            denoiser: None,
        })
    }

    /// Save to a model file (atomic), with the measurement denoiser if it has one.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// The bytes of the model file [`Self::save`] writes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut tensors: BTreeMap<String, Tensor> = self.vs.variables().into_iter().collect();
        if let Some(d) = &self.denoiser {
            tensors.extend(
                d.vs.variables()
                    .into_iter()
                    .map(|(n, t)| (format!("{DENOISER_PREFIX}{n}"), t)),
            );
        }
        let tensors: Vec<(String, Tensor)> = tensors.into_iter().collect();
        to_bytes(&self.meta, &tensors)
    }

    /// Make `denoiser` (a tile generator trained for denoising) this window model's
    /// measurement denoiser, replacing any it had. The two must share the architecture
    /// (every shipped generator has the prior's), since the file stores both under one
    /// [`ModelMeta::unet`].
    pub fn attach_denoiser(&mut self, denoiser: LoadedModel) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidInput(m));
        if self.meta.restore_window.is_none() {
            return bad(
                "only a window model (inpainting, colorization) takes a measurement \
                denoiser"
                    .into(),
            );
        }
        let d = &denoiser.meta;
        let sigma = match &d.operator {
            Some(op @ OperatorSpec::Denoising(_)) if d.role == ModelRole::Generator => {
                op.noise_sigma()
            }
            _ => return bad("the measurement denoiser must be a denoising generator".into()),
        };
        if let Some(op) = &self.meta.operator {
            if (op.noise_sigma() - sigma).abs() > 1e-9 {
                return bad(format!(
                    "the denoiser was trained for noise σ {sigma}, the window model's \
                    measurements have σ {}",
                    op.noise_sigma()
                ));
            }
        }
        let Some(tile) = d.restore_tile else {
            return bad("the measurement denoiser must be a tile model (`restore_tile`)".into());
        };
        if d.unet != self.meta.unet
            || d.schedule != self.meta.schedule
            || d.diffusion_steps != self.meta.diffusion_steps
        {
            return bad(
                "the measurement denoiser's architecture or schedule differs from the \
                window model's"
                    .into(),
            );
        }
        self.meta.measurement_denoiser = Some(DenoiserMeta {
            noise_sigma: sigma,
            restore_tile: tile,
            perturb_h: d.perturb_h,
            provenance: d.provenance.clone(),
        });
        self.meta.validate().map_err(EngineError::InvalidInput)?;
        let meta = self.meta.measurement_denoiser.as_ref().expect("just set");
        let mut denoiser = denoiser;
        denoiser.meta = meta.as_model_meta(&self.meta);
        self.denoiser = Some(Box::new(denoiser));
        Ok(())
    }

    /// Exact number of parameters.
    pub fn parameter_count(&self) -> i64 {
        self.vs.variables().values().map(|t| t.numel() as i64).sum()
    }
}

/// Write arbitrary named tensors with string metadata (used by training checkpoints).
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = kind_to_dtype(t.kind()).ok_or_else(|| {
            EngineError::Weights(format!("{name}: unsupported kind {:?}", t.kind()))
        })?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), dtype, shape, tensor_bytes(t)));
    }
    let views: Vec<(String, TensorView<'_>)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                TensorView::new(*d, s.clone(), b).expect("consistent view"),
            )
        })
        .collect();
    let bytes = safetensors::tensor::serialize(views, &Some(metadata))
        .map_err(|e| EngineError::Weights(format!("serialising: {e:?}")))?;
    write_atomic(path, &bytes)
}

/// Read every tensor and the metadata of a safetensors file; corrupt or truncated files
/// are errors naming the file.
pub fn read_tensors(path: &Path) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    let (_, md) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| EngineError::model(path, format!("corrupt or truncated ({e:?})")))?;
    let meta = md.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| EngineError::model(path, format!("corrupt or truncated ({e:?})")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let kind = dtype_to_kind(view.dtype())
            .ok_or_else(|| EngineError::model(path, format!("{name}: unsupported dtype")))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.insert(name, Tensor::from_data_size(view.data(), &shape, kind));
    }
    Ok((out, meta))
}
