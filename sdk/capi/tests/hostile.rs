//! Hostile inputs at the C ABI: `tests/c/hostile.c`, a C program written only against
//! `include/davi.h`, runs under AddressSanitizer and UBSan against this run's `libdavi.so`.
//! It passes handles of the wrong kind, freed ones and pointers into an unreadable page;
//! NaN and infinite colour and alpha; out-of-range tiles, overlaps, `perturb_h`, thread
//! counts and device names; task names that are not UTF-8; model files whose metadata or
//! tensors are hostile (written here by editing a valid file's safetensors header); and runs
//! 8 threads on own contexts and on one shared context, comparing bits with a sequential run.
//!
//! The same hostile model files, and a sweep over every U-Net metadata field, also go through
//! the C API in-process, to show that no input reaches a panic: each file is refused with
//! `DAVI_STATUS_MODEL_ERROR` (or, where the value is harmless, loads).
mod common;

use common::*;
use davi::*;
use davi_sdk::DaviStatus as S;
use serde_json::{json, Value};
use std::ffi::{c_char, CStr};
use std::path::Path;
use std::process::Command;
use std::ptr::null_mut;

/// A hostile model file: the field or tensor it breaks (the refusal must name it; the C
/// client also uses it as the file name), what the refusal must say besides, and the edit.
type Hostile = (&'static str, &'static str, Edit);

/// An edit of a model file's metadata and header tensors.
type Edit = Box<dyn Fn(&mut Value, &mut Value)>;

/// The hostile model files. Metadata edits are refused by the metadata check (`metadata
/// `…`), tensor edits by the check of the header's tensors against the architecture, both
/// before any tensor is built.
fn hostile_models() -> Vec<Hostile> {
    fn meta(f: impl Fn(&mut Value) + 'static) -> Edit {
        Box::new(move |m, _| f(m))
    }
    fn tensors(f: impl Fn(&mut Value) + 'static) -> Edit {
        Box::new(move |_, h| f(h))
    }
    const META: &str = "metadata `";
    vec![
        (
            "unet.norm_groups",
            META,
            meta(|m| m["unet"]["norm_groups"] = json!(0)),
        ),
        (
            "unet.in_channels",
            META,
            meta(|m| m["unet"]["in_channels"] = json!(0)),
        ),
        (
            "diffusion_steps",
            META,
            meta(|m| m["diffusion_steps"] = json!(0)),
        ),
        (
            "noise_sigma",
            META,
            meta(|m| m["operator"]["noise_sigma"] = json!(9e9)),
        ),
        (
            "restore_tile",
            META,
            meta(|m| m["restore_tile"] = json!(33)),
        ),
        ("perturb_h", META, meta(|m| m["perturb_h"] = json!(-9))),
        (
            "unet.channel_mult",
            META,
            meta(|m| m["unet"]["channel_mult"] = json!([])),
        ),
        (
            "unet.model_channels",
            META,
            meta(|m| m["unet"]["model_channels"] = json!(0)),
        ),
        // `num_head_channels = -1` means `num_heads` heads in every attention layer: 3 do
        // not split 64 channels (it loaded, then every restore panicked in a reshape).
        (
            "num_heads",
            "does not split into 3 heads",
            meta(|m| {
                m["unet"]["num_head_channels"] = json!(-1);
                m["unet"]["num_heads"] = json!(3);
            }),
        ),
        (
            "middle_block.1.qkv.weight",
            "dtype I32",
            tensors(|h| h["middle_block.1.qkv.weight"]["dtype"] = json!("I32")),
        ),
        (
            "out.2.weight",
            "has shape [6, 32, 9, 1], the architecture expects [6, 32, 3, 3]",
            tensors(|h| h["out.2.weight"]["shape"] = json!([6, 32, 9, 1])),
        ),
        (
            "time_embed.2.bias",
            "missing tensor",
            tensors(|h| {
                h.as_object_mut().unwrap().remove("time_embed.2.bias");
            }),
        ),
        // Metadata in range that describes a network of ~10^13 parameters around the tiny
        // one's tensors: refused by the shape check from the header, never allocated.
        (
            "input_blocks.0.0.bias",
            "the architecture expects [65536]",
            meta(|m| {
                m["unet"]["model_channels"] = json!(4096);
                m["unet"]["channel_mult"] = json!([16, 16, 16, 16, 16, 16, 16, 16]);
                m["unet"]["num_res_blocks"] = json!(16);
            }),
        ),
    ]
}

/// Write the hostile models into `dir` as `<field>.safetensors`; returns the fields.
fn write_hostile_models(dir: &Path) -> Vec<&'static str> {
    let good = std::fs::read(denoise_model()).unwrap();
    hostile_models()
        .into_iter()
        .map(|(field, _, edit)| {
            let bytes = edited_model(&good, |m, h| edit(m, h));
            std::fs::write(dir.join(format!("{field}.safetensors")), bytes).unwrap();
            field
        })
        .collect()
}

/// `davi_context_new` on model bytes in memory: status and message.
fn load_bytes(bytes: &[u8]) -> (S, String) {
    let mut o = std::mem::MaybeUninit::<DaviContextOptions>::uninit();
    unsafe { davi_context_options_init(o.as_mut_ptr(), size_of::<DaviContextOptions>()) };
    let mut o = unsafe { o.assume_init() };
    o.device = c"cpu".as_ptr();
    o.model_bytes = bytes.as_ptr();
    o.model_len = bytes.len();
    let mut ctx = null_mut();
    let mut err = [0 as c_char; 1024];
    let st = unsafe { davi_context_new(&o, &mut ctx, err.as_mut_ptr(), err.len()) };
    unsafe { davi_context_free(ctx) };
    let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    (st, msg)
}

#[test]
fn the_c_client_survives_hostile_handles_pixels_options_models_and_threads_under_asan() {
    let dir = scratch("hostile");
    let bad = dir.join("models");
    std::fs::create_dir_all(&bad).unwrap();
    let fields = write_hostile_models(&bad);
    let bin = dir.join("hostile");
    build_host(
        "cc",
        &root().join("sdk/capi/tests/c/hostile.c"),
        &bin,
        &[
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
            "-pthread",
        ],
    );
    let mut cmd = Command::new(&bin);
    cmd.arg(denoise_model())
        .arg(&bad)
        .args(&fields)
        .env("UBSAN_OPTIONS", "print_stacktrace=1");
    let out = output_under_asan(&mut cmd);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains(" 0 failed"),
        "hostile C client failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("Sanitizer") && !stderr.contains("runtime error"),
        "{stderr}"
    );
    eprintln!("{stdout}");
}

#[test]
fn hostile_model_bytes_are_model_errors_naming_the_field() {
    let good = std::fs::read(denoise_model()).unwrap();
    for (field, says, edit) in hostile_models() {
        let (st, msg) = load_bytes(&edited_model(&good, |m, h| edit(m, h)));
        assert_eq!(st, S::ModelError, "{field}: {msg}");
        assert!(msg.contains(field) && msg.contains(says), "{field}: {msg}");
    }
    // The relayout alone changes nothing: the unedited header loads.
    assert_eq!(load_bytes(&edited_model(&good, |_, _| {})).0, S::Ok);
}

/// Every numeric U-Net field, the step count and the tiles set to values a damaged or hostile
/// file could hold: each file loads or is refused with `MODEL_ERROR`, never a panic. Values
/// stay small so no accepted file builds a large network.
#[test]
fn no_metadata_value_reaches_a_panic() {
    let good = std::fs::read(denoise_model()).unwrap();
    let fields = [
        "image_size",
        "in_channels",
        "model_channels",
        "out_channels",
        "num_res_blocks",
        "num_head_channels",
        "num_heads",
        "norm_groups",
    ];
    let values = [
        json!(-1),
        json!(0),
        json!(1),
        json!(3),
        json!(7),
        json!(1e300),
        json!("x"),
    ];
    let mut refused = 0;
    for field in fields {
        for v in &values {
            let (st, msg) = load_bytes(&edited_model(&good, |m, _| m["unet"][field] = v.clone()));
            assert!(
                st == S::ModelError || st == S::Ok,
                "unet.{field} = {v}: {st:?} {msg}"
            );
            refused += (st == S::ModelError) as usize;
        }
    }
    for (key, v) in [
        ("diffusion_steps", json!(1)),
        ("diffusion_steps", json!(1u64 << 40)),
        ("restore_tile", json!(-4)),
        ("restore_window", json!(0)),
        ("perturb_h", json!(1e300)),
        ("schedule", json!("nope")),
        ("role", json!("prior")),
        (
            "operator",
            json!({ "kind": "super_resolution", "factor": 3 }),
        ),
        ("unet", json!(null)),
    ] {
        let (st, msg) = load_bytes(&edited_model(&good, |m, _| m[key] = v.clone()));
        assert_eq!(st, S::ModelError, "{key} = {v}: {msg}");
    }
    assert!(refused > 40, "only {refused} refusals");
    // The unedited bytes load.
    assert_eq!(load_bytes(&good).0, S::Ok);
}

/// Every task, and specs at the edges of their documented ranges, on tiny, thin and odd-sized
/// images, with the model's tiling and with small tiles: every restore succeeds (or meets a
/// model trained for another kind); none panics, and none fails after validation passed.
#[test]
fn valid_specs_on_tiny_and_thin_images_always_restore() {
    use davi_sdk::{DaviChannelLayout as L, DaviImage, DaviSampleType as T};
    let mut models = vec![any_kind_model().to_path_buf()];
    for task in ["deblur", "inpaint", "colorize"] {
        models.push(default_model(task));
    }
    // Each task's default spec, then extreme values inside the documented ranges.
    let mut specs: Vec<String> = [
        "deblur", "sr2", "sr4", "sr8", "inpaint", "denoise", "colorize",
    ]
    .iter()
    .map(|t| format!("task:{t}"))
    .collect();
    specs.extend(
        [
            "kind = \"gaussian_blur\"\nsigma = 100\nsize = 1001",
            "kind = \"gaussian_blur\"\nsigma = 1e-9\nsize = 3\nmode = \"ddrm\"",
            "kind = \"gaussian_blur\"\nsigma = 1e-9\nsize = 1",
            "kind = \"gaussian_blur\"\nsigma = 5\nsize = 61\nmode = \"ddrm\"\nnoise_sigma = 2",
            "kind = \"super_resolution\"\nfactor = 8\nmethod = \"bicubic\"",
            "kind = \"inpainting\"\nboxes = [{ top = 0, left = 0, height = 1, width = 1 }]",
            "kind = \"denoising\"\nnoise_sigma = 0",
            "kind = \"colorization\"\nweights = [0, 0, 0.001]",
            "kind = \"colorization\"\nweights = [100, 100, 100]",
        ]
        .map(String::from),
    );
    let sizes = [
        (1, 1),
        (1, 7),
        (7, 1),
        (2, 2),
        (3, 5),
        (33, 1),
        (5, 64),
        (61, 3),
    ];
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for model in &models {
        let path = std::ffi::CString::new(model.to_str().unwrap()).unwrap();
        let mut o = std::mem::MaybeUninit::<DaviContextOptions>::uninit();
        unsafe { davi_context_options_init(o.as_mut_ptr(), size_of::<DaviContextOptions>()) };
        let mut o = unsafe { o.assume_init() };
        o.device = c"cpu".as_ptr();
        o.threads = 1;
        o.model_path = path.as_ptr();
        let mut ctx = null_mut();
        assert_eq!(
            unsafe { davi_context_new(&o, &mut ctx, null_mut(), 0) },
            S::Ok
        );
        for task in &specs {
            let text = std::ffi::CString::new(task.strip_prefix("task:").unwrap_or(task)).unwrap();
            let mut spec = null_mut();
            let st = match task.starts_with("task:") {
                true => unsafe { davi_spec_new_task(text.as_ptr(), &mut spec) },
                false => unsafe { davi_spec_parse(text.as_ptr(), &mut spec, null_mut(), 0) },
            };
            assert_eq!(st, S::Ok, "{task}");
            for (w, h) in sizes {
                let (mut ow, mut oh) = (0u32, 0u32);
                if unsafe { davi_output_size(spec, w, h, &mut ow, &mut oh) } != S::Ok {
                    *outcomes.entry("output_size refused".into()).or_default() += 1;
                    continue;
                }
                for tile in [0u32, 4, 8] {
                    let mut input = vec![0.5f32; (w * h * 3) as usize];
                    let mut output = vec![0f32; (ow * oh * 3) as usize];
                    let i = DaviImage::new(
                        w,
                        h,
                        T::F32,
                        L::Rgb,
                        (w * 12) as isize,
                        input.as_mut_ptr().cast(),
                    );
                    let mut out = DaviImage::new(
                        ow,
                        oh,
                        T::F32,
                        L::Rgb,
                        (ow * 12) as isize,
                        output.as_mut_ptr().cast(),
                    );
                    let mut ro = std::mem::MaybeUninit::<DaviRestoreOptions>::uninit();
                    unsafe {
                        davi_restore_options_init(ro.as_mut_ptr(), size_of::<DaviRestoreOptions>())
                    };
                    let mut ro = unsafe { ro.assume_init() };
                    ro.tile = tile;
                    let st = unsafe { davi_restore(ctx, &i, &mut out, spec, &ro) };
                    let mut msg = [0 as c_char; 512];
                    unsafe {
                        davi_context_last_error(ctx, msg.as_mut_ptr(), msg.len(), null_mut())
                    };
                    let msg = unsafe { CStr::from_ptr(msg.as_ptr()) }
                        .to_string_lossy()
                        .into_owned();
                    // A valid spec and image either restore or meet a model trained for
                    // another kind; any other status is a validation gap.
                    assert!(
                        matches!(st, S::Ok | S::UnsupportedOperator),
                        "{} {task:?} {w}x{h} tile {tile}: {st:?} {msg}",
                        model.display()
                    );
                    *outcomes.entry(format!("{st:?}")).or_default() += 1;
                }
            }
            unsafe { davi_spec_free(spec) };
        }
        unsafe { davi_context_free(ctx) };
    }
    eprintln!("{outcomes:?}");
}
