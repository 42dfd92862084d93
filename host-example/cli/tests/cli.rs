//! End-to-end tests of the `davi` binary: real files in, real files out, exit codes.
use davi_engine::weights::{LoadedModel, ModelMeta};
use davi_sdk::OperatorSpec;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn davi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_davi"))
        .args(args)
        .output()
        .expect("run davi")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("davi-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny_model(dir: &Path, task: &str) -> PathBuf {
    let meta = ModelMeta::tiny_generator(Some(OperatorSpec::for_task(task).unwrap()));
    let p = dir.join(format!("{task}.safetensors"));
    LoadedModel::random(meta, tch::Device::Cpu, 0)
        .unwrap()
        .save(&p)
        .unwrap();
    p
}

fn write_rgba16(path: &Path, w: u32, h: u32) {
    let img = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::from_fn(w, h, |x, y| {
        image::Rgba([
            (x * 900) as u16,
            (y * 700) as u16,
            ((x + y) * 400) as u16,
            (1000 + x * 37 + y * 11) as u16,
        ])
    });
    img.save(path).unwrap();
}

#[test]
fn degrade_then_restore_keeps_alpha_and_depth() {
    let d = tmp("roundtrip");
    let clean = d.join("clean.png");
    write_rgba16(&clean, 64, 48);
    let small = d.join("small.png");
    let o = davi(&[
        "degrade",
        clean.to_str().unwrap(),
        "-o",
        small.to_str().unwrap(),
        "--task",
        "sr4",
        "--seed",
        "3",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = image::open(&small).unwrap();
    assert_eq!((s.width(), s.height()), (16, 12));
    assert!(matches!(s, image::DynamicImage::ImageRgba16(_)));

    let model = tiny_model(&d, "denoise");
    let noisy = d.join("noisy.png");
    assert!(davi(&[
        "degrade",
        clean.to_str().unwrap(),
        "-o",
        noisy.to_str().unwrap(),
        "--task",
        "denoise"
    ])
    .status
    .success());
    let out = d.join("out.png");
    let o = davi(&[
        "restore",
        noisy.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (a, b) = (
        image::open(&clean).unwrap().to_rgba16(),
        image::open(&out).unwrap().to_rgba16(),
    );
    assert_eq!(b.dimensions(), (64, 48));
    for (pa, pb) in a.pixels().zip(b.pixels()) {
        assert_eq!(pa[3], pb[3], "alpha must be carried through untouched");
    }

    let npy = d.join("raw.npy");
    let o = davi(&[
        "restore",
        noisy.to_str().unwrap(),
        "-o",
        npy.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--perturb-h",
        "0",
    ]);
    assert!(o.status.success());
    let bytes = std::fs::read(&npy).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let header = String::from_utf8_lossy(&bytes[10..128]);
    assert!(header.contains("'shape': (3, 48, 64)"), "{header}");
    assert_eq!(bytes.len() - 128, 3 * 48 * 64 * 4);
    // h = 0: same bytes twice
    let npy2 = d.join("raw2.npy");
    assert!(davi(&[
        "restore",
        noisy.to_str().unwrap(),
        "-o",
        npy2.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--perturb-h",
        "0",
        "--seed",
        "9"
    ])
    .status
    .success());
    assert_eq!(bytes, std::fs::read(&npy2).unwrap());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn errors_are_one_line_and_leave_nothing_behind() {
    let d = tmp("errors");
    let out = d.join("never.png");
    let o = davi(&[
        "restore",
        d.join("missing.png").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--task",
        "sr4",
        "--model",
        "/nonexistent.safetensors",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("davi: error:") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(!out.exists());

    let spec = d.join("bad.toml");
    std::fs::write(&spec, "kind = \"gaussian_blur\"\nsigam = 2\n").unwrap();
    let clean = d.join("c.png");
    write_rgba16(&clean, 32, 32);
    let o = davi(&[
        "degrade",
        clean.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--op",
        spec.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("sigam"));
    assert!(!out.exists());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn info_reports_exact_parameter_counts() {
    let o = davi(&["info", "--preset", "ffhq256"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["parameters"], 93_563_910);
    assert_eq!(v["tensors"], 362);
}

#[test]
fn pnm_and_bmp_pictures_are_read_and_written() {
    // The formats C tools and old pipelines hand around (PGM/PPM, 8 and 16 bit; BMP).
    let d = tmp("formats");
    let model = tiny_model(&d, "denoise");
    let img = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_fn(40, 32, |x, y| {
        image::Rgb([(x * 1500) as u16, (y * 2000) as u16, 30000])
    });
    let ppm16 = d.join("in16.ppm");
    img.save(&ppm16).unwrap();
    for (input, out, depth16) in [
        (ppm16.clone(), "out16.ppm", true),
        (ppm16.clone(), "out.bmp", false),
    ] {
        let out = d.join(out);
        let o = davi(&[
            "restore",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r = image::open(&out).unwrap();
        assert_eq!((r.width(), r.height()), (40, 32));
        assert_eq!(
            matches!(r, image::DynamicImage::ImageRgb16(_)),
            depth16,
            "{}",
            out.display()
        );
    }
    // PPM/PGM outputs are binary netpbm (P6/P5), not the PAM (P7) the image crate writes by
    // default, which PPM readers (Pillow, davi.py) refuse.
    let bytes = std::fs::read(d.join("out16.ppm")).unwrap();
    let header = b"P6\n40 32\n65535\n";
    assert_eq!(&bytes[..header.len()], header);
    assert_eq!(bytes.len(), header.len() + 40 * 32 * 3 * 2);
    let pgm = d.join("gray.pgm");
    image::GrayImage::from_fn(24, 16, |x, y| image::Luma([(x * 9 + y * 5) as u8]))
        .save(&pgm)
        .unwrap();
    let out = d.join("gray-out.pgm");
    let o = davi(&[
        "restore",
        pgm.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(matches!(
        image::open(&out).unwrap(),
        image::DynamicImage::ImageLuma8(_)
    ));
    let bytes = std::fs::read(&out).unwrap();
    let header = b"P5\n24 16\n255\n";
    assert_eq!(
        (&bytes[..header.len()], bytes.len()),
        (&header[..], header.len() + 24 * 16)
    );
    // Alpha has no place in PPM: refused by name (as for JPEG), nothing written.
    let rgba = d.join("rgba.png");
    image::RgbaImage::from_fn(24, 16, |x, y| {
        image::Rgba([(x * 9) as u8, (y * 5) as u8, 90, 200])
    })
    .save(&rgba)
    .unwrap();
    let out = d.join("rgba.ppm");
    let o = davi(&[
        "restore",
        rgba.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot hold the alpha channel"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn precision_runs_bf16_and_refuses_fp16_on_the_cpu() {
    let d = tmp("precision");
    let clean = d.join("clean.png");
    write_rgba16(&clean, 32, 24);
    // A tiny generator whose zero-initialised output layers are perturbed, so that its ε (and
    // so the precision it is computed in) shows in the result.
    let meta = ModelMeta::tiny_generator(Some(OperatorSpec::for_task("denoise").unwrap()));
    let net = LoadedModel::random(meta, tch::Device::Cpu, 5).unwrap();
    tch::no_grad(|| {
        for (_, mut v) in net.vs.variables() {
            let r = v.randn_like() * 0.02;
            v.copy_(&(&v + r));
        }
    });
    let model = d.join("live.safetensors");
    net.save(&model).unwrap();
    let (m, input) = (model.to_str().unwrap(), clean.to_str().unwrap());
    let restore = |precision: &str, out: &Path, stats: &Path| {
        davi(&[
            "restore",
            input,
            "-o",
            out.to_str().unwrap(),
            "--model",
            m,
            "--device",
            "cpu",
            "--perturb-h",
            "0",
            "--precision",
            precision,
            "--stats-json",
            stats.to_str().unwrap(),
        ])
    };
    let (fp32, bf16, fp16) = (d.join("fp32.npy"), d.join("bf16.npy"), d.join("fp16.npy"));
    let o = restore("fp32", &fp32, &d.join("fp32.json"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = restore("bf16", &bf16, &d.join("bf16.json"));
    if davi_engine::precision::cpu_has_bf16() {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let stats: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("bf16.json")).unwrap()).unwrap();
        assert_eq!(stats["precision"], "bf16");
        assert!(
            std::fs::read(&fp32).unwrap() != std::fs::read(&bf16).unwrap(),
            "bf16 gave the fp32 result"
        );
    } else {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("bf16 instructions"),
            "{err}"
        );
    }
    let o = restore("fp16", &fp16, &d.join("fp16.json"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("fp16") && err.contains("CUDA") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!fp16.exists());
    let o = restore("BF16", &fp16, &d.join("x.json"));
    assert_eq!(
        o.status.code(),
        Some(2),
        "clap refuses values outside fp32|bf16|fp16"
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn ensemble_runs_the_network_once_per_orientation_and_refuses_other_sizes() {
    let d = tmp("ensemble");
    let clean = d.join("clean.png");
    write_rgba16(&clean, 40, 24);
    let model = tiny_model(&d, "denoise");
    let (m, input) = (model.to_str().unwrap(), clean.to_str().unwrap());
    let restore = |n: &str, out: &Path, stats: &Path| {
        davi(&[
            "restore",
            input,
            "-o",
            out.to_str().unwrap(),
            "--model",
            m,
            "--device",
            "cpu",
            "--ensemble",
            n,
            "--stats-json",
            stats.to_str().unwrap(),
        ])
    };
    let mut pixels = Vec::new();
    for n in ["1", "8"] {
        let stats = d.join(format!("e{n}.json"));
        let o = restore(n, &d.join(format!("e{n}.png")), &stats);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
        assert_eq!(s["ensemble"], n.parse::<u64>().unwrap());
        pixels.push(s["network"]["pixels"].as_u64().unwrap());
    }
    assert_eq!(
        pixels[1],
        8 * pixels[0],
        "8 orientations, 8 times the network pixels"
    );
    let bad = d.join("e3.png");
    let o = restore("3", &bad, &d.join("e3.json"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("1, 2, 4, 8"), "{err}");
    assert!(!bad.exists());
    std::fs::remove_dir_all(&d).ok();
}
