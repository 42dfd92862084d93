//! `davi batch`: a folder tree restored under the same relative paths, byte for byte what
//! `davi restore` writes for each file, resumable, sharded exactly once, failures counted
//! without stopping the run, ICC profile and EXIF carried (PNG, JPEG).
use davi_engine::weights::{LoadedModel, ModelMeta};
use davi_sdk::OperatorSpec;
use image::{ImageDecoder, ImageEncoder};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn davi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_davi"))
        .args(args)
        .output()
        .expect("run davi")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("davi-batch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny_model(dir: &Path) -> PathBuf {
    let meta = ModelMeta::tiny_generator(Some(OperatorSpec::for_task("denoise").unwrap()));
    let p = dir.join("denoise.safetensors");
    LoadedModel::random(meta, tch::Device::Cpu, 0)
        .unwrap()
        .save(&p)
        .unwrap();
    p
}

fn rgb8(w: u32, h: u32, k: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 5 + k * 30) as u8,
            (y * 4 + k * 7) as u8,
            ((x + y + k) * 3) as u8,
        ])
    })
}

fn save(path: &Path, img: image::DynamicImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

/// A made-up RGB ICC profile: a 128-byte header (size, `RGB ` colour space, `acsp`) and a
/// few more bytes; the encoders embed it verbatim.
fn fake_icc() -> Vec<u8> {
    let mut v = vec![0u8; 160];
    v[..4].copy_from_slice(&160u32.to_be_bytes());
    v[12..16].copy_from_slice(b"mntr");
    v[16..20].copy_from_slice(b"RGB ");
    v[20..24].copy_from_slice(b"XYZ ");
    v[36..40].copy_from_slice(b"acsp");
    for (i, b) in v[128..].iter_mut().enumerate() {
        *b = i as u8;
    }
    v
}

/// A minimal little-endian TIFF-structured EXIF block (no IFD entries), plus a marker.
fn fake_exif() -> Vec<u8> {
    let mut v = b"II*\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00".to_vec();
    v.extend_from_slice(b"davi-batch-test");
    v
}

fn with_meta<E: ImageEncoder>(mut e: E) -> E {
    e.set_icc_profile(fake_icc()).unwrap();
    e.set_exif_metadata(fake_exif()).unwrap();
    e
}

fn write_png_with_meta(path: &Path, img: &image::RgbImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut buf = Vec::new();
    let e = with_meta(image::codecs::png::PngEncoder::new(&mut buf));
    e.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    std::fs::write(path, buf).unwrap();
}

fn write_jpeg_with_meta(path: &Path, img: &image::RgbImage) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut buf = Vec::new();
    let e = with_meta(image::codecs::jpeg::JpegEncoder::new(&mut buf));
    e.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    std::fs::write(path, buf).unwrap();
}

fn read_meta(path: &Path) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let mut d = image::ImageReader::open(path)
        .unwrap()
        .with_guessed_format()
        .unwrap()
        .into_decoder()
        .unwrap();
    (d.icc_profile().unwrap(), d.exif_metadata().unwrap())
}

/// Every file under `dir` as `/`-separated relative paths (hidden ones included).
fn files(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap();
                out.insert(
                    rel.components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    out
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "status {:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn nested_tree_matches_restore_byte_for_byte_and_resumes() {
    let d = tmp("tree");
    let model = tiny_model(&d);
    let (inp, out) = (d.join("in"), d.join("out"));
    save(&inp.join("a.png"), rgb8(32, 48, 0).into());
    let rgba16 = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::from_fn(32, 48, |x, y| {
        image::Rgba([
            (x * 900) as u16,
            (y * 700) as u16,
            ((x + y) * 400) as u16,
            (1000 + x * 37 + y * 11) as u16,
        ])
    });
    save(&inp.join("sub/b.png"), rgba16.into());
    save(
        &inp.join("sub/gray.tif"),
        image::GrayImage::from_fn(48, 32, |x, y| image::Luma([(x * 3 + y * 2) as u8])).into(),
    );
    write_png_with_meta(&inp.join("sub/deeper/meta.png"), &rgb8(32, 48, 2));
    write_jpeg_with_meta(&inp.join("sub/deeper/photo.jpg"), &rgb8(48, 32, 3));
    std::fs::write(inp.join("sub/notes.txt"), "not an image").unwrap();
    let expected: BTreeSet<String> = [
        "a.png",
        "sub/b.png",
        "sub/gray.tif",
        "sub/deeper/meta.png",
        "sub/deeper/photo.jpg",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();

    let common = ["--model", s(&model), "--device", "cpu", "--seed", "5"];
    let sum = d.join("summary.json");
    let mut args = vec!["batch", s(&inp), s(&out), "--summary", s(&sum)];
    args.extend(common);
    let o = davi(&args);
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("[5/5]") && err.contains("eta"),
        "progress line: {err}"
    );
    assert!(err.contains("5 restored, 0 skipped, 0 failed"), "{err}");
    assert_eq!(
        files(&out),
        expected,
        "outputs under the same relative paths, no temporary files left"
    );
    let v = summary(&sum);
    assert_eq!(
        (v["found"].as_u64(), v["selected"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(
        (
            v["done"].as_u64(),
            v["skipped"].as_u64(),
            v["failed"].as_u64()
        ),
        (Some(5), Some(0), Some(0))
    );
    assert!(v["errors"].as_array().unwrap().is_empty() && v["seconds"].as_f64().unwrap() > 0.0);

    // Each output is what `davi restore` writes for that file with the same options.
    let single = d.join("single");
    for rel in &expected {
        let one = single.join(rel.replace('/', "_"));
        std::fs::create_dir_all(&single).unwrap();
        let mut args = vec![
            "restore".to_string(),
            inp.join(rel).to_str().unwrap().to_string(),
            "-o".into(),
            s(&one).into(),
        ];
        args.extend(common.iter().map(|a| a.to_string()));
        let o = Command::new(env!("CARGO_BIN_EXE_davi"))
            .args(&args)
            .output()
            .unwrap();
        ok(&o);
        assert_eq!(
            std::fs::read(out.join(rel)).unwrap(),
            std::fs::read(&one).unwrap(),
            "{rel} differs from davi restore"
        );
    }
    // ICC profile and EXIF carried through PNG and JPEG.
    for rel in ["sub/deeper/meta.png", "sub/deeper/photo.jpg"] {
        assert_eq!(
            read_meta(&out.join(rel)),
            (Some(fake_icc()), Some(fake_exif())),
            "{rel}"
        );
    }

    // Resume: everything is skipped; an existing output is left alone unless --overwrite.
    std::fs::write(out.join("a.png"), b"placeholder").unwrap();
    let mut args = vec!["batch", s(&inp), s(&out), "--summary", s(&sum), "--quiet"];
    args.extend(common);
    let o = davi(&args);
    ok(&o);
    assert!(
        o.stderr.is_empty(),
        "--quiet: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v = summary(&sum);
    assert_eq!(
        (
            v["done"].as_u64(),
            v["skipped"].as_u64(),
            v["failed"].as_u64()
        ),
        (Some(0), Some(5), Some(0))
    );
    assert_eq!(std::fs::read(out.join("a.png")).unwrap(), b"placeholder");
    std::fs::remove_file(out.join("sub/b.png")).unwrap();
    let o = davi(&args);
    ok(&o);
    let v = summary(&sum);
    assert_eq!(
        (v["done"].as_u64(), v["skipped"].as_u64()),
        (Some(1), Some(4)),
        "only the missing output is redone"
    );
    assert_eq!(
        std::fs::read(out.join("sub/b.png")).unwrap(),
        std::fs::read(single.join("sub_b.png")).unwrap()
    );
    args.push("--overwrite");
    let o = davi(&args);
    ok(&o);
    assert_eq!(summary(&sum)["done"].as_u64(), Some(5));
    assert_eq!(
        std::fs::read(out.join("a.png")).unwrap(),
        std::fs::read(single.join("a.png")).unwrap()
    );
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn shards_cover_every_file_exactly_once() {
    let d = tmp("shards");
    let model = tiny_model(&d);
    let inp = d.join("in");
    let mut all = BTreeSet::new();
    for k in 0..10u32 {
        let rel = if k % 3 == 0 {
            format!("x/y{k}/img{k}.png")
        } else {
            format!("img{k}.png")
        };
        save(&inp.join(&rel), rgb8(32, 48, k).into());
        all.insert(rel);
    }
    let mut seen = BTreeSet::new();
    let mut selected = 0;
    for i in 0..3 {
        let out = d.join(format!("out{i}"));
        let sum = d.join(format!("sum{i}.json"));
        let shard = format!("{i}/3");
        let o = davi(&[
            "batch",
            s(&inp),
            s(&out),
            "--model",
            s(&model),
            "--device",
            "cpu",
            "--shard",
            &shard,
            "--summary",
            s(&sum),
            "--quiet",
        ]);
        ok(&o);
        let v = summary(&sum);
        assert_eq!(v["found"].as_u64(), Some(10));
        assert_eq!(v["shard"].as_str(), Some(shard.as_str()));
        selected += v["selected"].as_u64().unwrap();
        let got = if out.exists() {
            files(&out)
        } else {
            BTreeSet::new()
        };
        assert_eq!(v["done"].as_u64(), Some(got.len() as u64));
        for f in got {
            assert!(seen.insert(f.clone()), "{f} restored by two shards");
        }
    }
    assert_eq!(seen, all, "the three shards together restore every file");
    assert_eq!(selected, 10);
    // A malformed shard is refused before anything runs.
    for bad in ["3/3", "1/0", "x"] {
        let o = davi(&[
            "batch",
            s(&inp),
            s(&d.join("never")),
            "--model",
            s(&model),
            "--shard",
            bad,
        ]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_corrupt_file_is_counted_and_the_others_are_restored() {
    let d = tmp("corrupt");
    let model = tiny_model(&d);
    let (inp, out) = (d.join("in"), d.join("out"));
    save(&inp.join("good.png"), rgb8(32, 48, 1).into());
    save(&inp.join("z/good2.png"), rgb8(48, 32, 2).into());
    std::fs::create_dir_all(inp.join("m")).unwrap();
    std::fs::write(inp.join("m/bad.png"), b"\x89PNG\r\n\x1a\nthis is not a png").unwrap();
    let sum = d.join("summary.json");
    let o = davi(&[
        "batch",
        s(&inp),
        s(&out),
        "--model",
        s(&model),
        "--device",
        "cpu",
        "--summary",
        s(&sum),
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("davi: failed: m/bad.png:"), "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("davi: error: 1 of 3 files failed"),
        "{err}"
    );
    assert_eq!(
        files(&out),
        ["good.png", "z/good2.png"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
    let v = summary(&sum);
    assert_eq!(
        (
            v["done"].as_u64(),
            v["skipped"].as_u64(),
            v["failed"].as_u64()
        ),
        (Some(2), Some(0), Some(1))
    );
    let errors = v["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["file"].as_str(), Some("m/bad.png"));
    assert!(
        errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot decode"),
        "{}",
        errors[0]
    );
    // A rerun retries only the failed file (the others are skipped) and fails again.
    let o = davi(&[
        "batch",
        s(&inp),
        s(&out),
        "--model",
        s(&model),
        "--device",
        "cpu",
        "--summary",
        s(&sum),
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v = summary(&sum);
    assert_eq!(
        (
            v["done"].as_u64(),
            v["skipped"].as_u64(),
            v["failed"].as_u64()
        ),
        (Some(0), Some(2), Some(1))
    );
    std::fs::remove_dir_all(&d).ok();
}
