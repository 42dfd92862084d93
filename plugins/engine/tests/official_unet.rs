//! Our U-Net against outputs of the official PyTorch `UNetModel` for the same weights and
//! input (fixtures described in tests/fixtures/golden/README.md). Tolerance 1e-4 max abs.
use davi_engine::unet::{UNetConfig, UNetModel};
use davi_engine::weights::model_file::copy_by_name;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

fn check(npz: &Path, config: &UNetConfig) -> f64 {
    let all = Tensor::read_npz(npz).expect("read golden npz");
    let mut weights = Vec::new();
    let (mut x, mut t, mut out) = (None, None, None);
    for (name, v) in all {
        match name.as_str() {
            "x" => x = Some(v),
            "t" => t = Some(v),
            "out" => out = Some(v),
            n => weights.push((n.strip_prefix("w.").expect("weight prefix").to_string(), v)),
        }
    }
    let mut vs = nn::VarStore::new(Device::Cpu);
    let net = UNetModel::new(&vs.root(), config).unwrap();
    copy_by_name(&mut vs, weights).expect("official names load strictly");
    let got = tch::no_grad(|| net.forward(&x.unwrap().to_kind(Kind::Float), &t.unwrap()));
    let want = out.unwrap();
    assert_eq!(got.size(), want.size());
    println!(
        "{}: got max {} want max {}",
        npz.display(),
        got.abs().max().double_value(&[]),
        want.abs().max().double_value(&[])
    );
    (got - want).abs().max().double_value(&[])
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/golden")
        .join(name)
}

fn small(updown: bool) -> UNetConfig {
    UNetConfig {
        image_size: 32,
        model_channels: 32,
        num_res_blocks: 1,
        channel_mult: vec![1, 2],
        attention_resolutions: if updown { vec![32, 16] } else { vec![16] },
        num_head_channels: if updown { 16 } else { -1 },
        num_heads: 4,
        resblock_updown: updown,
        ..UNetConfig::ffhq256()
    }
}

#[test]
fn matches_official_unet_resblock_updown() {
    let d = check(&fixture("small_updown.npz"), &small(true));
    assert!(d <= 1e-4, "max abs diff {d}");
}

#[test]
fn matches_official_unet_conv_resample() {
    let d = check(&fixture("small_convresample.npz"), &small(false));
    assert!(d <= 1e-4, "max abs diff {d}");
}

#[test]
#[ignore = "needs DAVI_GOLDEN_FFHQ=<npz of the official FFHQ-256 UNet> (375 MB, not committed)"]
fn matches_official_unet_ffhq256() {
    let path = std::env::var("DAVI_GOLDEN_FFHQ").expect("set DAVI_GOLDEN_FFHQ");
    let d = check(Path::new(&path), &UNetConfig::ffhq256());
    println!("ffhq256 max abs diff {d}");
    assert!(d <= 1e-4, "max abs diff {d}");
}
