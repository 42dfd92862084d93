//! Failing calls leave nothing behind: 1,000 rounds of every kind of failing C API call a host
//! meets — spec text that does not parse, a handle of the wrong kind, invalid image
//! descriptors, non-finite pixels, model bytes that are garbage or fail the tensor check, an
//! operator the model was not trained for, restores cancelled before and after the network
//! ran — keep the process's resident memory (`/proc/self/statm`) within 8 MiB of where it
//! was after 100 rounds of warm-up.
//!
//! Each failing call carries a large payload (64 KiB of spec text, a 128×128 float image,
//! about 1 MB of model bytes, which the library copies), so leaking any of it on every call
//! would grow memory by tens of MiB or more over the 900 measured rounds, far past the bound;
//! the bound itself leaves room for the allocator's and libtorch's own bookkeeping.
//!
//! The test is alone in its binary: resident memory is per process, and a test running
//! beside it would move it.
mod common;

use common::*;
use davi::*;
use davi_sdk::{DaviChannelLayout as L, DaviImage, DaviSampleType as T, DaviStatus as S};
use serde_json::json;
use std::ffi::{c_char, c_int, c_long, CString};
use std::ptr::{null, null_mut};

const ROUNDS: usize = 1000;
const WARM_UP: usize = 100;
const BOUND: usize = 8 << 20;

extern "C" {
    fn sysconf(name: c_int) -> c_long;
}

/// Resident set size in bytes: the second field of `/proc/self/statm`, in pages.
fn rss_bytes() -> usize {
    const SC_PAGESIZE: c_int = 30; // Linux
    let page = unsafe { sysconf(SC_PAGESIZE) } as usize;
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * page
}

/// `davi_context_new` on model bytes: the status (the context, if any, is freed).
fn context_from_bytes(bytes: &[u8]) -> S {
    let mut o = context_options();
    o.model_bytes = bytes.as_ptr();
    o.model_len = bytes.len();
    let mut err = [0 as c_char; 256];
    let mut ctx = null_mut();
    let st = unsafe { davi_context_new(&o, &mut ctx, err.as_mut_ptr(), err.len()) };
    unsafe { davi_context_free(ctx) };
    st
}

#[test]
fn a_thousand_rounds_of_failing_calls_do_not_grow_resident_memory() {
    let any = context(any_kind_model());
    let denoiser = context(denoise_model());
    let (denoise, deblur) = (spec("denoise"), spec("deblur"));

    let bad_spec = CString::new(format!("kind = \"nope\"\n# {}\n", "x".repeat(64 << 10))).unwrap();
    let garbage: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let mis_shaped = edited_model(&std::fs::read(denoise_model()).unwrap(), |_, h| {
        h["out.2.weight"]["shape"] = json!([6, 32, 9, 1])
    });
    // 128x128 RGB float with one NaN in the last sample: read in full before it is refused.
    let (w, h) = (128usize, 128usize);
    let mut nan_pixels = vec![0.5f32; w * h * 3];
    *nan_pixels.last_mut().unwrap() = f32::NAN;
    let mut small = picture_u8(32, 32, 3);
    let mut small_out = vec![0u8; 32 * 32 * 3];

    let mut trace = Vec::new();
    let mut warm = 0;
    for round in 1..=ROUNDS {
        // Spec text that does not parse (the message goes to the caller's buffer).
        let mut s = null_mut();
        let mut err = [0 as c_char; 256];
        let st = unsafe { davi_spec_parse(bad_spec.as_ptr(), &mut s, err.as_mut_ptr(), err.len()) };
        assert_eq!((st, s.is_null()), (S::InvalidSpec, true));

        // A spec handle where a context is expected.
        let wrong = denoise.0.cast::<DaviContext>();
        let st = unsafe { davi_context_last_error(wrong, err.as_mut_ptr(), err.len(), null_mut()) };
        assert_eq!(st, S::InvalidArgument);
        let img = DaviImage::new(32, 32, T::U8, L::Rgb, 96, small.as_mut_ptr().cast());
        let mut out = DaviImage::new(32, 32, T::U8, L::Rgb, 96, small_out.as_mut_ptr().cast());
        let st = unsafe { davi_restore(wrong, &img, &mut out, denoise.0, null()) };
        assert_eq!(st, S::InvalidArgument);

        // Invalid descriptors: a stride shorter than a row, and an empty image.
        let short = DaviImage::new(32, 32, T::U8, L::Rgb, 95, small.as_mut_ptr().cast());
        assert_eq!(
            unsafe { davi_restore(any.0, &short, &mut out, denoise.0, null()) },
            S::InvalidArgument
        );
        let empty = DaviImage::new(0, 32, T::U8, L::Rgb, 96, small.as_mut_ptr().cast());
        assert_eq!(
            unsafe { davi_restore(any.0, &empty, &mut out, denoise.0, null()) },
            S::InvalidArgument
        );

        // A float image with a NaN sample.
        let nan = DaviImage::new(
            w as u32,
            h as u32,
            T::F32,
            L::Rgb,
            (w * 12) as isize,
            nan_pixels.as_mut_ptr().cast(),
        );
        let mut nan_out = nan;
        assert_eq!(
            unsafe { davi_restore(any.0, &nan, &mut nan_out, denoise.0, null()) },
            S::InvalidArgument
        );

        // Model bytes: not a model at all, and a model with a mis-shaped tensor.
        assert_eq!(context_from_bytes(&garbage), S::ModelError);
        assert_eq!(context_from_bytes(&mis_shaped), S::ModelError);

        // An operator the model was not trained for.
        assert_eq!(
            unsafe { davi_restore(denoiser.0, &img, &mut out, deblur.0, null()) },
            S::UnsupportedOperator
        );

        // Cancelled before the first tile, and after the network ran (at the last report).
        for stop_at in [1, 2] {
            let mut calls = 0;
            let mut f = |_: f32| {
                calls += 1;
                calls < stop_at
            };
            let mut p: Progress = &mut f;
            let mut o = restore_options(16, 4, 0);
            set_progress(&mut o, &mut p);
            assert_eq!(
                unsafe { davi_restore(any.0, &img, &mut out, denoise.0, &o) },
                S::Cancelled
            );
        }

        if round == WARM_UP {
            warm = rss_bytes();
        }
        if round % 100 == 0 {
            trace.push((round, rss_bytes()));
        }
    }
    let last = trace.last().unwrap().1;
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    let trace: Vec<String> = trace
        .iter()
        .map(|(r, b)| format!("{r}: {:.1}", mib(*b)))
        .collect();
    eprintln!("resident MiB after rounds {}", trace.join(", "));
    assert!(
        last < warm + BOUND,
        "resident memory grew by {:.1} MiB over {} rounds of failing calls after warm-up ({})",
        mib(last - warm),
        ROUNDS - WARM_UP,
        trace.join(", ")
    );
}
