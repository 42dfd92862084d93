//! Restoration plugins as the `davi` CLI finds them: the host side of the plugin contract.
//!
//! Plugins are shared libraries exporting `davi_plugin_entry` (see `davi_sdk::plugin`). The
//! CLI looks, in order, in every `--plugin DIR|FILE`, in `$DAVI_PLUGIN_PATH` (colon-separated),
//! next to the executable (a cargo build puts `libdavi_classical.so` and `libdavi_engine.so`
//! there) and in `<exe>/../lib/libdavi/plugins` (an installed layout). Files that are not
//! plugins are reported with the reason (`davi plugins`), never fatal.
use anyhow::{anyhow, Result};
use davi_sdk::loader::PluginRegistry;
use davi_sdk::{DaviStatus, OperatorSpec, PlanarImage, PluginOptions};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// Folders and files to search, in order.
pub fn search_paths(explicit: &[PathBuf]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = explicit.to_vec();
    if let Some(p) = std::env::var_os("DAVI_PLUGIN_PATH") {
        v.extend(std::env::split_paths(&p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        v.push(dir.join("../lib/libdavi/plugins"));
        v.push(dir);
    }
    v
}

/// Load every plugin found (files directly, folders scanned for `*.so`).
pub fn registry(explicit: &[PathBuf]) -> Result<PluginRegistry> {
    let mut reg = PluginRegistry::new();
    for p in search_paths(explicit) {
        if p.is_file() {
            reg.load(&p).map_err(|e| anyhow!("{}: {e}", p.display()))?;
        } else if p.is_dir() {
            reg.scan_dir(&p)
                .map_err(|e| anyhow!("{}: {e}", p.display()))?;
        } else if explicit.contains(&p) {
            return Err(anyhow!("plugin path {} does not exist", p.display()));
        }
    }
    Ok(reg)
}

/// `davi plugins`: what was found and what was refused, and why.
pub fn list(explicit: &[PathBuf]) -> Result<()> {
    let reg = registry(explicit)?;
    for p in reg.plugins() {
        let d = p.describe();
        let kinds: Vec<String> = d.kinds().iter().map(|k| k.to_string()).collect();
        println!(
            "{:<10} {:<8} {:<9} kinds: {}  devices: {}  ({})",
            p.id(),
            d.version,
            if d.is_learned() {
                "learned"
            } else {
                "classical"
            },
            kinds.join(", "),
            d.device_names().join(", "),
            p.origin()
        );
    }
    for r in reg.refused() {
        println!("refused    {r}");
    }
    if reg.plugins().is_empty() {
        println!(
            "no plugins found (searched: {})",
            search_paths(explicit)
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// Restore a `(1, C, H, W)` observation in [0, 1] with a plugin picked for the spec
/// (`id` forces one). Returns the restored `(1, C', H', W')` image in [0, 1].
pub fn restore(
    reg: &PluginRegistry,
    id: Option<&str>,
    options: &PluginOptions,
    spec: &OperatorSpec,
    observation: &Tensor,
    progress: &mut dyn FnMut(f32) -> bool,
) -> Result<Tensor, davi_sdk::DaviError> {
    let plugin = reg.pick_for(spec, id)?;
    let mut inst = plugin.new_instance(options)?;
    let (_, c, h, w) = observation
        .size4()
        .map_err(|e| davi_sdk::DaviError::invalid_argument(e.to_string()))?;
    let data = Vec::<f32>::try_from(
        observation
            .to_kind(tch::Kind::Float)
            .contiguous()
            .view([-1]),
    )
    .map_err(|e| davi_sdk::DaviError::invalid_argument(e.to_string()))?;
    let input = PlanarImage::from_vec(w as usize, h as usize, c as usize, data)
        .map_err(|e| davi_sdk::DaviError::invalid_argument(e.to_string()))?;
    let out = inst.restore_spec(spec, &input, progress)?;
    Ok(Tensor::from_slice(&out.data).view([
        1,
        out.channels as i64,
        out.height as i64,
        out.width as i64,
    ]))
}

/// Whether an error means "this plugin cannot do that" rather than a failure.
pub fn is_unsupported(e: &davi_sdk::DaviError) -> bool {
    matches!(
        e.status,
        DaviStatus::UnsupportedOperator | DaviStatus::NotFound
    )
}
