//! PyTorch `.pt` reader (zip and legacy pickles; `plugins/engine/src/weights/torch_pickle/`).
//!
//! Input: a file's bytes. Checks: reading never panics (nor allocates beyond its budget: a
//! run is limited by libFuzzer's -rss_limit_mb); every tensor it returns owns exactly
//! `numel × element size` bytes and converts to `numel` floats; small tensors also become
//! tch tensors of their shape as `davi convert` makes them.
#![no_main]

use davi_engine::weights::torch_pickle::read_pt_tensors_from_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match read_pt_tensors_from_bytes(data) {
        Ok(tensors) => {
            for (name, t) in tensors {
                let numel = t.numel();
                assert_eq!(t.data.len(), numel * t.dtype.element_size(), "{name}: data length");
                let v = t.to_f32_vec();
                assert_eq!(v.len(), numel, "{name}: converted length");
                if numel <= 4096 {
                    let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
                    let x = tch::Tensor::from_slice(&v).reshape(shape.as_slice());
                    assert_eq!(x.numel(), numel, "{name}: tch numel");
                }
                let _ = name.len();
            }
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.root_cause();
        }
    }
});
