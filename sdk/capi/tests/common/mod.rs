//! Helpers shared by the integration tests: paths of the built libraries, tiny random model
//! files and edited (hostile) copies of them, owners of C handles and option structs for
//! in-process C API calls, deterministic test pictures, PNM files, PSNR, and compiling the
//! C/C++ hosts.
#![allow(dead_code)]

use davi::{
    davi_context_free, davi_context_last_error, davi_context_new, davi_context_options_init,
    davi_restore_options_init, davi_spec_free, davi_spec_new_task, DaviContext, DaviContextOptions,
    DaviRestoreOptions, DaviSpec,
};
use davi_engine::weights::{LoadedModel, ModelMeta};
use davi_sdk::{DaviStatus as S, OperatorSpec};
use serde_json::{json, Value};
use std::ffi::{c_char, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::null_mut;
use std::sync::OnceLock;
use tch::Device;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The directory holding this run's freshly built `libdavi.so` and plugin libraries: the test
/// binary's own directory (`target/<profile>/deps`), where cargo puts the libraries it built
/// for this test; `target/<profile>` as a fallback.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir").to_path_buf();
    for dir in [
        deps.clone(),
        deps.parent().expect("profile dir").to_path_buf(),
    ] {
        if dir.join("libdavi.so").is_file() {
            return dir;
        }
    }
    panic!(
        "libdavi.so not found next to {} (cargo builds it with the tests)",
        exe.display()
    );
}

/// This process's scratch root, `target/tmp/davi-capi/<pid>`: concurrent `cargo test` runs
/// never share files, and the roots of finished runs are removed when the next run starts
/// (the last one stays for inspection).
fn run_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("davi-capi");
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for e in entries.flatten() {
                let gone = e
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
                if gone {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        parent.join(std::process::id().to_string())
    })
}

/// A fresh, empty scratch directory of this test process.
pub fn scratch(name: &str) -> PathBuf {
    let dir = run_root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

fn tiny_meta(operator: Option<OperatorSpec>) -> ModelMeta {
    ModelMeta::tiny_generator(operator)
}

/// Write a tiny random generator (down-sampling factor 2) whose zero-initialised layers are
/// perturbed so its output depends on its input.
fn write_tiny_model(path: &Path, operator: Option<OperatorSpec>, seed: i64) {
    let m = LoadedModel::random(tiny_meta(operator), Device::Cpu, seed).expect("random model");
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let r = v.randn_like() * 0.02;
            v.copy_(&(&v + r));
        }
    });
    m.save(path).expect("save tiny model");
}

/// A tiny generator whose file names no operator (it accepts every kind). Written once per
/// test binary.
pub fn any_kind_model() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = scratch("models-any").join("tiny-any.safetensors");
        write_tiny_model(&p, None, 11);
        p
    })
}

/// A tiny generator trained (in name) for denoising.
pub fn denoise_model() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let p = scratch("models-denoise").join("tiny-denoise.safetensors");
        write_tiny_model(&p, Some(OperatorSpec::for_task("denoise").unwrap()), 12);
        p
    })
}

/// `good` (a model file) with its safetensors header edited: `edit` gets the parsed `meta`
/// JSON and the whole header (tensor entries by name). The edit may change a tensor's dtype
/// (to one of the same width) or shape (to one of the same size), or remove the tensor: the
/// data section is laid out again for the tensors the header still names, so the file stays
/// well-formed safetensors and only the libdavi-level check can refuse it.
pub fn edited_model(good: &[u8], edit: impl FnOnce(&mut Value, &mut Value)) -> Vec<u8> {
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let original: Value = serde_json::from_slice(&good[8..8 + n]).unwrap();
    let mut header = original.clone();
    let mut meta: Value =
        serde_json::from_str(header["__metadata__"]["meta"].as_str().unwrap()).unwrap();
    edit(&mut meta, &mut header);
    header["__metadata__"]["meta"] = Value::String(meta.to_string());
    let offsets = |name: &str| -> (usize, usize) {
        let o = &original[name]["data_offsets"];
        (
            o[0].as_u64().unwrap() as usize,
            o[1].as_u64().unwrap() as usize,
        )
    };
    let mut kept: Vec<String> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    kept.sort_by_key(|k| offsets(k).0);
    let data = &good[8 + n..];
    let mut body = Vec::with_capacity(data.len());
    for name in kept {
        let (start, end) = offsets(&name);
        header[&name]["data_offsets"] = json!([body.len(), body.len() + end - start]);
        body.extend_from_slice(&data[start..end]);
    }
    let mut text = header.to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&body);
    out
}

// ---------------------------------------------------------------------------------------------
// Small owners of C handles, and option structs, for in-process C API calls

pub struct Ctx(pub *mut DaviContext);
impl Drop for Ctx {
    fn drop(&mut self) {
        unsafe { davi_context_free(self.0) }
    }
}
impl Ctx {
    pub fn last_error(&self) -> String {
        let mut buf = [0 as c_char; 1024];
        let st =
            unsafe { davi_context_last_error(self.0, buf.as_mut_ptr(), buf.len(), null_mut()) };
        assert_eq!(st, S::Ok);
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }
}

// Contexts may be used, and shared, from any thread, and specs read from several at once
// (C_API.md, "Threads"): the tests that move these owners across threads test exactly that.
unsafe impl Send for Ctx {}
unsafe impl Sync for Ctx {}

pub struct Spec(pub *mut DaviSpec);
unsafe impl Send for Spec {}
unsafe impl Sync for Spec {}
impl Drop for Spec {
    fn drop(&mut self) {
        unsafe { davi_spec_free(self.0) }
    }
}

pub fn context_options() -> DaviContextOptions {
    let mut o = std::mem::MaybeUninit::<DaviContextOptions>::uninit();
    let st = unsafe { davi_context_options_init(o.as_mut_ptr(), size_of::<DaviContextOptions>()) };
    assert_eq!(st, S::Ok);
    let mut o = unsafe { o.assume_init() };
    o.device = c"cpu".as_ptr();
    // A fixed intra-op thread count: libtorch's setting is process-wide and tests run in
    // parallel, so every context of these tests asks for the same value.
    o.threads = 1;
    o
}

pub fn try_context(o: &DaviContextOptions) -> (S, Option<Ctx>, String) {
    let mut ctx = null_mut();
    let mut err = [0 as c_char; 512];
    let st = unsafe { davi_context_new(o, &mut ctx, err.as_mut_ptr(), err.len()) };
    let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    if st == S::Ok {
        assert!(!ctx.is_null());
        (st, Some(Ctx(ctx)), msg)
    } else {
        assert!(ctx.is_null(), "out written on failure");
        (st, None, msg)
    }
}

pub fn context(model: &Path) -> Ctx {
    let path = CString::new(model.as_os_str().as_bytes()).unwrap();
    let mut o = context_options();
    o.model_path = path.as_ptr();
    let (st, ctx, msg) = try_context(&o);
    assert_eq!(st, S::Ok, "{msg}");
    ctx.unwrap()
}

pub fn spec(task: &str) -> Spec {
    let t = CString::new(task).unwrap();
    let mut s = null_mut();
    assert_eq!(unsafe { davi_spec_new_task(t.as_ptr(), &mut s) }, S::Ok);
    Spec(s)
}

pub fn restore_options(tile: u32, overlap: u32, seed: u64) -> DaviRestoreOptions {
    let mut o = std::mem::MaybeUninit::<DaviRestoreOptions>::uninit();
    assert_eq!(
        unsafe { davi_restore_options_init(o.as_mut_ptr(), size_of::<DaviRestoreOptions>()) },
        S::Ok
    );
    let mut o = unsafe { o.assume_init() };
    o.tile = tile;
    o.overlap = overlap;
    o.seed = seed;
    o
}

/// A Rust closure as a progress callback: `user_data` points at a [`Progress`]; the closure
/// gets the fraction and returns `false` to cancel. It must not panic (nothing may unwind
/// through the library).
pub type Progress<'a> = &'a mut dyn FnMut(f32) -> bool;

/// The `DaviRestoreOptions.progress` function that calls the [`Progress`] at `user`.
pub unsafe extern "C" fn progress_closure(user: *mut c_void, fraction: f32) -> i32 {
    let f = unsafe { &mut *user.cast::<Progress>() };
    (!f(fraction)) as i32
}

/// Set `o`'s callback to call `progress` (which must outlive the restore).
pub fn set_progress(o: &mut DaviRestoreOptions, progress: &mut Progress) {
    o.progress = Some(progress_closure);
    o.user_data = (progress as *mut Progress).cast();
}

/// A deterministic, smooth-plus-texture test picture, `channels` interleaved u8 samples per
/// pixel.
pub fn picture_u8(width: usize, height: usize, channels: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(width * height * channels);
    for y in 0..height {
        for x in 0..width {
            for c in 0..channels {
                let base =
                    40.0 + 150.0 * (x as f64 / width as f64) + 40.0 * ((y as f64) * 0.5).sin();
                let texture = 20.0 * (((x * 7 + y * 13 + c * 29) % 17) as f64 / 17.0);
                v.push((base + texture + 10.0 * c as f64).clamp(0.0, 255.0) as u8);
            }
        }
    }
    v
}

/// PSNR in dB of two equally long u8 buffers.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-12)).log10()
}

/// An 8-bit binary PNM: P5 (gray) or P6 (RGB).
#[derive(Clone, Debug, PartialEq)]
pub struct Pnm {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

pub fn write_pnm(path: &Path, img: &Pnm) {
    let magic = if img.channels == 1 { "P5" } else { "P6" };
    let mut bytes = format!("{magic}\n{} {}\n255\n", img.width, img.height).into_bytes();
    bytes.extend_from_slice(&img.data);
    std::fs::write(path, bytes).expect("write pnm");
}

pub fn read_pnm(path: &Path) -> Pnm {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes[i] == b'#' {
            while bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let start = i;
        while !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        fields.push(String::from_utf8(bytes[start..i].to_vec()).unwrap());
    }
    let channels = match fields[0].as_str() {
        "P5" => 1,
        "P6" => 3,
        other => panic!("{}: not a binary PNM ({other})", path.display()),
    };
    assert_eq!(fields[3], "255", "8-bit PNM expected");
    let (width, height) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    let data = bytes[i + 1..].to_vec();
    assert_eq!(
        data.len(),
        width * height * channels,
        "{}: truncated",
        path.display()
    );
    Pnm {
        width,
        height,
        channels,
        data,
    }
}

/// A directory with `libdavi.so.0` and `libdavi.so` pointing at this run's library, so hosts
/// link and run as they would against an installed one (the SONAME is `libdavi.so.0`).
pub fn soname_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("lib");
        let lib = lib_dir().join("libdavi.so");
        for name in ["libdavi.so.0", "libdavi.so"] {
            std::os::unix::fs::symlink(&lib, dir.join(name)).expect("symlink libdavi");
        }
        dir
    })
    .clone()
}

/// Run a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// `ASAN_OPTIONS` for the sanitized hosts: leak detection on, stop at the first error.
pub const ASAN_LEAK_OPTIONS: &str = "detect_leaks=1:halt_on_error=1:abort_on_error=0";

/// The signature of LeakSanitizer's own stop-the-world tracer crashing at exit: no leak
/// report, no check of ours, a known intermittent fault of the sanitizer runtime (seen on a
/// CI machine after every check had passed, never reproduced here in dozens of runs).
const LSAN_TRACER_CRASH: &str = "LeakSanitizer has encountered a fatal error";

/// Run a sanitized host with [`ASAN_LEAK_OPTIONS`]. When, and only when, its output carries
/// the tracer-crash signature and no sanitizer report, it runs again (at most twice more):
/// a real leak or memory error is printed as `ERROR: ...Sanitizer` and is never retried.
pub fn output_under_asan(cmd: &mut Command) -> std::process::Output {
    cmd.env("ASAN_OPTIONS", ASAN_LEAK_OPTIONS);
    let mut tries = 0;
    loop {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tries += 1;
        let tracer_crash = text.contains(LSAN_TRACER_CRASH) && !text.contains("ERROR: ");
        if !tracer_crash || tries == 3 {
            return out;
        }
        eprintln!("LeakSanitizer's tracer crashed at exit (no report); running {cmd:?} again");
    }
}

/// Compile a host: `compiler` (`cc` or `c++`) with the strict flags of its language, against
/// `include/davi.h` and this run's `libdavi.so`, plus `extra` flags (sanitizers).
pub fn build_host(compiler: &str, source: &Path, out: &Path, extra: &[&str]) {
    let std_flag = if compiler == "cc" {
        "-std=c11"
    } else {
        "-std=c++17"
    };
    let lib = soname_dir();
    let mut cmd = Command::new(compiler);
    cmd.args([std_flag, "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-g"])
        .args(extra)
        .arg("-I")
        .arg(root().join("include"))
        .arg(source)
        .arg("-o")
        .arg(out)
        .arg(format!("-L{}", lib.display()))
        .arg("-ldavi")
        .arg(format!("-Wl,-rpath,{}", lib.display()));
    run(&mut cmd);
}

/// The C host of `host-example/c/restore.c`, built once per test binary.
pub fn c_host() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = scratch("c-host").join("restore");
        build_host("cc", &root().join("host-example/c/restore.c"), &out, &[]);
        out
    })
}

/// The default denoising model; a missing one fails the test.
pub fn default_denoise_model() -> PathBuf {
    default_model("denoise")
}

/// The default model of `task` (`models/photo-<task>.safetensors`); a missing one fails the test.
pub fn default_model(task: &str) -> PathBuf {
    let model = root().join(format!("models/photo-{task}.safetensors"));
    assert!(
        model.is_file(),
        "{} is missing: the default {task} model is trained by the project (preset \
         photo-{task}, docs/models.md) and committed; this test needs it and does not skip",
        model.display()
    );
    model
}

/// A crop of a held-out photograph (never trained on) as 8-bit RGB.
pub fn photo(width: usize, height: usize) -> Pnm {
    heldout_crop("chelsea.png", width, height)
}

/// The centred `width × height` crop of `data/photos/heldout/<name>` as 8-bit RGB.
pub fn heldout_crop(name: &str, width: usize, height: usize) -> Pnm {
    let path = root().join("data/photos/heldout").join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-photos.sh",
        path.display()
    );
    let rgb = image::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    let (x0, y0) = (
        (rgb.width() as usize - width) / 2,
        (rgb.height() as usize - height) / 2,
    );
    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            data.extend_from_slice(&rgb.get_pixel((x0 + x) as u32, (y0 + y) as u32).0);
        }
    }
    Pnm {
        width,
        height,
        channels: 3,
        data,
    }
}

/// Degrade `clean` with the operator the model was trained for, as the engine simulates it,
/// quantised to 8 bits (smaller for super-resolution, one channel for colorization).
pub fn degrade(clean: &Pnm, model: &Path, seed: u64) -> Pnm {
    use tch::{Device, Kind, Tensor};
    let meta = davi_engine::weights::model_file::read_meta(model).unwrap();
    let spec = meta.operator.expect("the default model names its operator");
    let (w, h) = (clean.width as i64, clean.height as i64);
    let x = Tensor::from_slice(&clean.data)
        .to_kind(Kind::Float)
        .view([h, w, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        / 255.0;
    let y = davi_engine::pipeline::simulate_observation(&spec, &x.to_device(Device::Cpu), seed)
        .unwrap();
    let (_, c, yh, yw) = y.size4().unwrap();
    let y = (y.clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .squeeze_dim(0)
        .permute([1, 2, 0])
        .contiguous();
    Pnm {
        width: yw as usize,
        height: yh as usize,
        channels: c as usize,
        data: Vec::<u8>::try_from(&y.view([-1])).unwrap(),
    }
}
