//! The classical plugin through the plugin boundary: the real `libdavi_classical.so` loaded by
//! the SDK loader, and the same plugin registered in-process, must describe themselves alike,
//! produce the same pixels, and refuse bad requests with the right status.
mod common;

use common::*;
use davi_classical::Classical;
use davi_sdk::loader::{LoadedPlugin, PluginOrigin, PluginRegistry};
use davi_sdk::{
    DaviChannelLayout, DaviStatus, ImageView, ImageViewMut, OperatorKind, PlanarImage,
    PluginOptions,
};
use std::path::PathBuf;

/// The cdylib built with this test binary: `target/<profile>/deps/` next to the test
/// executable (where `cargo test` leaves it), else its uplifted copy in `target/<profile>/`.
fn built_plugin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let name = format!(
        "{}davi_classical.{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_EXTENSION
    );
    [deps.join(&name), deps.parent().unwrap().join(&name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} not found near {}: build it with `cargo test -p davi-classical`",
                exe.display()
            )
        })
}

const SPECS: &[&str] = &[
    "kind = \"gaussian_blur\"\nsigma = 1.5\nsize = 9\nnoise_sigma = 0.05",
    "kind = \"super_resolution\"\nfactor = 2",
    "kind = \"denoising\"\nnoise_sigma = 0.2",
    "{\"kind\": \"inpainting\", \"boxes\": [{\"top\": 4, \"left\": 6, \"height\": 8, \"width\": \
        10}]}",
];

#[test]
fn the_shared_library_loads_and_describes_itself() {
    let path = built_plugin();
    let mut reg = PluginRegistry::new();
    let p = reg.load(&path).unwrap();
    let d = p.describe();
    assert_eq!(d.id, "classical");
    assert_eq!(d.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        d.kinds(),
        [
            OperatorKind::GaussianBlur,
            OperatorKind::SuperResolution,
            OperatorKind::Inpainting,
            OperatorKind::Denoising
        ]
    );
    assert!(!d.supports(OperatorKind::Colorization));
    assert!(!d.is_learned());
    assert_eq!(d.device_names(), ["cpu"]);
    assert_eq!(p.origin(), &PluginOrigin::File(path.clone()));
    assert_eq!(
        reg.pick(OperatorKind::GaussianBlur, None).unwrap().id(),
        "classical"
    );
    assert_eq!(
        reg.pick(OperatorKind::Colorization, None)
            .unwrap_err()
            .status,
        DaviStatus::UnsupportedOperator
    );
    // The in-process registration of the same plugin is a duplicate id.
    assert!(reg.register::<Classical>().is_err());
}

#[test]
fn in_process_registration_gives_the_same_pixels_as_the_shared_library() {
    let loaded = LoadedPlugin::open(&built_plugin()).unwrap();
    let linked = LoadedPlugin::in_process::<Classical>().unwrap();
    assert_eq!(loaded.describe(), linked.describe());
    let mut a = loaded.new_instance(&PluginOptions::default()).unwrap();
    let mut b = linked.new_instance(&PluginOptions::default()).unwrap();
    let mut x = natural(24, 20);
    add_noise(&mut x, 0.05, 9);
    let x = clamped(&x);
    for spec in SPECS {
        let mut fractions = Vec::new();
        let ra = a
            .restore(spec, &x, |f| {
                fractions.push(f);
                true
            })
            .unwrap();
        let rb = b.restore(spec, &x, |_| true).unwrap();
        assert_eq!(ra, rb, "{spec}");
        assert_ne!(
            ra.data,
            x.data[..ra.data.len().min(x.data.len())].to_vec(),
            "{spec} did nothing"
        );
        assert!(
            fractions.windows(2).all(|w| w[0] <= w[1]),
            "{spec}: progress went backwards"
        );
        assert_eq!(fractions.last(), Some(&1.0), "{spec}");
    }
}

#[test]
fn the_shared_library_restores_interleaved_pixels_and_keeps_alpha() {
    let p = LoadedPlugin::open(&built_plugin()).unwrap();
    let mut inst = p.new_instance(&PluginOptions::default()).unwrap();
    let (w, h) = (48, 40);
    let x = natural(w, h);
    let mut y = x.clone();
    add_noise(&mut y, 0.1, 5);
    // 8-bit RGBA, bottom-up rows with padding, alpha a gradient.
    let pitch = w * 4 + 8;
    let mut src = vec![0u8; pitch * h];
    for row in 0..h {
        let mem = (h - 1 - row) * pitch;
        for col in 0..w {
            for c in 0..3 {
                src[mem + 4 * col + c] = (y.get(c, row, col).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
            src[mem + 4 * col + 3] = (row * 5 + col) as u8;
        }
    }
    let mut dst = vec![0u8; src.len()];
    let input =
        ImageView::from_samples(&src, w, h, DaviChannelLayout::Rgba, -(pitch as isize)).unwrap();
    let mut output =
        ImageViewMut::from_samples(&mut dst, w, h, DaviChannelLayout::Rgba, -(pitch as isize))
            .unwrap();
    inst.restore_view(
        "kind = \"denoising\"\nnoise_sigma = 0.2",
        &input,
        &mut output,
        |_| true,
    )
    .unwrap();
    let planar = |buf: &[u8]| {
        let mut p = PlanarImage::zeros(w, h, 3);
        for row in 0..h {
            for col in 0..w {
                for c in 0..3 {
                    p.data[(c * h + row) * w + col] =
                        buf[(h - 1 - row) * pitch + 4 * col + c] as f32 / 255.0;
                }
                assert_eq!(
                    buf[(h - 1 - row) * pitch + 4 * col + 3],
                    (row * 5 + col) as u8,
                    "alpha changed"
                );
            }
        }
        p
    };
    let (before, after) = (psnr(&planar(&src), &x), psnr(&planar(&dst), &x));
    assert!(after > before + 5.0, "{before:.2} -> {after:.2} dB");
}

#[test]
fn the_shared_library_refuses_bad_requests_with_their_status() {
    let p = LoadedPlugin::open(&built_plugin()).unwrap();
    let cuda = PluginOptions {
        device: "cuda:0".into(),
        ..PluginOptions::default()
    };
    assert_eq!(
        p.new_instance(&cuda).unwrap_err().status,
        DaviStatus::DeviceError
    );
    let model = PluginOptions {
        model_path: Some("/nonexistent/model.safetensors".into()),
        ..PluginOptions::default()
    };
    let e = p.new_instance(&model).unwrap_err();
    assert_eq!(e.status, DaviStatus::InvalidArgument);
    assert!(e.message.contains("no model file"), "{e}");
    let mut inst = p
        .new_instance(&PluginOptions {
            device: "cpu".into(),
            model_path: None,
        })
        .unwrap();
    let x = smooth(16, 16);
    let status = |r: Result<PlanarImage, davi_sdk::DaviError>| r.unwrap_err().status;
    assert_eq!(
        status(inst.restore("kind = \"colorization\"", &x, |_| true)),
        DaviStatus::UnsupportedOperator
    );
    assert_eq!(
        status(inst.restore("kind = \"gaussian_blur\"\nsize = 4", &x, |_| true)),
        DaviStatus::InvalidSpec
    );
    assert_eq!(
        status(inst.restore("not toml at all [", &x, |_| true)),
        DaviStatus::InvalidSpec
    );
    let outside = "kind = \"inpainting\"\n[[boxes]]\ntop = 10\nleft = 10\nheight = 10\nwidth = 2\n";
    assert_eq!(
        status(inst.restore(outside, &x, |_| true)),
        DaviStatus::InvalidSpec
    );
    let mut calls = 0;
    let r = inst.restore("kind = \"denoising\"", &x, |_| {
        calls += 1;
        calls < 2
    });
    assert_eq!(status(r), DaviStatus::Cancelled);
    assert_eq!(calls, 2, "the plugin kept reporting after the cancel");
    assert_eq!(
        inst.output_size("kind = \"super_resolution\"\nfactor = 8", 10, 7)
            .unwrap(),
        (80, 56)
    );
}

#[test]
fn four_threads_with_separate_instances_give_the_same_pixels_as_one() {
    let plugin = LoadedPlugin::open(&built_plugin()).unwrap();
    let mut x = natural(32, 24);
    add_noise(&mut x, 0.05, 11);
    let x = clamped(&x);
    let spec = SPECS[0];
    let want = plugin
        .new_instance(&PluginOptions::default())
        .unwrap()
        .restore(spec, &x, |_| true)
        .unwrap();
    let results: Vec<PlanarImage> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (plugin, x) = (plugin.clone(), &x);
                s.spawn(move || {
                    let mut inst = plugin.new_instance(&PluginOptions::default()).unwrap();
                    inst.restore(spec, x, |_| true).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        assert_eq!(r, want);
    }
}
