//! Model-file reader (safetensors + libdavi metadata; `plugins/engine/src/weights/model_file.rs`)
//! and, for what it accepts, a restore with the loaded network.
//!
//! Input: one mode byte, then the payload.
//! - bit 0 clear: the payload is a whole model file; set: it is only the safetensors header
//!   JSON, and the harness lays out a zero-filled data section as long as the header's largest
//!   `data_offsets` end (at most 4 MiB), so mutations land on metadata, names, dtypes and
//!   shapes instead of weights.
//! - bit 1 clear: `model_file::load_bytes`, then (if it loads) `Generator::restore` of an
//!   8×8 gray or colour image with the model's own operator (denoising if it names none);
//!   set: the same bytes through `davi_context_new` (`model_bytes`) and `davi_restore`.
//!
//! Checks: nothing panics; no C call returns `DAVI_STATUS_PANIC`.
#![no_main]

use davi::{
    davi_context_free, davi_context_new, davi_context_options_init, davi_context_spec, davi_restore,
    davi_spec_free, davi_spec_new_task, DaviContext, DaviContextOptions, DaviSpec,
};
use davi_engine::generator::Generator;
use davi_engine::restore::RestoreOptions;
use davi_engine::weights::model_file;
use davi_fuzz::no_panic;
use davi_sdk::{DaviChannelLayout, DaviImage, DaviSampleType, DaviStatus, OperatorSpec, PlanarImage};
use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;
use std::ffi::c_void;
use std::ptr::{null, null_mut};
use tch::Device;

const MAX_SYNTH_DATA: u64 = 4 << 20;

/// A whole file from a header: length prefix, header, zero data up to the largest offset.
fn from_header(header: &[u8]) -> Vec<u8> {
    let mut data_len = 0u64;
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(header) {
        for (k, v) in &map {
            if k == "__metadata__" {
                continue;
            }
            if let Some(end) = v.get("data_offsets").and_then(|o| o.get(1)).and_then(|e| e.as_u64()) {
                data_len = data_len.max(end);
            }
        }
    }
    let data_len = data_len.min(MAX_SYNTH_DATA) as usize;
    let mut file = Vec::with_capacity(8 + header.len() + data_len);
    file.extend_from_slice(&(header.len() as u64).to_le_bytes());
    file.extend_from_slice(header);
    file.resize(8 + header.len() + data_len, 0);
    file
}

fn restore_in_process(model: model_file::LoadedModel, gray: bool) {
    let Ok(g) = Generator::from_model(model, Device::Cpu, "fuzzed model".into()) else { return };
    let spec = g.trained_spec().cloned().unwrap_or_else(|| OperatorSpec::for_task("denoise").unwrap());
    let c = if gray { 1 } else { 3 };
    let input = PlanarImage::from_vec(8, 8, c, (0..64 * c).map(|i| (i % 17) as f32 / 16.0).collect()).unwrap();
    let _ = g.restore(&spec, &input, &RestoreOptions::default(), &mut |_| true);
}

fn restore_through_capi(bytes: &[u8], gray: bool) {
    unsafe {
        let mut o: DaviContextOptions = std::mem::zeroed();
        no_panic(davi_context_options_init(&mut o, size_of::<DaviContextOptions>()), "davi_context_options_init");
        o.model_bytes = bytes.as_ptr();
        o.model_len = bytes.len();
        o.device = c"cpu".as_ptr();
        o.threads = 1;
        let mut ctx: *mut DaviContext = null_mut();
        let mut err = [0 as std::ffi::c_char; 512];
        let s = no_panic(davi_context_new(&o, &mut ctx, err.as_mut_ptr(), err.len()), "davi_context_new");
        if s != DaviStatus::Ok {
            return;
        }
        let mut spec: *mut DaviSpec = null_mut();
        if no_panic(davi_context_spec(ctx, &mut spec), "davi_context_spec") != DaviStatus::Ok {
            no_panic(davi_spec_new_task(c"denoise".as_ptr(), &mut spec), "davi_spec_new_task");
        }
        let layout = if gray { DaviChannelLayout::Gray } else { DaviChannelLayout::Rgb };
        let c = layout.channels();
        let mut pixels: Vec<u8> = (0..64 * c).map(|i| (i * 37 % 256) as u8).collect();
        let input = DaviImage::new(8, 8, DaviSampleType::U8, layout, 8 * c as isize, pixels.as_mut_ptr().cast::<c_void>());
        // Room for the largest output (8× super-resolution of a colour image).
        let mut out = vec![0u8; 64 * 64 * 3];
        let (mut ow, mut oh) = (0u32, 0u32);
        if no_panic(davi::davi_output_size(spec, 8, 8, &mut ow, &mut oh), "davi_output_size") == DaviStatus::Ok
            && ow <= 64
            && oh <= 64
        {
            let colorization = std::ffi::CStr::from_ptr(davi::davi_spec_kind(spec)) == c"colorization";
            let out_layout = if gray && !colorization {
                DaviChannelLayout::Gray
            } else {
                DaviChannelLayout::Rgb
            };
            let oc = out_layout.channels();
            let output = DaviImage::new(ow, oh, DaviSampleType::U8, out_layout, (ow as usize * oc) as isize, out.as_mut_ptr().cast());
            no_panic(davi_restore(ctx, &input, &output as *const DaviImage as *mut DaviImage, spec, null()), "davi_restore");
        }
        davi_spec_free(spec);
        davi_context_free(ctx);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else { return };
    let bytes: Cow<[u8]> = if mode & 1 == 0 { Cow::Borrowed(payload) } else { Cow::Owned(from_header(payload)) };
    let gray = mode & 4 != 0;
    if mode & 2 == 0 {
        match model_file::load_bytes(&bytes, Device::Cpu) {
            Ok(model) => restore_in_process(model, gray),
            Err(e) => {
                let _ = e.to_string();
            }
        }
    } else {
        restore_through_capi(&bytes, gray);
    }
});
