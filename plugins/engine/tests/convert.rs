//! Official-style PyTorch checkpoints, written by the pinned PyTorch at test time
//! (tests/fixtures/make_unet_pt.py, from the golden U-Net weights), convert into model files
//! by name and reproduce the official output; a mis-shaped tensor is refused by name.
use davi_engine::diffusion::BetaSchedule;
use davi_engine::unet::UNetConfig;
use davi_engine::weights::{convert, model_file, ModelMeta, ModelRole};
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    let out = std::env::temp_dir().join(format!("davi-convert-{}", std::process::id()));
    let py = root().join(".venv/bin/python");
    assert!(
        py.exists(),
        "the project venv is missing: run scripts/setup.sh (scripts/test.sh does)"
    );
    let st = Command::new(py)
        .arg(root().join("tests/fixtures/make_unet_pt.py"))
        .arg(root().join("tests/fixtures/golden/small_updown.npz"))
        .arg(&out)
        .status()
        .expect("run python");
    assert!(st.success(), "fixture script failed");
    out
}

fn meta() -> ModelMeta {
    ModelMeta {
        role: ModelRole::Prior,
        unet: UNetConfig {
            image_size: 32,
            model_channels: 32,
            num_res_blocks: 1,
            channel_mult: vec![1, 2],
            attention_resolutions: vec![32, 16],
            num_head_channels: 16,
            ..UNetConfig::ffhq256()
        },
        schedule: BetaSchedule::I2sb,
        diffusion_steps: 1000,
        operator: None,
        perturb_h: None,
        restore_tile: None,
        measurement_denoiser: None,
        restore_window: None,
        provenance: serde_json::json!({}),
    }
}

fn golden() -> (Tensor, Tensor, Tensor) {
    let all = Tensor::read_npz(root().join("tests/fixtures/golden/small_updown.npz")).unwrap();
    let get = |n: &str| all.iter().find(|(k, _)| k == n).unwrap().1.shallow_clone();
    (get("x").to_kind(Kind::Float), get("t"), get("out"))
}

#[test]
fn official_checkpoints_convert_by_name() {
    let dir = fixtures();
    let (x, t, want) = golden();
    for name in ["state_dict.pt", "state_dict_legacy.pt", "davi_ema.pt"] {
        let out = dir.join(format!("{name}.safetensors"));
        convert::convert(&dir.join(name), &out, &meta()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let m = model_file::load(&out, Device::Cpu).unwrap();
        let got = tch::no_grad(|| m.net.forward(&x, &t));
        let d = (got - &want).abs().max().double_value(&[]);
        assert!(d <= 1e-4, "{name}: max |diff| {d}");
    }
    let e = convert::convert(
        &dir.join("misshaped.pt"),
        &dir.join("bad.safetensors"),
        &meta(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("out.2.weight"), "{e}");
    assert!(
        !dir.join("bad.safetensors").exists(),
        "nothing written on failure"
    );
    // a checkpoint for another architecture names the first offending tensor
    let mut other = meta();
    other.unet.model_channels = 64;
    let e = convert::convert(
        &dir.join("state_dict.pt"),
        &dir.join("bad2.safetensors"),
        &other,
    )
    .unwrap_err();
    assert!(e.to_string().contains("tensor `"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
