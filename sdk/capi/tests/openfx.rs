//! The OpenFX plug-in of `host-example/openfx`, end to end: `install.sh` builds the
//! `DAVI.ofx.bundle` against this run's `libdavi.so` and the pinned OpenFX headers
//! (`fetch-sdk.sh`: openfx-sys 0.1.0 from crates.io, sha256-checked, cached); the in-repo
//! C host `test_host.c` finds it through `OFX_PLUGIN_PATH`, dlopens it and drives the OFX
//! sequence (load, describe, describe-in-context, instances, clip preferences, regions,
//! renders over frames and render windows, abort, errors, unload) under the capability
//! profiles of Resolve 16, Nuke 10 and Natron 2.1, checking pixels against a real photograph,
//! alpha bit for bit, 8/16/float and the refusals; then the same under AddressSanitizer.
//!
//! Needs `cc`, `nm`, `readelf`, the default models and the held-out photos
//! (`scripts/fetch-photos.sh`), and the OpenFX headers (downloaded once into
//! `~/.cache/libdavi/`); a missing piece fails the test, naming it.
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const TASKS: [&str; 5] = ["denoise", "deblur", "sr4", "inpaint", "colorize"];

fn openfx_dir() -> PathBuf {
    root().join("host-example/openfx")
}

/// The OpenFX SDK folder (`include/`, `HostSupport/`), fetched once.
fn sdk() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = run(Command::new("bash").arg(openfx_dir().join("fetch-sdk.sh")));
        let dir = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        assert!(
            dir.join("include/ofxImageEffect.h").is_file(),
            "{}",
            dir.display()
        );
        dir
    })
}

/// Install the bundle into `prefix` with `install.sh`; returns the plug-ins folder.
fn install(prefix: &Path, cflags: &str, models: bool) -> PathBuf {
    let mut cmd = Command::new("bash");
    cmd.arg(openfx_dir().join("install.sh"))
        .arg("--lib")
        .arg(lib_dir())
        .env("CFLAGS", cflags)
        .env("OFX_SDK_DIR", sdk());
    if !models {
        cmd.arg("--no-models");
    }
    run(cmd.arg(prefix));
    prefix.join("OFX/Plugins")
}

/// The bundle with its default models, installed once per test binary.
fn plugins() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| install(&scratch("ofx-prefix"), "-O2 -g", true))
}

/// Compile the test host with `extra` flags.
fn build_test_host(out: &Path, extra: &[&str]) {
    run(Command::new("cc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-g",
        ])
        .args(extra)
        .arg("-I")
        .arg(sdk().join("include"))
        .arg(openfx_dir().join("test_host.c"))
        .arg("-o")
        .arg(out)
        .args(["-ldl", "-lm", "-lpthread"]));
}

fn test_host() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = scratch("ofx-host").join("test_host");
        build_test_host(&out, &[]);
        out
    })
}

/// A centred crop of a held-out photograph (never trained on) as 8-bit RGB.
fn coffee(width: usize, height: usize) -> Pnm {
    heldout_crop("coffee.png", width, height)
}

/// The frames the test host reads: a 96x64 crop, three noisy versions of it (the denoising
/// model's operator, different noise), its 4x-smaller, blurred and gray observations.
fn frames() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("ofx-frames");
        let clean = coffee(96, 64);
        write_pnm(&dir.join("clean.ppm"), &clean);
        for seed in 0..3 {
            let noisy = degrade(&clean, &default_model("denoise"), 10 + seed);
            write_pnm(&dir.join(format!("noisy{seed}.ppm")), &noisy);
        }
        let small = degrade(&clean, &default_model("sr4"), 5);
        assert_eq!((small.width, small.height), (24, 16));
        write_pnm(&dir.join("small.ppm"), &small);
        write_pnm(
            &dir.join("blurred.ppm"),
            &degrade(&clean, &default_model("deblur"), 4),
        );
        let gray = degrade(&clean, &default_model("colorize"), 6);
        assert_eq!(gray.channels, 1);
        write_pnm(&dir.join("gray.pgm"), &gray);
        dir
    })
}

/// Run the test host under `profile`; panics with its report unless every check passed.
fn run_profile(
    host: &Path,
    plugins: &Path,
    profile: &str,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> String {
    for task in TASKS {
        default_model(task);
    }
    let mut cmd = Command::new(host);
    cmd.args(["--profile", profile, "--data"])
        .arg(frames())
        .arg("--models")
        .arg(root().join("models"))
        .args(extra)
        .env("OFX_PLUGIN_PATH", plugins)
        // The bundle must find libdavi and its models by itself.
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("DAVI_MODEL_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Harmless for the uninstrumented host; for the ASan one it also rides out the
    // sanitizer's own intermittent exit-time crash (see `output_under_asan`).
    let out = output_under_asan(&mut cmd);
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success()
            && report.contains(&format!("{profile}: "))
            && report.contains(" checks, 0 failed"),
        "test host, profile {profile} ({}):\n{report}",
        out.status
    );
    eprintln!("{report}");
    report
}

#[test]
fn the_bundle_has_the_openfx_layout_exports_only_the_entry_points_and_carries_libdavi() {
    let plugins = plugins();
    let contents = plugins.join("DAVI.ofx.bundle/Contents");
    let ofx = contents.join("Linux-x86-64/DAVI.ofx");
    assert!(ofx.is_file(), "{}", ofx.display());
    assert!(contents.join("Linux-x86-64/libdavi.so.0").is_file());
    for task in TASKS {
        assert!(
            contents
                .join(format!("Resources/org.libdavi.davi.{task}.png"))
                .is_file(),
            "{task} icon"
        );
        assert!(
            contents
                .join(format!("Resources/models/photo-{task}.safetensors"))
                .is_file(),
            "{task} model"
        );
    }

    let nm = run(Command::new("nm").args(["-D", "--defined-only"]).arg(&ofx));
    let mut exported: Vec<String> = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    exported.sort();
    assert_eq!(
        exported,
        ["OfxGetNumberOfPlugins", "OfxGetPlugin", "OfxSetHost"]
    );

    let dynamic =
        String::from_utf8(run(Command::new("readelf").arg("-d").arg(&ofx)).stdout).unwrap();
    assert!(dynamic.contains("[libdavi.so.0]"), "{dynamic}");
    assert!(
        dynamic.contains("[$ORIGIN]"),
        "no $ORIGIN rpath:\n{dynamic}"
    );
    // The dynamic loader resolves libdavi inside the bundle, without LD_LIBRARY_PATH.
    let ldd = run(Command::new("ldd").arg(&ofx).env_remove("LD_LIBRARY_PATH"));
    let ldd = String::from_utf8_lossy(&ldd.stdout).into_owned();
    let line = ldd
        .lines()
        .find(|l| l.contains("libdavi.so.0"))
        .unwrap_or("");
    assert!(
        line.contains(
            &contents
                .join("Linux-x86-64/libdavi.so.0")
                .display()
                .to_string()
        ),
        "{ldd}"
    );
    assert!(!ldd.contains("not found"), "{ldd}");
}

#[test]
fn resolve_16_profile_no_tiles_no_multi_resolution_super_resolution_refused() {
    let report = run_profile(test_host(), plugins(), "resolve", &[], &[]);
    assert!(
        report.contains("org.libdavi.davi.sr4: describe refused without multi-resolution"),
        "{report}"
    );
    for depth in ["Float", "Short", "Byte"] {
        assert!(
            report.contains(&format!(
                "ok   org.libdavi.davi.denoise: {depth} RGBA frame 0"
            )),
            "{report}"
        );
    }
}

#[test]
fn nuke_10_profile_float_only_tiles_multi_resolution_top_down_rows() {
    let report = run_profile(test_host(), plugins(), "nuke", &[], &[]);
    assert!(
        report.contains("ok   org.libdavi.davi.sr4: 24x16 -> 96x64"),
        "{report}"
    );
    assert!(
        report.contains("two render windows give the whole-frame pixels"),
        "{report}"
    );
}

#[test]
fn natron_2_1_profile_rgb_all_depths_proxy_render_scale() {
    let report = run_profile(test_host(), plugins(), "natron", &[], &[]);
    assert!(
        report.contains("ok   org.libdavi.davi.denoise: proxy render at scale 0.5: 48x32"),
        "{report}"
    );
    assert!(
        report.contains("ok   org.libdavi.davi.denoise: Byte RGB frame 0"),
        "{report}"
    );
}

/// The plug-in and the test host both built with AddressSanitizer (libtorch is not
/// instrumented), leak detection on, over the Resolve and Nuke profiles in quick mode:
/// descriptors, renders in both row orders, scratch-buffer render windows, abort, error paths,
/// 4x SR. The models come from `DAVI_MODEL_DIR` here (a bundle without models).
#[test]
fn the_plugin_and_the_test_host_run_clean_under_address_sanitizer() {
    let dir = scratch("ofx-asan");
    let asan = ["-fsanitize=address", "-fno-omit-frame-pointer"];
    let plugins = install(
        &dir.join("prefix"),
        &format!("-O1 -g {}", asan.join(" ")),
        false,
    );
    let host = dir.join("test_host_asan");
    build_test_host(&host, &asan);
    let models = root().join("models");
    for profile in ["resolve", "nuke"] {
        let report = run_profile(
            &host,
            &plugins,
            profile,
            &["--quick"],
            &[("DAVI_MODEL_DIR", &models)],
        );
        assert!(
            !report.contains("AddressSanitizer") && !report.contains("LeakSanitizer"),
            "{report}"
        );
    }
}

/// Cross-check with the OpenFX reference host library: `HostSupport` and its example host
/// classes, from the fetched `openfx-sys` 0.1.0 sources (C++, `-lexpat`), compiled with
/// `host-example/openfx/hostsupport_check.cpp`. HostSupport scans `OFX_PLUGIN_PATH`, finds
/// the effects (SR is refused: its example host has no multi-resolution), and renders a PAL
/// frame through the denoiser. Opt-in: it compiles ~13k lines of C++ (about a minute) and
/// needs Debian's `libexpat1-dev`.
#[test]
#[ignore = "opt-in: compiles the OpenFX HostSupport library (needs g++ and libexpat1-dev)"]
fn hostsupport_reference_host_scans_and_renders_the_bundle() {
    let dir = scratch("ofx-hostsupport");
    let s = sdk();
    let hs = s.join("HostSupport");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(hs.join("src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cpp"))
        .collect();
    sources.sort();
    for demo in [
        "ClipInstance",
        "EffectInstance",
        "HostDescriptor",
        "ParamInstance",
    ] {
        sources.push(hs.join(format!("examples/hostDemo{demo}.cpp")));
    }
    sources.push(openfx_dir().join("hostsupport_check.cpp"));
    let bin = dir.join("hostsupport_check");
    // This HostSupport snapshot uses C++98 exception specifications and omits <cstring>.
    run(Command::new("g++")
        .args(["-std=gnu++14", "-O1", "-w", "-include", "cstring"])
        .arg("-I")
        .arg(s.join("include"))
        .arg("-I")
        .arg(hs.join("include"))
        .arg("-I")
        .arg(hs.join("examples"))
        .args(&sources)
        .arg("-o")
        .arg(&bin)
        .args(["-lexpat", "-ldl"]));
    let out = Command::new(&bin)
        .current_dir(&dir)
        .env("OFX_PLUGIN_PATH", plugins())
        .env_remove("DAVI_MODEL_DIR")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(
        out.status.success() && report.contains("hostsupport: 0 failed"),
        "HostSupport check ({}):\n{report}",
        out.status
    );
    assert!(
        report.contains("describe failed on plugin org.libdavi.davi.sr4"),
        "{report}"
    );
}
