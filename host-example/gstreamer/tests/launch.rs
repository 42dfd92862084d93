//! The real plugin file, as users load it: this run's `libgstdavi.so` alone in a plugin folder
//! on `GST_PLUGIN_PATH`, a private registry (`GST_REGISTRY`), Debian's `gst-inspect-1.0` and
//! `gst-launch-1.0` (installed by `scripts/setup-hosts.sh`). The registry scan loads the
//! plugin in `gst-plugin-scanner`, so this also proves that registering loads no model and
//! that nothing ends up blacklisted, not even after a pipeline whose model fails to load.

mod common;

use common::{root, scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// This run's plugin library: next to the test binary (`target/<profile>/deps`), where cargo
/// puts the `cdylib` it built for the tests, or in `target/<profile>`.
fn built_plugin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    [deps, deps.parent().unwrap()]
        .iter()
        .map(|d| d.join("libgstdavi.so"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("libgstdavi.so not found next to {}", exe.display()))
}

/// A GStreamer tool with the plugin folder and private registry of `dir`.
fn tool(dir: &Path, name: &str) -> Command {
    let mut c = Command::new(name);
    c.env("GST_PLUGIN_PATH", dir.join("plugins"))
        .env("GST_REGISTRY", dir.join("registry.bin"))
        .env("DAVI_MODEL_DIR", root().join("models"))
        .env_remove("GST_PLUGIN_PATH_1_0")
        .env_remove("GST_REGISTRY_1_0");
    c
}

fn run(mut c: Command) -> Output {
    let out = c.output().unwrap_or_else(|e| {
        panic!("{c:?}: {e} (run scripts/setup-hosts.sh for gstreamer1.0-tools)")
    });
    assert!(
        out.status.code().is_some(),
        "{c:?} died from a signal: {:?}",
        out.status
    );
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn gst_launch_restores_through_the_installed_plugin() {
    let dir = scratch("launch");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::copy(built_plugin(), dir.join("plugins/libgstdavi.so")).unwrap();

    let mut c = tool(&dir, "gst-inspect-1.0");
    c.arg("davirestore");
    let out = run(c);
    let inspect = text(&out);
    assert!(out.status.success(), "{inspect}");
    for want in [
        "DAVI restoration",
        "Filter/Effect/Video",
        "task",
        "sr4",
        "model",
        "device",
        "seed",
        "tile",
        "overlap",
    ] {
        assert!(
            inspect.contains(want),
            "gst-inspect-1.0 lacks {want:?}:\n{inspect}"
        );
    }

    // Five frames denoised by the shipped default model, found through DAVI_MODEL_DIR.
    let denoised = dir.join("denoised.rgb");
    let mut c = tool(&dir, "gst-launch-1.0");
    c.args([
        "-q",
        "videotestsrc",
        "num-buffers=5",
        "!",
        "video/x-raw,format=RGB,width=64,height=48",
        "!",
    ])
    .args(["davirestore", "task=denoise", "device=cpu", "!", "filesink"])
    .arg(format!("location={}", denoised.display()));
    let out = run(c);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::metadata(&denoised).unwrap().len(), 5 * 64 * 48 * 3);

    // 4× SR from blue-first frames, with the enlarged size asked for downstream.
    let enlarged = dir.join("sr4.bgrx");
    let mut c = tool(&dir, "gst-launch-1.0");
    c.args([
        "-q",
        "videotestsrc",
        "num-buffers=2",
        "!",
        "video/x-raw,format=BGRx,width=32,height=24",
        "!",
    ])
    .args([
        "davirestore",
        "task=sr4",
        "device=cpu",
        "!",
        "video/x-raw,width=128,height=96",
        "!",
        "filesink",
    ])
    .arg(format!("location={}", enlarged.display()));
    let out = run(c);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::metadata(&enlarged).unwrap().len(),
        2 * 128 * 96 * 4
    );

    // A model that cannot load: an error from the element and a failure exit (gst-launch
    // returns -1 when the pipeline cannot preroll), not a crash.
    let mut c = tool(&dir, "gst-launch-1.0");
    c.args([
        "videotestsrc",
        "num-buffers=1",
        "!",
        "video/x-raw,format=RGB,width=16,height=16",
        "!",
    ])
    .args([
        "davirestore",
        "model=/nonexistent/model.safetensors",
        "!",
        "fakesink",
    ]);
    let out = run(c);
    let failed = text(&out);
    assert_ne!(out.status.code(), Some(0), "{failed}");
    assert!(failed.contains("ERROR: from element"), "{failed}");
    assert!(
        failed.contains("davirestore0: cannot load /nonexistent/model.safetensors"),
        "{failed}"
    );

    // The scanner loaded the plugin without blacklisting it (or anything else).
    let mut c = tool(&dir, "gst-inspect-1.0");
    c.arg("-b");
    let out = run(c);
    let blacklist = text(&out);
    assert!(out.status.success(), "{blacklist}");
    assert!(
        blacklist.contains("Total count: 0 blacklisted files"),
        "{blacklist}"
    );
}
