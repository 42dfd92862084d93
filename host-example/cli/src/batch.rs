//! `davi batch IN_DIR OUT_DIR`: restore every image under a folder tree into another under
//! the same relative paths, with one model load (`restore_cmd::Engine`, the code of
//! `davi restore`, so each output is byte for byte what `davi restore` writes).
//!
//! - Resume: a file whose output exists is skipped unless `--overwrite`; outputs appear
//!   only whole (temporary file beside the target, then a rename), so an interrupted run
//!   leaves nothing that a rerun would wrongly skip.
//! - `--shard i/n`: file `p` (its relative path with `/` separators, UTF-8) belongs to share
//!   `fnv1a64(p) mod n`; the split depends on nothing but the path, so n machines listing
//!   the same folder cover it exactly once, even if the listings differ in other files.
//! - A file that fails is reported on stderr and counted; the run goes on; the exit status
//!   is 1 if any file failed. `--summary FILE` writes the counts and errors as JSON.
use crate::one_line;
use crate::restore_cmd::{Engine, RestoreArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Extensions (lower case) of the files restored: the image formats `davi restore` reads and
/// writes.
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "tif", "tiff", "ppm", "pgm", "bmp"];

#[derive(Args)]
pub struct BatchArgs {
    /// Folder searched recursively for .png, .jpg/.jpeg, .tif/.tiff, .ppm/.pgm and .bmp
    /// files (hidden names and symbolic links to folders are not followed).
    pub input: PathBuf,
    /// Folder the outputs go to, under the same relative paths and names (created).
    pub output: PathBuf,
    #[command(flatten)]
    pub restore: RestoreArgs,
    /// Restore files whose output exists as well (default: skip them, so a rerun resumes).
    #[arg(long)]
    pub overwrite: bool,
    /// Restore only share i of n (0-based, e.g. 2/8): the files whose relative path hashes
    /// (FNV-1a 64) to i modulo n.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Write a JSON summary to this file (atomically).
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// No progress line and no summary on stderr (failed files are still reported).
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

fn parse_shard(s: &str) -> std::result::Result<Shard, String> {
    let bad = || format!("expected i/n with 0 <= i < n, got {s:?}");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (index, count) = (
        i.trim().parse::<u64>().map_err(|_| bad())?,
        n.trim().parse::<u64>().map_err(|_| bad())?,
    );
    if count == 0 || index >= count {
        return Err(bad());
    }
    Ok(Shard { index, count })
}

/// FNV-1a, 64 bit: a stable hash (the same on every machine and Rust version).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One image found: its relative path as a `/`-separated key, and as a path.
struct Entry {
    key: String,
    rel: PathBuf,
}

/// The images found, and the folders that could not be listed with the reason.
type Listing = (Vec<Entry>, Vec<(String, String)>);

/// The images under `root`, sorted by key, and the folders that could not be listed.
/// `skip` (the output folder, when it lies inside the input) is not entered.
fn list_images(root: &Path, skip: Option<&Path>) -> Result<Listing> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = root.join(&rel_dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if rel_dir.as_os_str().is_empty() => {
                return Err(e).with_context(|| format!("cannot list {}", dir.display()))
            }
            Err(e) => {
                errors.push((
                    key_of(&rel_dir),
                    format!("cannot list {}: {e}", dir.display()),
                ));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    errors.push((
                        key_of(&rel_dir),
                        format!("cannot list {}: {e}", dir.display()),
                    ));
                    continue;
                }
            };
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let rel = rel_dir.join(&name);
            let path = root.join(&rel);
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                let is_skip = skip.is_some_and(|s| path.canonicalize().is_ok_and(|c| c == s));
                if !is_skip {
                    stack.push(rel);
                }
            } else if ft.is_file() || (ft.is_symlink() && path.is_file()) {
                let ext = Path::new(&name)
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase);
                if ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str())) {
                    found.push(Entry {
                        key: key_of(&rel),
                        rel,
                    });
                }
            }
        }
    }
    found.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((found, errors))
}

fn key_of(rel: &Path) -> String {
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

pub fn run(a: &BatchArgs) -> Result<()> {
    let t0 = Instant::now();
    if !a.input.is_dir() {
        bail!("{} is not a folder", a.input.display());
    }
    std::fs::create_dir_all(&a.output)
        .with_context(|| format!("cannot create {}", a.output.display()))?;
    let in_canon = a
        .input
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", a.input.display()))?;
    let out_canon = a
        .output
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", a.output.display()))?;
    if in_canon == out_canon {
        bail!("the output folder must differ from the input folder");
    }
    let (found, list_errors) = list_images(&a.input, Some(&out_canon))?;
    let n_found = found.len();
    let selected: Vec<Entry> = match a.shard {
        Some(s) => found
            .into_iter()
            .filter(|e| fnv1a64(e.key.as_bytes()) % s.count == s.index)
            .collect(),
        None => found,
    };
    let engine = Engine::load(&a.restore)?;
    let t_loaded = Instant::now();

    let tty = std::io::stderr().is_terminal();
    let show = !a.quiet;
    let total = selected.len();
    let (mut done, mut skipped) = (0usize, 0usize);
    let mut failed: Vec<(String, String)> = list_errors;
    for (key, msg) in &failed {
        eprintln!("davi: failed: {key}: {msg}");
    }
    let mut restore_secs = 0.0f64;
    for (i, e) in selected.iter().enumerate() {
        let (src, dst) = (a.input.join(&e.rel), a.output.join(&e.rel));
        if !a.overwrite && dst.exists() {
            skipped += 1;
        } else {
            let t = Instant::now();
            let r = dst
                .parent()
                .map_or(Ok(()), |p| {
                    std::fs::create_dir_all(p)
                        .with_context(|| format!("cannot create {}", p.display()))
                })
                .and_then(|()| restore_guarded(&engine, &src, &dst));
            restore_secs += t.elapsed().as_secs_f64();
            match r {
                Ok(()) => done += 1,
                Err(err) => {
                    let msg = one_line(&err);
                    if show && tty {
                        eprint!("\r\x1b[K");
                    }
                    eprintln!("davi: failed: {}: {msg}", e.key);
                    failed.push((e.key.clone(), msg));
                }
            }
        }
        if show {
            let processed = i + 1;
            let attempted = processed - skipped;
            let eta = if attempted > 0 {
                restore_secs / attempted as f64 * (total - processed) as f64
            } else {
                0.0
            };
            let line = format!(
                "[{processed}/{total}] {}% {done} restored, {skipped} skipped, {} failed, eta {}  \
                    {}",
                processed * 100 / total.max(1),
                failed.len(),
                duration(eta),
                e.key
            );
            if tty {
                eprint!("\r\x1b[K{line}");
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("{line}");
            }
        }
    }
    if show && tty && total > 0 {
        eprintln!();
    }
    let seconds = t0.elapsed().as_secs_f64();
    let shard = a.shard.map(|s| format!("{}/{}", s.index, s.count));
    if let Some(path) = &a.summary {
        let summary = serde_json::json!({
            "input": a.input.display().to_string(),
            "output": a.output.display().to_string(),
            "shard": shard,
            "found": n_found,
            "selected": total,
            "done": done,
            "skipped": skipped,
            "failed": failed.len(),
            "errors": failed
                .iter()
                .map(|(f, m)| serde_json::json!({"file": f, "error": m}))
                .collect::<Vec<_>>(),
            "seconds": seconds,
            "load_seconds": (t_loaded - t0).as_secs_f64(),
        });
        let text = serde_json::to_string_pretty(&summary)? + "\n";
        davi_engine::weights::model_file::write_atomic(path, text.as_bytes())?;
    }
    if show {
        let scope = match &shard {
            Some(s) => format!("{total} in shard {s} of {n_found} found"),
            None => format!("{total} found"),
        };
        eprintln!(
            "davi batch: {done} restored, {skipped} skipped, {} failed ({scope}) in {seconds:.1} s",
            failed.len()
        );
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} files failed (first: {}: {})",
            failed.len(),
            total,
            failed[0].0,
            failed[0].1
        );
    }
    Ok(())
}

/// Restore one file, turning a panic below it (libtorch failing an allocation on a huge
/// photograph surfaces as a panic in tch) into that file's error, so one file never ends
/// the run without its summary and leaves the files after it undone. The engine holds no
/// state a half-finished restore could leave inconsistent: weights are only read.
fn restore_guarded(engine: &Engine, src: &Path, dst: &Path) -> Result<()> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.restore_file(src, dst, false)
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        bail!("internal error while restoring (a bug or out of memory): {what}")
    })
}
