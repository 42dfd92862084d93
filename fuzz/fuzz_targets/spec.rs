//! Operator-spec parser (TOML and JSON; `sdk/src/spec.rs`) and the C functions over it.
//!
//! Input: spec text (any bytes). Checks: parsing never panics; whatever parses is valid, its
//! TOML and JSON forms parse back to the same spec, and its size checks, output size and
//! default boxes never panic (boxes always inside the image); `davi_spec_parse`,
//! `davi_spec_to_text`, `davi_spec_kind` and `davi_output_size` never return
//! `DAVI_STATUS_PANIC`, and the text `davi_spec_to_text` writes parses back.
#![no_main]

use davi::{davi_output_size, davi_spec_free, davi_spec_kind, davi_spec_parse, davi_spec_to_text, DaviSpec};
use davi_fuzz::no_panic;
use davi_sdk::plugin::spec_output_size;
use davi_sdk::spec::OperatorSpec;
use davi_sdk::DaviStatus;
use libfuzzer_sys::fuzz_target;
use std::ffi::CString;
use std::ptr::null_mut;

/// Image sizes the size checks are tried with: tiny, odd, typical and extreme.
const SIZES: [usize; 8] = [1, 2, 7, 64, 256, 4096, u32::MAX as usize, usize::MAX];

fn check_parsed(spec: &OperatorSpec) {
    spec.validate().expect("a parsed spec validates");
    let toml = spec.to_toml();
    let back = OperatorSpec::from_toml(&toml).unwrap_or_else(|e| panic!("TOML {toml:?} does not parse back: {e}"));
    assert_eq!(&back, spec, "TOML round trip");
    let json = serde_json::to_string(spec).expect("JSON serialises");
    let back = OperatorSpec::from_json(&json).unwrap_or_else(|e| panic!("JSON {json:?} does not parse back: {e}"));
    assert_eq!(&back, spec, "JSON round trip");
    let _ = spec.to_string();
    let _ = spec.noise_sigma();
    for h in SIZES {
        for w in SIZES {
            if spec.validate_for_size(h, w).is_ok() {
                if let OperatorSpec::Inpainting(p) = spec {
                    for r in p.boxes_for(h, w) {
                        assert!(r.top <= h && r.left <= w && r.height <= h - r.top && r.width <= w - r.left);
                    }
                }
            }
            if let (Ok(h), Ok(w)) = (u32::try_from(h), u32::try_from(w)) {
                let _ = spec_output_size(spec, w, h);
            }
        }
    }
}

/// The same text through the C API (cut at its first NUL, as C sees it).
fn check_capi(data: &[u8]) {
    let text = match data.iter().position(|&b| b == 0) {
        Some(n) => &data[..n],
        None => data,
    };
    let text = CString::new(text).expect("no NUL left");
    let mut spec: *mut DaviSpec = null_mut();
    let mut err = [0 as std::ffi::c_char; 256];
    let s = unsafe { davi_spec_parse(text.as_ptr(), &mut spec, err.as_mut_ptr(), err.len()) };
    if no_panic(s, "davi_spec_parse") != DaviStatus::Ok {
        assert!(spec.is_null(), "out written on failure");
        return;
    }
    unsafe {
        assert!(!davi_spec_kind(spec).is_null());
        let mut len = 0usize;
        no_panic(davi_spec_to_text(spec, null_mut(), 0, &mut len), "davi_spec_to_text");
        let mut buf = vec![0 as std::ffi::c_char; len + 1];
        let s = no_panic(davi_spec_to_text(spec, buf.as_mut_ptr(), buf.len(), &mut len), "davi_spec_to_text");
        assert_eq!(s, DaviStatus::Ok);
        let mut again: *mut DaviSpec = null_mut();
        let s = no_panic(davi_spec_parse(buf.as_ptr(), &mut again, err.as_mut_ptr(), err.len()), "davi_spec_parse");
        assert_eq!(s, DaviStatus::Ok, "davi_spec_to_text's text does not parse back");
        davi_spec_free(again);
        for w in [1u32, 3, 64, 1 << 20, u32::MAX] {
            for h in [1u32, 5, 64, u32::MAX] {
                let (mut ow, mut oh) = (0u32, 0u32);
                no_panic(davi_output_size(spec, w, h, &mut ow, &mut oh), "davi_output_size");
            }
        }
        davi_spec_free(spec);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for parsed in [OperatorSpec::parse(text), OperatorSpec::from_toml(text), OperatorSpec::from_json(text)] {
            match parsed {
                Ok(spec) => check_parsed(&spec),
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }
    check_capi(data);
});
