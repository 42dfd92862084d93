//! Helpers of the `davirestore` tests: GStreamer and plugin set-up, tiny random models, test
//! frames packed into GStreamer buffers (with the row padding GStreamer adds) and back, and
//! PSNR.
#![allow(dead_code)]

use davi_engine::weights::{LoadedModel, ModelMeta};
use davi_sdk::OperatorSpec;
use gst_video::prelude::*;
use gst_video::VideoFormat;
use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// `gst::init` and the plugin registered in-process, once per test binary.
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().expect("gst::init");
        gstdavi::plugin_register_static().expect("register the davi plugin");
    });
}

/// A fresh scratch directory of this test process under cargo's test tmpdir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("davi-gst")
        .join(std::process::id().to_string())
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A tiny random generator (down-sampling factor 2) for `operator` (`None`: any kind), with
/// its zero-initialised layers perturbed so its output depends on its input.
fn tiny_model(name: &str, operator: Option<OperatorSpec>, seed: i64) -> PathBuf {
    let meta = ModelMeta::tiny_generator(operator);
    let m = LoadedModel::random(meta, tch::Device::Cpu, seed).expect("random model");
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let r = v.randn_like() * 0.02;
            v.copy_(&(&v + r));
        }
    });
    let path = scratch(&format!("model-{name}")).join(format!("{name}.safetensors"));
    m.save(&path).expect("save tiny model");
    path
}

/// A tiny generator that names no operator (it serves every task), written once.
pub fn any_kind_model() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| tiny_model("any", None, 21))
}

/// A tiny generator trained (in name) for denoising, written once.
pub fn denoise_model() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        tiny_model(
            "denoise",
            Some(OperatorSpec::for_task("denoise").unwrap()),
            22,
        )
    })
}

/// A deterministic, smooth-plus-texture picture, `channels` interleaved u8 samples per pixel.
pub fn picture(width: usize, height: usize, channels: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(width * height * channels);
    for y in 0..height {
        for x in 0..width {
            for c in 0..channels {
                let base = 40.0 + 150.0 * (x as f64 / width as f64) + 40.0 * (y as f64 * 0.5).sin();
                let texture = 20.0 * (((x * 7 + y * 13 + c * 29) % 17) as f64 / 17.0);
                v.push((base + texture + 10.0 * c as f64).clamp(0.0, 255.0) as u8);
            }
        }
    }
    v
}

/// Bytes per pixel of a packed row of `format`.
pub fn pixel_bytes(format: VideoFormat) -> usize {
    gst_video::VideoFormatInfo::from_format(format).pixel_stride()[0] as usize
}

/// A buffer of `format` at GStreamer's default strides holding `packed` rows (tightly packed,
/// `width * pixel_bytes` bytes each).
pub fn buffer(format: VideoFormat, width: u32, height: u32, packed: &[u8]) -> gst::Buffer {
    let info = gst_video::VideoInfo::builder(format, width, height)
        .build()
        .unwrap();
    let row = width as usize * pixel_bytes(format);
    assert_eq!(packed.len(), row * height as usize);
    let mut buf = gst::Buffer::with_size(info.size()).unwrap();
    {
        let buf = buf.get_mut().unwrap();
        let mut frame = gst_video::VideoFrameRef::from_buffer_ref_writable(buf, &info).unwrap();
        let stride = frame.plane_stride()[0] as usize;
        let data = frame.plane_data_mut(0).unwrap();
        for (y, src) in packed.chunks_exact(row).enumerate() {
            data[y * stride..y * stride + row].copy_from_slice(src);
        }
    }
    buf
}

/// The packed rows of a buffer of `caps` (padding dropped).
pub fn packed(buf: &gst::Buffer, caps: &gst::Caps) -> Vec<u8> {
    let info = gst_video::VideoInfo::from_caps(caps).unwrap();
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buf.as_ref(), &info).unwrap();
    let row = info.width() as usize * pixel_bytes(info.format());
    let stride = frame.plane_stride()[0] as usize;
    let data = frame.plane_data(0).unwrap();
    (0..info.height() as usize)
        .flat_map(|y| data[y * stride..y * stride + row].iter().copied())
        .collect()
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
