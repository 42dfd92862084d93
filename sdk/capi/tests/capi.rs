//! The C API called in-process through the crate's rlib, exactly as C calls it: every refusal
//! returns its status and leaves outputs untouched; layouts, strides, sample types, alpha,
//! aliasing, threads, cancellation and the engine plugin agree on the pixels.
mod common;

use common::*;
use davi::*;
use davi_sdk::image::{AlphaPlane, AlphaSamples};
use davi_sdk::{DaviChannelLayout as L, DaviImage, DaviSampleType as T, DaviStatus as S};
use std::ffi::{c_char, c_void, CStr, CString};
use std::mem::{offset_of, size_of};
use std::os::unix::ffi::OsStrExt;
use std::ptr::{null, null_mut};

fn image<U>(buf: &mut [U], w: usize, h: usize, t: T, l: L, stride: isize) -> DaviImage {
    DaviImage::new(w as u32, h as u32, t, l, stride, buf.as_mut_ptr().cast())
}

/// Restore a packed u8 image into a new packed u8 image of layout `out_layout`.
#[allow(clippy::too_many_arguments)]
fn restore_u8(
    ctx: &Ctx,
    spec: &Spec,
    input: &[u8],
    (w, h): (usize, usize),
    in_layout: L,
    out_layout: L,
    (ow, oh): (usize, usize),
    opts: Option<&DaviRestoreOptions>,
) -> (S, Vec<u8>) {
    let mut src = input.to_vec();
    let ic = in_layout_channels(in_layout);
    let oc = in_layout_channels(out_layout);
    let mut out = vec![0xA5u8; ow * oh * oc];
    let i = image(&mut src, w, h, T::U8, in_layout, (w * ic) as isize);
    let mut o = image(&mut out, ow, oh, T::U8, out_layout, (ow * oc) as isize);
    let st = unsafe {
        davi_restore(
            ctx.0,
            &i,
            &mut o,
            spec.0,
            opts.map_or(null(), |p| p as *const _),
        )
    };
    assert_eq!(src, input, "the input was modified");
    (st, out)
}

fn in_layout_channels(l: L) -> usize {
    match l {
        L::Gray => 1,
        L::GrayAlpha => 2,
        L::Rgb => 3,
        L::Rgba => 4,
    }
}

fn untouched(buf: &[u8]) -> bool {
    buf.iter().all(|b| *b == 0xA5)
}

// ---------------------------------------------------------------------------------------------
// ABI layout, versions, statuses

#[test]
fn abi_1_layouts_are_pinned() {
    let p = size_of::<usize>();
    assert_eq!(offset_of!(DaviContextOptions, struct_size), 0);
    assert_eq!(offset_of!(DaviContextOptions, threads), 4);
    assert_eq!(offset_of!(DaviContextOptions, model_path), 8);
    assert_eq!(offset_of!(DaviContextOptions, model_bytes), 8 + p);
    assert_eq!(offset_of!(DaviContextOptions, model_len), 8 + 2 * p);
    assert_eq!(offset_of!(DaviContextOptions, task), 8 + 3 * p);
    assert_eq!(offset_of!(DaviContextOptions, device), 8 + 4 * p);
    // ABI 4 appended `precision`: the ABI 1 struct is everything before it.
    assert_eq!(offset_of!(DaviContextOptions, precision), 8 + 5 * p);
    assert_eq!(size_of::<DaviContextOptions>(), 8 + 6 * p);
    assert_eq!(offset_of!(DaviRestoreOptions, tile), 4);
    assert_eq!(offset_of!(DaviRestoreOptions, overlap), 8);
    // ABI 5 gave the padding field `reserved` its meaning: `ensemble`.
    assert_eq!(offset_of!(DaviRestoreOptions, ensemble), 12);
    assert_eq!(offset_of!(DaviRestoreOptions, perturb_h), 16);
    assert_eq!(offset_of!(DaviRestoreOptions, seed), 24);
    assert_eq!(offset_of!(DaviRestoreOptions, progress), 32);
    assert_eq!(offset_of!(DaviRestoreOptions, user_data), 32 + p);
    assert_eq!(size_of::<DaviRestoreOptions>(), 32 + 2 * p);
    assert_eq!(size_of::<DaviStatus>(), 4);
    // The progress type is the plugin contract's, so hosts can pass one callback to both.
    let f: davi_sdk::plugin::DaviProgressFn = None::<unsafe extern "C" fn(*mut c_void, f32) -> i32>;
    let _same: DaviProgressFn = f;
}

#[test]
fn status_strings_are_static_distinct_and_total() {
    let mut seen = std::collections::HashSet::new();
    for code in 0..=16 {
        let s = unsafe { CStr::from_ptr(davi_status_string(code)) }
            .to_str()
            .unwrap();
        assert!(seen.insert(s), "duplicate status string {s}");
        assert_eq!(Some(s), DaviStatus::from_code(code).map(|s| s.as_str()));
    }
    for code in [-1, 17, 9999] {
        assert_eq!(
            unsafe { CStr::from_ptr(davi_status_string(code)) },
            c"unknown status"
        );
    }
    assert_eq!(S::Ok as i32, 0);
    assert_eq!(S::Cancelled as i32, 8);
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[test]
fn null_arguments_are_refused_with_null_argument() {
    let ctx = context(any_kind_model());
    let sp = spec("denoise");
    let mut buf = picture_u8(8, 8, 3);
    let mut out = vec![0xA5u8; buf.len()];
    let i = image(&mut buf, 8, 8, T::U8, L::Rgb, 24);
    let mut o = image(&mut out, 8, 8, T::U8, L::Rgb, 24);
    unsafe {
        assert_eq!(
            davi_restore(null_mut(), &i, &mut o, sp.0, null()),
            S::NullArgument
        );
        assert_eq!(
            davi_restore(ctx.0, null(), &mut o, sp.0, null()),
            S::NullArgument
        );
        assert!(ctx.last_error().contains("input"), "{}", ctx.last_error());
        assert_eq!(
            davi_restore(ctx.0, &i, null_mut(), sp.0, null()),
            S::NullArgument
        );
        assert_eq!(
            davi_restore(ctx.0, &i, &mut o, null(), null()),
            S::NullArgument
        );
        assert!(ctx.last_error().contains("spec"));
        // A descriptor whose data pointer is NULL.
        let mut nodata = o;
        nodata.data = null_mut();
        assert_eq!(
            davi_restore(ctx.0, &i, &mut nodata, sp.0, null()),
            S::NullArgument
        );
        assert!(untouched(&out));

        let mut c = null_mut();
        assert_eq!(
            davi_context_new(null(), &mut c, null_mut(), 0),
            S::NullArgument
        );
        let opts = context_options();
        assert_eq!(
            davi_context_new(&opts, null_mut(), null_mut(), 0),
            S::NullArgument
        );
        assert_eq!(davi_context_options_init(null_mut(), 64), S::NullArgument);
        assert_eq!(davi_restore_options_init(null_mut(), 64), S::NullArgument);
        let mut s = null_mut();
        assert_eq!(davi_spec_new_task(null(), &mut s), S::NullArgument);
        assert_eq!(
            davi_spec_new_task(c"sr4".as_ptr(), null_mut()),
            S::NullArgument
        );
        assert_eq!(
            davi_spec_parse(null(), &mut s, null_mut(), 0),
            S::NullArgument
        );
        assert!(s.is_null());
        let (mut w, mut h) = (0u32, 0u32);
        assert_eq!(
            davi_output_size(null(), 4, 4, &mut w, &mut h),
            S::NullArgument
        );
        assert_eq!(
            davi_output_size(sp.0, 4, 4, null_mut(), &mut h),
            S::NullArgument
        );
        assert_eq!((w, h), (0, 0));
        assert_eq!(davi_spec_set_noise_sigma(null_mut(), 0.1), S::NullArgument);
        assert_eq!(davi_spec_add_box(null_mut(), 0, 0, 1, 1), S::NullArgument);
        assert!(davi_spec_kind(null()).is_null());
        assert_eq!(
            davi_context_last_error(null(), null_mut(), 0, null_mut()),
            S::NullArgument
        );
        let mut spec_out = null_mut();
        assert_eq!(davi_context_spec(null(), &mut spec_out), S::NullArgument);
        assert_eq!(davi_context_spec(ctx.0, null_mut()), S::NullArgument);
        // Freeing NULL is fine.
        davi_context_free(null_mut());
        davi_spec_free(null_mut());
    }
}

#[test]
fn zero_overflowing_and_mismatched_sizes_are_refused() {
    let ctx = context(any_kind_model());
    let sp = spec("denoise");
    let mut buf = picture_u8(8, 8, 3);
    let mut out = vec![0xA5u8; buf.len()];
    unsafe {
        for (w, h) in [(0, 8), (8, 0)] {
            let i = image(&mut buf, w, h, T::U8, L::Rgb, 24);
            let mut o = image(&mut out, 8, 8, T::U8, L::Rgb, 24);
            assert_eq!(
                davi_restore(ctx.0, &i, &mut o, sp.0, null()),
                S::InvalidArgument
            );
            assert!(ctx.last_error().contains("empty"), "{}", ctx.last_error());
        }
        // u32::MAX x u32::MAX float RGBA cannot be addressed.
        let mut i = image(&mut buf, 8, 8, T::F32, L::Rgba, isize::MAX);
        (i.width, i.height) = (u32::MAX, u32::MAX);
        let mut o = image(&mut out, 8, 8, T::U8, L::Rgb, 24);
        assert_eq!(
            davi_restore(ctx.0, &i, &mut o, sp.0, null()),
            S::InvalidArgument
        );
        assert!(
            ctx.last_error().contains("overflow"),
            "{}",
            ctx.last_error()
        );
        // An output of the wrong size for the operator.
        let i = image(&mut buf, 8, 8, T::U8, L::Rgb, 24);
        let mut o = image(&mut out, 4, 8, T::U8, L::Rgb, 12);
        assert_eq!(
            davi_restore(ctx.0, &i, &mut o, sp.0, null()),
            S::InvalidArgument
        );
        assert!(
            ctx.last_error().contains("produces 8x8"),
            "{}",
            ctx.last_error()
        );
        let sr = spec("sr8");
        let (mut w, mut h) = (0, 0);
        assert_eq!(
            davi_output_size(sr.0, u32::MAX, 2, &mut w, &mut h),
            S::InvalidArgument
        );
        assert_eq!(
            davi_output_size(sr.0, 0, 2, &mut w, &mut h),
            S::InvalidArgument
        );
        assert_eq!((w, h), (0, 0));
        assert_eq!(davi_output_size(sr.0, 3, 2, &mut w, &mut h), S::Ok);
        assert_eq!((w, h), (24, 16));
    }
    assert!(untouched(&out));
}

#[test]
fn strides_smaller_than_a_row_misalignment_and_bad_formats_are_refused() {
    let ctx = context(any_kind_model());
    let sp = spec("denoise");
    let mut buf = picture_u8(8, 8, 3);
    let mut out = vec![0xA5u8; 8 * 8 * 3];
    unsafe {
        for stride in [23isize, -23, 0] {
            let i = image(&mut buf, 8, 8, T::U8, L::Rgb, stride);
            let mut o = image(&mut out, 8, 8, T::U8, L::Rgb, 24);
            assert_eq!(
                davi_restore(ctx.0, &i, &mut o, sp.0, null()),
                S::InvalidArgument,
                "stride {stride}"
            );
            let msg = ctx.last_error();
            assert!(
                msg.contains("input image") && msg.contains("stride"),
                "{msg}"
            );
        }
        let i = image(&mut buf, 8, 8, T::U8, L::Rgb, 24);
        let mut o = image(&mut out, 8, 8, T::U8, L::Rgb, 20);
        assert_eq!(
            davi_restore(ctx.0, &i, &mut o, sp.0, null()),
            S::InvalidArgument
        );
        assert!(
            ctx.last_error().contains("output image"),
            "{}",
            ctx.last_error()
        );
        // u16 samples at an odd address.
        let mut wide = vec![0u16; 8 * 8 * 3 + 1];
        let mut odd = image(&mut wide, 8, 8, T::U16, L::Rgb, 48);
        odd.data = odd.data.cast::<u8>().add(1).cast();
        let mut o = image(&mut out, 8, 8, T::U8, L::Rgb, 24);
        assert_eq!(
            davi_restore(ctx.0, &odd, &mut o, sp.0, null()),
            S::InvalidArgument
        );
        // Unknown enum values and flags are unsupported formats, small struct sizes invalid.
        let mut bad = image(&mut buf, 8, 8, T::U8, L::Rgb, 24);
        bad.sample_type = 7;
        assert_eq!(
            davi_restore(ctx.0, &bad, &mut o, sp.0, null()),
            S::UnsupportedFormat
        );
        bad.sample_type = 0;
        bad.layout = 9;
        assert_eq!(
            davi_restore(ctx.0, &bad, &mut o, sp.0, null()),
            S::UnsupportedFormat
        );
        bad.layout = L::Rgb as u32;
        bad.flags = 1;
        assert_eq!(
            davi_restore(ctx.0, &bad, &mut o, sp.0, null()),
            S::UnsupportedFormat
        );
        bad.flags = 0;
        bad.struct_size = 8;
        assert_eq!(
            davi_restore(ctx.0, &bad, &mut o, sp.0, null()),
            S::InvalidArgument
        );
    }
    assert!(untouched(&out));
}

#[test]
fn bad_options_are_refused() {
    let ctx = context(any_kind_model());
    let sp = spec("denoise");
    let input = picture_u8(8, 8, 3);
    let run = |o: &DaviRestoreOptions| {
        restore_u8(&ctx, &sp, &input, (8, 8), L::Rgb, L::Rgb, (8, 8), Some(o))
    };
    let mut o = restore_options(16, 4, 0);
    o.struct_size = 8;
    assert_eq!(run(&o).0, S::InvalidArgument);
    assert!(
        ctx.last_error().contains("struct_size"),
        "{}",
        ctx.last_error()
    );
    for bad in [3, 16, u32::MAX] {
        let mut o = restore_options(16, 4, 0);
        o.ensemble = bad;
        assert_eq!(run(&o).0, S::InvalidArgument);
        assert!(
            ctx.last_error().contains("ensemble"),
            "{}",
            ctx.last_error()
        );
    }
    for good in [0, 1, 2, 4, 8] {
        let mut o = restore_options(16, 4, 0);
        o.ensemble = good;
        assert_eq!(run(&o).0, S::Ok, "ensemble {good}: {}", ctx.last_error());
    }
    for h in [-0.1, f64::INFINITY] {
        let mut o = restore_options(16, 4, 0);
        o.perturb_h = h;
        assert_eq!(run(&o).0, S::InvalidArgument);
    }
    // Tiles must be a multiple of the model's factor (2 here) and larger than the overlap.
    let (st, out) = run(&restore_options(15, 4, 0));
    assert_eq!(st, S::InvalidArgument);
    assert!(
        ctx.last_error().contains("multiple of 2"),
        "{}",
        ctx.last_error()
    );
    assert!(untouched(&out));
    assert_eq!(run(&restore_options(16, 16, 0)).0, S::InvalidArgument);
    let mut small = std::mem::MaybeUninit::<DaviRestoreOptions>::uninit();
    assert_eq!(
        unsafe { davi_restore_options_init(small.as_mut_ptr(), 8) },
        S::InvalidArgument
    );
    let o = restore_options(0, 0, 0);
    assert!(o.perturb_h.is_nan() && o.struct_size as usize == size_of::<DaviRestoreOptions>());
}

#[test]
fn bad_specs_and_unknown_operator_kinds_are_refused() {
    let parse = |text: &str| {
        let t = CString::new(text).unwrap();
        let mut s = null_mut();
        let mut err = [0 as c_char; 256];
        let st = unsafe { davi_spec_parse(t.as_ptr(), &mut s, err.as_mut_ptr(), err.len()) };
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        if st != S::Ok {
            assert!(s.is_null(), "out written on failure");
        }
        (st, Spec(s), msg)
    };
    let (st, _, msg) = parse("kind = \"denoising\"\nnoise_sigma = ");
    assert_eq!(st, S::InvalidSpec);
    assert!(msg.contains("TOML"), "{msg}");
    let (st, _, msg) = parse("kind = \"gaussian_blur\"\nsigam = 3.0");
    assert_eq!(st, S::InvalidSpec);
    assert!(msg.contains("sigam"), "{msg}");
    let (st, _, msg) = parse("{\"kind\": \"super_resolution\", \"factor\": 3}");
    assert_eq!(st, S::InvalidSpec);
    assert!(msg.contains("factor"), "{msg}");
    // An unknown kind is a spec error naming it, from text and from a task name alike.
    let (st, _, msg) = parse("kind = \"warp\"");
    assert_eq!(st, S::InvalidSpec);
    assert!(msg.contains("warp"), "{msg}");
    let mut s = null_mut();
    assert_eq!(
        unsafe { davi_spec_new_task(c"warp".as_ptr(), &mut s) },
        S::InvalidSpec
    );
    assert!(s.is_null());
    let (st, good, _) = parse("kind = \"gaussian_blur\"\nsigma = 1.5\nsize = 9\n");
    assert_eq!(st, S::Ok);
    assert_eq!(
        unsafe { CStr::from_ptr(davi_spec_kind(good.0)) },
        c"gaussian_blur"
    );

    // A known kind the context's model was not trained for.
    let ctx = context(denoise_model());
    let sr = spec("sr2");
    let input = picture_u8(8, 8, 3);
    let (st, out) = restore_u8(&ctx, &sr, &input, (8, 8), L::Rgb, L::Rgb, (16, 16), None);
    assert_eq!(st, S::UnsupportedOperator);
    assert!(
        ctx.last_error()
            .contains("restores denoising, not super_resolution"),
        "{}",
        ctx.last_error()
    );
    assert!(untouched(&out));
    // Boxes outside the image are a spec error at restore time.
    let inpaint = spec("inpaint");
    assert_eq!(unsafe { davi_spec_add_box(inpaint.0, 6, 6, 4, 4) }, S::Ok);
    let any = context(any_kind_model());
    let (st, out) = restore_u8(&any, &inpaint, &input, (8, 8), L::Rgb, L::Rgb, (8, 8), None);
    assert_eq!(st, S::InvalidSpec);
    assert!(
        any.last_error().contains("boxes[0]"),
        "{}",
        any.last_error()
    );
    assert!(untouched(&out));
}

unsafe extern "C" fn record_and_cancel_at(user: *mut c_void, fraction: f32) -> i32 {
    let (calls, stop_at) = &mut *user.cast::<(Vec<f32>, usize)>();
    calls.push(fraction);
    (calls.len() >= *stop_at) as i32
}

#[test]
fn a_cancelling_callback_stops_the_restore_and_leaves_the_output_untouched() {
    let ctx = context(any_kind_model());
    let sp = spec("denoise");
    let input = picture_u8(40, 24, 3);
    // Cancel before the first tile, and at the report after the last one (the six tiles run
    // in one batched network call): neither may write the output.
    for stop_at in [1usize, 2] {
        let mut state: (Vec<f32>, usize) = (Vec::new(), stop_at);
        let mut o = restore_options(16, 4, 0);
        o.progress = Some(record_and_cancel_at);
        o.user_data = (&mut state as *mut (Vec<f32>, usize)).cast();
        let (st, out) = restore_u8(
            &ctx,
            &sp,
            &input,
            (40, 24),
            L::Rgb,
            L::Rgb,
            (40, 24),
            Some(&o),
        );
        assert_eq!(st, S::Cancelled);
        assert!(untouched(&out), "output written after a cancel");
        assert_eq!(
            state.0.len(),
            stop_at,
            "the callback was called again after cancelling"
        );
        assert!(ctx.last_error().contains("cancelled"));
    }
    // Without cancelling: fractions never decrease, start at 0 and end at 1. 200x200 in
    // 16-pixel tiles is 17x17 = 289 tiles, more than one batched network call holds (256).
    let big = picture_u8(200, 200, 3);
    let mut state: (Vec<f32>, usize) = (Vec::new(), usize::MAX);
    let mut o = restore_options(16, 4, 0);
    o.progress = Some(record_and_cancel_at);
    o.user_data = (&mut state as *mut (Vec<f32>, usize)).cast();
    let (st, _) = restore_u8(
        &ctx,
        &sp,
        &big,
        (200, 200),
        L::Rgb,
        L::Rgb,
        (200, 200),
        Some(&o),
    );
    assert_eq!(st, S::Ok);
    assert_eq!(
        state.0.len(),
        3,
        "expected a call before each of the two batches and one at the end, got {:?}",
        state.0
    );
    assert_eq!(state.0.first(), Some(&0.0));
    assert_eq!(state.0.last(), Some(&1.0));
    assert!(state.0.windows(2).all(|w| w[0] <= w[1]), "{:?}", state.0);
    assert_eq!(ctx.last_error(), "", "a success clears the last error");
}

struct Reentry {
    ctx: *mut DaviContext,
    spec: *const DaviSpec,
    status: Option<S>,
}

unsafe extern "C" fn restore_again(user: *mut c_void, _fraction: f32) -> i32 {
    let r = &mut *user.cast::<Reentry>();
    if r.status.is_none() {
        let mut px = [0u8; 12];
        let i = DaviImage::new(2, 2, T::U8, L::Rgb, 6, px.as_mut_ptr().cast());
        let mut o = i;
        r.status = Some(davi_restore(r.ctx, &i, &mut o, r.spec, null()));
    }
    0
}

#[test]
fn a_restore_from_a_progress_callback_on_its_busy_context_fails_as_busy_instead_of_deadlocking() {
    let ctx = context(any_kind_model());
    let sp = spec("denoise");
    let mut state = Reentry {
        ctx: ctx.0,
        spec: sp.0,
        status: None,
    };
    let mut o = restore_options(16, 4, 0);
    o.progress = Some(restore_again);
    o.user_data = (&mut state as *mut Reentry).cast();
    let (st, _) = restore_u8(
        &ctx,
        &sp,
        &picture_u8(8, 8, 3),
        (8, 8),
        L::Rgb,
        L::Rgb,
        (8, 8),
        Some(&o),
    );
    assert_eq!(st, S::Ok);
    assert_eq!(state.status, Some(S::Busy));
}

// ---------------------------------------------------------------------------------------------
// Contexts and last errors

#[test]
fn context_creation_reports_why_it_failed() {
    let path = CString::new(any_kind_model().as_os_str().as_bytes()).unwrap();
    let mut o = context_options();
    let (st, _, msg) = try_context(&o);
    assert_eq!(st, S::InvalidArgument);
    assert!(msg.contains("no model"), "{msg}");
    o.model_path = path.as_ptr();
    o.task = c"denoise".as_ptr();
    assert_eq!(try_context(&o).0, S::InvalidArgument);
    o.task = null();
    o.device = c"gpu".as_ptr();
    let (st, _, msg) = try_context(&o);
    assert_eq!(st, S::DeviceError);
    assert!(msg.contains("gpu"), "{msg}");
    o.device = c"cuda:7".as_ptr();
    assert_eq!(try_context(&o).0, S::DeviceError);
    o.device = c"cpu".as_ptr();
    o.struct_size = 4;
    let (st, _, msg) = try_context(&o);
    assert_eq!(st, S::InvalidArgument);
    assert!(msg.contains("struct_size"), "{msg}");
    o.struct_size = size_of::<DaviContextOptions>() as u32;
    let missing = CString::new("/nonexistent/davi/model.safetensors").unwrap();
    o.model_path = missing.as_ptr();
    let (st, _, msg) = try_context(&o);
    assert_eq!(st, S::NotFound);
    assert!(msg.contains("/nonexistent/davi/model.safetensors"), "{msg}");
    o.model_path = null();
    let garbage = b"this is not a model file";
    o.model_bytes = garbage.as_ptr();
    o.model_len = garbage.len();
    assert_eq!(try_context(&o).0, S::ModelError);
    o.model_len = 0;
    assert_eq!(try_context(&o).0, S::InvalidArgument);
    o.model_bytes = null();
    o.model_len = 5;
    assert_eq!(try_context(&o).0, S::InvalidArgument);
    o.model_len = 0;
    o.task = c"warp".as_ptr();
    let (st, _, msg) = try_context(&o);
    assert_eq!(st, S::InvalidArgument);
    assert!(msg.contains("warp"), "{msg}");
    // A message longer than the buffer is cut, NUL-terminated.
    o.task = null();
    o.device = c"definitely-not-a-device".as_ptr();
    let mut ctx = null_mut();
    let mut err = [0x55 as c_char; 8];
    assert_eq!(
        unsafe { davi_context_new(&o, &mut ctx, err.as_mut_ptr(), err.len()) },
        S::InvalidArgument
    );
    assert_eq!(unsafe { CStr::from_ptr(err.as_ptr()) }.to_bytes().len(), 7);
}

#[test]
fn a_context_from_bytes_restores_like_one_from_the_file() {
    let bytes = std::fs::read(any_kind_model()).unwrap();
    let mut o = context_options();
    o.model_bytes = bytes.as_ptr();
    o.model_len = bytes.len();
    let (st, from_bytes, msg) = try_context(&o);
    assert_eq!(st, S::Ok, "{msg}");
    drop(bytes); // read during davi_context_new only
    let from_bytes = from_bytes.unwrap();
    let from_file = context(any_kind_model());
    let sp = spec("denoise");
    let input = picture_u8(20, 12, 3);
    let opts = restore_options(16, 4, 3);
    let a = restore_u8(
        &from_bytes,
        &sp,
        &input,
        (20, 12),
        L::Rgb,
        L::Rgb,
        (20, 12),
        Some(&opts),
    );
    let b = restore_u8(
        &from_file,
        &sp,
        &input,
        (20, 12),
        L::Rgb,
        L::Rgb,
        (20, 12),
        Some(&opts),
    );
    assert_eq!(a.0, S::Ok);
    assert_eq!(a, b);
    assert_ne!(a.1, input, "the model changed nothing");
}

#[test]
fn a_diffusion_prior_is_not_a_generator() {
    use davi_engine::weights::{LoadedModel, ModelRole};
    let dir = scratch("prior");
    let path = dir.join("prior.safetensors");
    let mut meta = davi_engine::weights::model_file::read_meta(any_kind_model()).unwrap();
    meta.role = ModelRole::Prior;
    LoadedModel::random(meta, tch::Device::Cpu, 1)
        .unwrap()
        .save(&path)
        .unwrap();
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut o = context_options();
    o.model_path = p.as_ptr();
    let (st, _, msg) = try_context(&o);
    assert_eq!(st, S::ModelError);
    assert!(msg.contains("prior"), "{msg}");
}

#[test]
fn last_error_copies_truncate_and_report_the_full_length() {
    let ctx = context(denoise_model());
    let sp = spec("colorize");
    let (st, _) = restore_u8(
        &ctx,
        &sp,
        &picture_u8(4, 4, 1),
        (4, 4),
        L::Gray,
        L::Rgb,
        (4, 4),
        None,
    );
    assert_eq!(st, S::UnsupportedOperator);
    let full = ctx.last_error();
    assert!(full.len() > 20, "{full}");
    let mut n = 0usize;
    unsafe {
        assert_eq!(davi_context_last_error(ctx.0, null_mut(), 0, &mut n), S::Ok);
        assert_eq!(n, full.len());
        assert_eq!(
            davi_context_last_error(ctx.0, null_mut(), 5, &mut n),
            S::NullArgument
        );
        let mut small = [0x55 as c_char; 8];
        assert_eq!(
            davi_context_last_error(ctx.0, small.as_mut_ptr(), small.len(), &mut n),
            S::Ok
        );
        assert_eq!(CStr::from_ptr(small.as_ptr()).to_str().unwrap(), &full[..7]);
        assert_eq!(n, full.len());
    }
    // The model's own operator, as a spec.
    let mut trained = null_mut();
    assert_eq!(unsafe { davi_context_spec(ctx.0, &mut trained) }, S::Ok);
    let trained = Spec(trained);
    assert_eq!(
        unsafe { CStr::from_ptr(davi_spec_kind(trained.0)) },
        c"denoising"
    );
    let any = context(any_kind_model());
    let mut none = null_mut();
    assert_eq!(unsafe { davi_context_spec(any.0, &mut none) }, S::NotFound);
    assert!(none.is_null());
    assert!(
        any.last_error().contains("does not name"),
        "{}",
        any.last_error()
    );
}

// ---------------------------------------------------------------------------------------------
// Specs built in C

#[test]
fn spec_setters_validate_and_leave_the_spec_unchanged_on_error() {
    let text = |s: &Spec| {
        let mut n = 0usize;
        assert_eq!(
            unsafe { davi_spec_to_text(s.0, null_mut(), 0, &mut n) },
            S::Ok
        );
        let mut buf = vec![0 as c_char; n + 1];
        assert_eq!(
            unsafe { davi_spec_to_text(s.0, buf.as_mut_ptr(), buf.len(), &mut n) },
            S::Ok
        );
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_str()
            .unwrap()
            .to_string()
    };
    unsafe {
        let sr = spec("sr4");
        let before = text(&sr);
        assert_eq!(davi_spec_set_sr_factor(sr.0, 3), S::InvalidArgument);
        assert_eq!(davi_spec_set_blur(sr.0, 1.0, 9, 0), S::InvalidArgument);
        assert_eq!(davi_spec_set_sr_method(sr.0, 5), S::InvalidArgument);
        assert_eq!(davi_spec_set_noise_sigma(sr.0, 2.5), S::InvalidArgument);
        assert_eq!(text(&sr), before);
        assert_eq!(davi_spec_set_sr_factor(sr.0, 2), S::Ok);
        assert_eq!(
            davi_spec_set_sr_method(sr.0, DaviDownsampleMethod::Bicubic as u32),
            S::Ok
        );
        let (mut w, mut h) = (0, 0);
        assert_eq!(davi_output_size(sr.0, 10, 7, &mut w, &mut h), S::Ok);
        assert_eq!((w, h), (20, 14));

        let blur = spec("deblur");
        assert_eq!(
            davi_spec_set_blur(blur.0, 1.5, 10, 0),
            S::InvalidArgument,
            "even size"
        );
        assert_eq!(
            davi_spec_set_blur(blur.0, 0.0, 9, 0),
            S::InvalidArgument,
            "zero sigma"
        );
        assert_eq!(
            davi_spec_set_blur(blur.0, 1.5, 9, DaviBlurMode::Ddrm as u32),
            S::Ok
        );
        assert_eq!(davi_spec_set_noise_sigma(blur.0, 0.1), S::Ok);
        let t = text(&blur);
        assert!(
            t.contains("sigma = 1.5") && t.contains("size = 9") && t.contains("ddrm"),
            "{t}"
        );
        // The text parses back to the same spec.
        let c = CString::new(t.clone()).unwrap();
        let mut back = null_mut();
        assert_eq!(davi_spec_parse(c.as_ptr(), &mut back, null_mut(), 0), S::Ok);
        let back = Spec(back);
        assert_eq!(text(&back), t);
        assert_eq!(davi_spec_set_noise_sigma(blur.0, f64::NAN), S::Ok);
        assert!(
            !text(&blur).contains("noise_sigma"),
            "NaN restores the default"
        );

        let inpaint = spec("inpaint");
        assert_eq!(davi_spec_add_box(inpaint.0, 1, 1, 0, 3), S::InvalidArgument);
        assert_eq!(davi_spec_add_box(inpaint.0, 2, 3, 4, 5), S::Ok);
        assert_eq!(davi_output_size(inpaint.0, 8, 6, &mut w, &mut h), S::Ok);
        assert_eq!(
            davi_output_size(inpaint.0, 7, 5, &mut w, &mut h),
            S::InvalidSpec
        );

        let color = spec("colorize");
        assert_eq!(
            davi_spec_set_gray_weights(color.0, 0.0, 0.0, 0.0),
            S::InvalidArgument
        );
        assert_eq!(
            davi_spec_set_gray_weights(color.0, 0.299, 0.587, 0.114),
            S::Ok
        );
        assert_eq!(davi_spec_add_box(color.0, 0, 0, 1, 1), S::InvalidArgument);
        assert_eq!(CStr::from_ptr(davi_spec_kind(color.0)), c"colorization");
    }
}

// ---------------------------------------------------------------------------------------------
// Pixels: layouts, strides, aliasing, alpha, sample types, threads

#[test]
fn bottom_up_memory_gives_the_same_pixels_as_top_down() {
    let ctx = context(any_kind_model());
    let sp = spec("denoise");
    let (w, h, pitch) = (20usize, 12usize, 20 * 3 + 5);
    let input = picture_u8(w, h, 3);
    let opts = restore_options(16, 4, 9);
    let (st, top_down) = restore_u8(
        &ctx,
        &sp,
        &input,
        (w, h),
        L::Rgb,
        L::Rgb,
        (w, h),
        Some(&opts),
    );
    assert_eq!(st, S::Ok);
    // Padded rows, stored bottom-up: memory row r holds image row h-1-r.
    let mut src = vec![0xEEu8; pitch * h];
    for y in 0..h {
        let r = h - 1 - y;
        src[r * pitch..r * pitch + w * 3].copy_from_slice(&input[y * w * 3..(y + 1) * w * 3]);
    }
    let mut dst = vec![0x77u8; pitch * h];
    unsafe {
        let i = DaviImage::new(
            w as u32,
            h as u32,
            T::U8,
            L::Rgb,
            -(pitch as isize),
            src.as_mut_ptr().add((h - 1) * pitch).cast(),
        );
        let mut o = DaviImage::new(
            w as u32,
            h as u32,
            T::U8,
            L::Rgb,
            -(pitch as isize),
            dst.as_mut_ptr().add((h - 1) * pitch).cast(),
        );
        assert_eq!(
            davi_restore(ctx.0, &i, &mut o, sp.0, &opts),
            S::Ok,
            "{}",
            ctx.last_error()
        );
    }
    for y in 0..h {
        let r = h - 1 - y;
        assert_eq!(
            &dst[r * pitch..r * pitch + w * 3],
            &top_down[y * w * 3..(y + 1) * w * 3],
            "row {y}"
        );
        assert!(
            dst[r * pitch + w * 3..(r + 1) * pitch]
                .iter()
                .all(|b| *b == 0x77),
            "row padding written"
        );
    }
}

#[test]
fn in_place_gives_the_same_pixels_as_a_separate_output() {
    let ctx = context(any_kind_model());
    let sp = spec("denoise");
    let (w, h) = (20usize, 12usize);
    let input = picture_u8(w, h, 4);
    let opts = restore_options(16, 4, 2);
    let (st, separate) = restore_u8(
        &ctx,
        &sp,
        &input,
        (w, h),
        L::Rgba,
        L::Rgba,
        (w, h),
        Some(&opts),
    );
    assert_eq!(st, S::Ok);
    let mut buf = input.clone();
    let d = image(&mut buf, w, h, T::U8, L::Rgba, (w * 4) as isize);
    let mut same = d;
    assert_eq!(
        unsafe { davi_restore(ctx.0, &d, &mut same, sp.0, &opts) },
        S::Ok,
        "{}",
        ctx.last_error()
    );
    assert_eq!(buf, separate);
}

#[test]
fn alpha_is_carried_through_untouched_in_every_sample_type() {
    let ctx = context(any_kind_model());
    let sp = spec("denoise");
    let (w, h) = (12usize, 10usize);
    let rgba = picture_u8(w, h, 4);
    // u8 RGBA
    let (st, out) = restore_u8(&ctx, &sp, &rgba, (w, h), L::Rgba, L::Rgba, (w, h), None);
    assert_eq!(st, S::Ok);
    for i in 0..w * h {
        assert_eq!(out[4 * i + 3], rgba[4 * i + 3], "alpha {i}");
    }
    assert_ne!(out, rgba);
    // u16 gray+alpha
    let mut ga: Vec<u16> = (0..w * h * 2)
        .map(|i| (i as u32 * 7919 % 65536) as u16)
        .collect();
    let orig = ga.clone();
    let mut out16 = vec![0u16; w * h * 2];
    let i = image(&mut ga, w, h, T::U16, L::GrayAlpha, (w * 4) as isize);
    let mut o = image(&mut out16, w, h, T::U16, L::GrayAlpha, (w * 4) as isize);
    assert_eq!(
        unsafe { davi_restore(ctx.0, &i, &mut o, sp.0, null()) },
        S::Ok,
        "{}",
        ctx.last_error()
    );
    for k in 0..w * h {
        assert_eq!(out16[2 * k + 1], orig[2 * k + 1], "alpha {k}");
    }
    // f32 RGBA with alpha values no restoration would keep: out of range, -0, subnormal.
    // (Non-finite alpha is refused like non-finite colour: tests/hostile.rs.)
    let odd = [-3.0, 1.5, -0.0, 1e-40, 0.25];
    let mut f: Vec<f32> = rgba.iter().map(|v| *v as f32 / 255.0).collect();
    for k in 0..w * h {
        f[4 * k + 3] = odd[k % odd.len()];
    }
    let orig = f.clone();
    let mut outf = vec![0f32; f.len()];
    let i = image(&mut f, w, h, T::F32, L::Rgba, (w * 16) as isize);
    let mut o = image(&mut outf, w, h, T::F32, L::Rgba, (w * 16) as isize);
    assert_eq!(
        unsafe { davi_restore(ctx.0, &i, &mut o, sp.0, null()) },
        S::Ok,
        "{}",
        ctx.last_error()
    );
    for k in 0..w * h {
        assert_eq!(
            outf[4 * k + 3].to_bits(),
            orig[4 * k + 3].to_bits(),
            "alpha {k}"
        );
        assert!((0.0..=1.0).contains(&outf[4 * k]));
    }
    // An input without alpha into an output with alpha: opaque.
    let rgb = picture_u8(w, h, 3);
    let (st, out) = restore_u8(&ctx, &sp, &rgb, (w, h), L::Rgb, L::Rgba, (w, h), None);
    assert_eq!(st, S::Ok);
    assert!((0..w * h).all(|k| out[4 * k + 3] == 255));
}

#[test]
fn super_resolution_resamples_alpha_to_the_output_size() {
    let ctx = context(any_kind_model());
    let sp = spec("sr2");
    let (w, h) = (10usize, 6usize);
    let rgba = picture_u8(w, h, 4);
    let (st, out) = restore_u8(
        &ctx,
        &sp,
        &rgba,
        (w, h),
        L::Rgba,
        L::Rgba,
        (2 * w, 2 * h),
        None,
    );
    assert_eq!(st, S::Ok, "{}", ctx.last_error());
    let alpha = AlphaPlane {
        width: w,
        height: h,
        samples: AlphaSamples::U8((0..w * h).map(|k| rgba[4 * k + 3]).collect()),
    };
    let AlphaSamples::U8(expected) = alpha.resized(2 * w, 2 * h).samples else {
        unreachable!()
    };
    let got: Vec<u8> = (0..4 * w * h).map(|k| out[4 * k + 3]).collect();
    assert_eq!(got, expected);
}

#[test]
fn sixteen_bit_and_float_agree_with_eight_bit() {
    let ctx = context(any_kind_model());
    let sp = spec("denoise");
    let (w, h) = (12usize, 8usize);
    let rgb = picture_u8(w, h, 3);
    let opts = restore_options(16, 4, 4);
    let (st, out8) = restore_u8(&ctx, &sp, &rgb, (w, h), L::Rgb, L::Rgb, (w, h), Some(&opts));
    assert_eq!(st, S::Ok);
    let mut in16: Vec<u16> = rgb.iter().map(|v| *v as u16 * 257).collect();
    let mut out16 = vec![0u16; in16.len()];
    let mut outf = vec![0f32; in16.len()];
    unsafe {
        let i = image(&mut in16, w, h, T::U16, L::Rgb, (w * 6) as isize);
        let mut o = image(&mut out16, w, h, T::U16, L::Rgb, (w * 6) as isize);
        assert_eq!(davi_restore(ctx.0, &i, &mut o, sp.0, &opts), S::Ok);
        let mut o = image(&mut outf, w, h, T::F32, L::Rgb, (w * 12) as isize);
        assert_eq!(davi_restore(ctx.0, &i, &mut o, sp.0, &opts), S::Ok);
    }
    for k in 0..rgb.len() {
        assert!(
            (out16[k] as f64 / 257.0 - out8[k] as f64).abs() <= 0.51,
            "sample {k}"
        );
        assert!(
            (outf[k] as f64 * 255.0 - out8[k] as f64).abs() <= 0.51,
            "sample {k}"
        );
    }
}

#[test]
fn colorization_takes_gray_and_writes_colour() {
    let ctx = context(any_kind_model());
    let sp = spec("colorize");
    let (w, h) = (12usize, 8usize);
    let gray = picture_u8(w, h, 1);
    let (st, out) = restore_u8(&ctx, &sp, &gray, (w, h), L::Gray, L::Rgb, (w, h), None);
    assert_eq!(st, S::Ok, "{}", ctx.last_error());
    let (st, out_gray) = restore_u8(&ctx, &sp, &gray, (w, h), L::Gray, L::Gray, (w, h), None);
    assert_eq!(st, S::InvalidArgument);
    assert!(ctx.last_error().contains("RGB"), "{}", ctx.last_error());
    assert!(untouched(&out_gray));
    // The same gray given as RGB (replicated) restores to the same colours, since the
    // official weights sum to 1.
    let rgb: Vec<u8> = gray.iter().flat_map(|v| [*v, *v, *v]).collect();
    let (st, out_rgb) = restore_u8(&ctx, &sp, &rgb, (w, h), L::Rgb, L::Rgb, (w, h), None);
    assert_eq!(st, S::Ok);
    let diff = out
        .iter()
        .zip(&out_rgb)
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    assert!(diff <= 1, "gray and replicated-RGB inputs differ by {diff}");
}

#[test]
fn four_threads_on_separate_contexts_give_the_same_pixels_as_one() {
    let (w, h) = (24usize, 16usize);
    let input = picture_u8(w, h, 3);
    let run = |input: &[u8]| {
        let ctx = context(any_kind_model());
        let sp = spec("denoise");
        let opts = restore_options(16, 4, 21);
        let (st, out) = restore_u8(
            &ctx,
            &sp,
            input,
            (w, h),
            L::Rgb,
            L::Rgb,
            (w, h),
            Some(&opts),
        );
        assert_eq!(st, S::Ok, "{}", ctx.last_error());
        out
    };
    let reference = run(&input);
    let barrier = std::sync::Barrier::new(4);
    let results: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    (0..2).map(|_| run(&input)).collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert_eq!(results.len(), 8);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            r, &reference,
            "restore {i} differs from the single-threaded one"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The engine plugin gives the C API's pixels

#[test]
fn the_engine_plugin_library_restores_the_same_pixels_as_the_c_api() {
    use davi_sdk::{ImageView, ImageViewMut, PluginOptions, PluginRegistry};
    let lib = lib_dir().join("libdavi_engine.so");
    let mut registry = PluginRegistry::new();
    let plugin = registry
        .load(&lib)
        .unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    let desc = plugin.describe().clone();
    assert_eq!(desc.id, "davi");
    assert!(desc.is_learned());
    assert_eq!(desc.kinds().len(), 5);
    assert_eq!(desc.device_names(), ["cpu", "cuda"]);
    // Every test context asks for one thread; so must this one (see `context_options`).
    tch::set_num_threads(1);
    let opts = PluginOptions {
        model_path: Some(denoise_model().to_path_buf()),
        device: "cpu".into(),
    };
    let mut instance = plugin.new_instance(&opts).unwrap();
    let (w, h) = (20usize, 12usize);
    let rgba = picture_u8(w, h, 4);
    let mut via_plugin = vec![0u8; rgba.len()];
    {
        let input = ImageView::from_samples(&rgba, w, h, L::Rgba, (w * 4) as isize).unwrap();
        let mut output =
            ImageViewMut::from_samples(&mut via_plugin, w, h, L::Rgba, (w * 4) as isize).unwrap();
        instance
            .restore_view("kind = \"denoising\"", &input, &mut output, |_| true)
            .unwrap();
    }
    let ctx = context(denoise_model());
    let (st, via_c) = restore_u8(
        &ctx,
        &spec("denoise"),
        &rgba,
        (w, h),
        L::Rgba,
        L::Rgba,
        (w, h),
        None,
    );
    assert_eq!(st, S::Ok);
    assert_eq!(via_plugin, via_c);
    // The plugin's model restores only its kind; colorization needs RGB in the plugin contract.
    let e = instance.restore_spec(
        &davi_sdk::OperatorSpec::for_task("sr2").unwrap(),
        &davi_sdk::PlanarImage::zeros(4, 4, 3),
        |_| true,
    );
    assert_eq!(e.unwrap_err().status, S::UnsupportedOperator);
    let mut any = plugin
        .new_instance(&PluginOptions {
            model_path: Some(any_kind_model().to_path_buf()),
            device: "cpu".into(),
        })
        .unwrap();
    let spec = davi_sdk::OperatorSpec::for_task("colorize").unwrap();
    let e = any.restore_spec(&spec, &davi_sdk::PlanarImage::zeros(4, 4, 1), |_| true);
    assert_eq!(e.unwrap_err().status, S::UnsupportedFormat);
    let out = any
        .restore_spec(&spec, &davi_sdk::PlanarImage::zeros(4, 4, 3), |_| true)
        .unwrap();
    assert_eq!(out.channels, 3);
    // A missing model fails instance creation with its path.
    let bad = PluginOptions {
        model_path: Some("/nonexistent/m.safetensors".into()),
        device: "cpu".into(),
    };
    assert_eq!(plugin.new_instance(&bad).unwrap_err().status, S::NotFound);
}
