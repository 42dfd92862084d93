//! The image entry of the C API: `davi_restore` with fuzzed image descriptors, pixel bytes,
//! specs and restore options, on micro models built at start-up (`davi_fuzz::micro_model_bytes`):
//! one that accepts every operator and restores through tiles, an inpainting and a
//! colorization model that restore through context windows, and one trained (in name) for
//! denoising.
//!
//! The descriptors are truthful about their memory, as the contract requires (a descriptor
//! that lies about its memory cannot be detected from C): every buffer holds the bytes its
//! descriptor spans, misaligned pointers point inside it; one whose span overflows the
//! address space gets an 8-byte buffer and must be refused without a read. Valid images run
//! when they are small (at most 8192 pixels, sides up to 1024) or thin strips (a side of 1
//! or 2) longer than 8192 pixels, which the dense operators must refuse quickly; other valid
//! images are skipped (they would only be slow).
//!
//! Checks: no call returns `DAVI_STATUS_PANIC`; a failed restore leaves the output bytes
//! untouched; progress fractions lie in [0, 1] and never decrease; a restore started from a
//! progress callback on the same context is `DAVI_STATUS_BUSY`.
#![no_main]

use davi::{
    davi_context_last_error, davi_context_new, davi_context_options_init, davi_output_size, davi_restore,
    davi_restore_options_init, davi_spec_add_box, davi_spec_free, davi_spec_new_task, davi_spec_parse,
    davi_spec_set_blur, davi_spec_set_gray_weights, davi_spec_set_noise_sigma, davi_spec_set_sr_factor,
    davi_spec_set_sr_method, DaviContext, DaviContextOptions, DaviRestoreOptions, DaviSpec,
};
use davi_fuzz::{micro_model_bytes, no_panic, Input};
use davi_sdk::{DaviImage, DaviStatus, OperatorSpec};
use libfuzzer_sys::fuzz_target;
use std::ffi::{c_char, c_void, CString};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

/// Largest pixel memory one descriptor may span here.
const MAX_SPAN: usize = 1 << 20;
/// Larger valid images are skipped.
const MAX_PIXELS: usize = 8192;
const TASKS: [&CStr; 7] = [c"deblur", c"sr4", c"sr2", c"sr8", c"inpaint", c"denoise", c"colorize"];
use std::ffi::CStr;

/// `DAVI_FUZZ_DEBUG=1`: print each restore's status and message (to check what seeds reach).
fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("DAVI_FUZZ_DEBUG").is_some())
}

struct Contexts([usize; 4]);

fn contexts() -> &'static Contexts {
    static CTX: OnceLock<Contexts> = OnceLock::new();
    CTX.get_or_init(|| {
        let task = |t: &str| Some(OperatorSpec::for_task(t).unwrap());
        let models = [
            micro_model_bytes(None, None, 1),
            micro_model_bytes(task("inpaint"), Some(16), 2),
            micro_model_bytes(task("colorize"), Some(16), 3),
            micro_model_bytes(task("denoise"), None, 4),
        ];
        let mut out = [0usize; 4];
        for (slot, bytes) in out.iter_mut().zip(&models) {
            unsafe {
                let mut o: DaviContextOptions = std::mem::zeroed();
                davi_context_options_init(&mut o, size_of::<DaviContextOptions>());
                o.model_bytes = bytes.as_ptr();
                o.model_len = bytes.len();
                o.device = c"cpu".as_ptr();
                o.threads = 1;
                let mut ctx: *mut DaviContext = null_mut();
                let mut err = [0 as c_char; 512];
                let s = davi_context_new(&o, &mut ctx, err.as_mut_ptr(), err.len());
                assert_eq!(s, DaviStatus::Ok, "{:?}", CStr::from_ptr(err.as_ptr()));
                *slot = ctx as usize;
            }
        }
        Contexts(out)
    })
}

/// A dimension: mostly small (0 = empty included), sometimes extreme.
fn dim(inp: &mut Input) -> u32 {
    let b = inp.u8();
    if b < 0xf0 {
        (b % 49) as u32
    } else {
        [u32::MAX, u32::MAX - 1, 1 << 31, 1 << 30, 1 << 16, 65535, 4097, 3, 1, 0, 255, 256, 2, 7, 48, 64][(b & 15) as usize]
    }
}

/// A descriptor, its memory and how to read it back.
struct Image {
    desc: DaviImage,
    buf: Vec<u8>,
    /// Offset of the top row inside `buf` (alignment offset included).
    pixels: usize,
}

/// Bytes of a sample type / samples of a layout, for the codes the library knows.
fn sample_size(t: u32) -> usize {
    match t {
        1 => 2,
        2 => 4,
        _ => 1,
    }
}
fn channels(l: u32) -> usize {
    match l {
        0 => 1,
        1 => 2,
        2 => 3,
        _ => 4,
    }
}

/// Build a descriptor from the input; `size`: the width and height to use unless the input
/// says otherwise. `None`: a valid image too large to run quickly, or memory too large.
fn image(inp: &mut Input, size: Option<(u32, u32)>, pixels: &[u8], sanitize: bool) -> Option<Image> {
    let flags = inp.u8();
    let (width, height) = match size {
        Some(s) if flags & 1 == 0 => s,
        _ => (dim(inp), dim(inp)),
    };
    let sample_type = if flags & 2 == 0 { (inp.u8() % 3) as u32 } else { inp.u32() };
    let layout = if flags & 4 == 0 { (inp.u8() % 4) as u32 } else { inp.u32() };
    let img_flags = if flags & 8 == 0 { 0 } else { inp.u32() };
    let struct_size = if flags & 16 == 0 { DaviImage::V1_SIZE } else { inp.u8() as u32 };
    let size = sample_size(sample_type);
    let row = (width as usize).checked_mul(channels(layout) * size);
    let pad = inp.u8();
    let stride: isize = if flags & 32 == 0 {
        match row {
            Some(r) if r <= isize::MAX as usize / 2 => {
                let s = (r + (pad % 4) as usize * size) as isize;
                if pad & 0x80 != 0 {
                    -s
                } else {
                    s
                }
            }
            _ => isize::MAX,
        }
    } else {
        inp.u64() as isize
    };
    let misalign = if flags & 64 == 0 { 0 } else { (inp.u8() % 4) as usize };
    let null_data = flags & 128 != 0 && inp.u8() & 1 != 0;
    let pitch = stride.unsigned_abs();
    let span = (height as usize)
        .checked_sub(1)
        .and_then(|h| h.checked_mul(pitch))
        .and_then(|s| s.checked_add(row?))
        .filter(|s| *s <= isize::MAX as usize);
    let known = sample_type < 3 && layout < 4 && img_flags == 0 && struct_size >= DaviImage::V1_SIZE;
    let valid = known && width > 0 && height > 0 && row.is_some_and(|r| pitch >= r) && span.is_some();
    if valid {
        let (lo, hi) = (width.min(height) as usize, width.max(height) as usize);
        let small = lo * hi <= MAX_PIXELS && hi <= 1024;
        let strip = lo <= 2 && hi > 8192;
        if !small && !strip {
            return None;
        }
    }
    let (mut buf, pixels_at) = match span {
        Some(span) if span <= MAX_SPAN => {
            let below = if stride < 0 { (height as usize - 1) * pitch } else { 0 };
            let mut buf = vec![0u8; span + 8];
            for (i, b) in buf.iter_mut().enumerate() {
                *b = if pixels.is_empty() { (i * 31 % 256) as u8 } else { pixels[i % pixels.len()] };
            }
            (buf, below)
        }
        Some(_) if valid => return None,
        // Sizes the library must refuse before reading: no memory behind them.
        _ => (vec![0u8; 8], 0),
    };
    if sanitize && sample_type == 2 {
        // Float samples in [0, 1] instead of raw bit patterns (mostly NaN and huge values).
        let base = buf.as_ptr() as usize;
        let start = (4 - base % 4) % 4;
        for c in buf[start..].chunks_exact_mut(4) {
            let v = c[0] as f32 / 255.0;
            c.copy_from_slice(&v.to_ne_bytes());
        }
    }
    // Keep the data pointer aligned unless misalignment is asked for.
    let base = buf.as_ptr() as usize + pixels_at;
    let fix = (size - base % size) % size;
    let pixels_at = if pixels_at + fix + misalign + span.unwrap_or(0) <= buf.len() { pixels_at + fix + misalign } else { pixels_at };
    let data = if null_data { null_mut() } else { buf.as_mut_ptr().wrapping_add(pixels_at).cast::<c_void>() };
    let desc = DaviImage { struct_size, width, height, sample_type, layout, flags: img_flags, row_stride: stride, data };
    Some(Image { desc, buf, pixels: pixels_at })
}

fn spec(inp: &mut Input) -> *mut DaviSpec {
    let mut spec: *mut DaviSpec = null_mut();
    let how = inp.u8();
    unsafe {
        if how & 1 != 0 {
            let text = inp.short_bytes();
            let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
            let text = CString::new(text).unwrap();
            no_panic(davi_spec_parse(text.as_ptr(), &mut spec, null_mut(), 0), "davi_spec_parse");
        } else {
            let task = TASKS[((how >> 1) & 15) as usize % TASKS.len()];
            no_panic(davi_spec_new_task(task.as_ptr(), &mut spec), "davi_spec_new_task");
        }
        if spec.is_null() {
            return spec;
        }
        for _ in 0..(how >> 5) % 4 {
            let s = match inp.u8() % 6 {
                0 => davi_spec_set_noise_sigma(spec, inp.f64()),
                1 => davi_spec_set_blur(spec, inp.f64(), inp.u8() as u32 * 2 + 1, inp.u8() as u32 % 3),
                2 => davi_spec_set_sr_factor(spec, inp.u8() as u32 % 10),
                3 => davi_spec_set_sr_method(spec, inp.u8() as u32 % 3),
                4 => {
                    let (t, l, h, w) = (dim(inp), dim(inp), dim(inp), dim(inp));
                    davi_spec_add_box(spec, t, l, h, w)
                }
                _ => davi_spec_set_gray_weights(spec, inp.f64(), inp.f64(), inp.f64()),
            };
            no_panic(s, "davi_spec_set_*");
        }
    }
    spec
}

/// What the progress callback sees and does.
struct Progress {
    calls: u32,
    cancel_at: u32,
    last: f32,
    ctx: *mut DaviContext,
    spec: *const DaviSpec,
    nested: bool,
}

/// A failed check inside the callback: it runs inside the library's panic boundary, which
/// would swallow a panic's message, so say it and abort.
fn fail(msg: String) -> ! {
    eprintln!("{msg}");
    std::process::abort();
}

unsafe extern "C" fn progress(user_data: *mut c_void, fraction: f32) -> i32 {
    let p = &mut *user_data.cast::<Progress>();
    if !(0.0..=1.0).contains(&fraction) {
        fail(format!("progress fraction {fraction} outside [0, 1]"));
    }
    if fraction < p.last {
        fail(format!("progress went back from {} to {fraction}", p.last));
    }
    p.last = fraction;
    p.calls += 1;
    if p.nested {
        p.nested = false;
        let mut px = [128u8; 4 * 4 * 3];
        let img = DaviImage::new(4, 4, davi_sdk::DaviSampleType::U8, davi_sdk::DaviChannelLayout::Rgb, 12, px.as_mut_ptr().cast());
        // Whatever else is wrong with it, it can never run: the context is busy with us.
        let s = no_panic(davi_restore(p.ctx, &img, &img as *const DaviImage as *mut DaviImage, p.spec, null()), "nested davi_restore");
        if s == DaviStatus::Ok {
            fail("a restore from a progress callback on its own context succeeded".into());
        }
    }
    (p.calls == p.cancel_at) as i32
}

fuzz_target!(|data: &[u8]| {
    let ctxs = contexts();
    let mut inp = Input::new(data);
    let ctx = ctxs.0[inp.u8() as usize % 4] as *mut DaviContext;
    let spec = spec(&mut inp);

    // Options: NULL, or the defaults with fuzzed fields.
    let opt_flags = inp.u8();
    let mut prog = Progress { calls: 0, cancel_at: 0, last: 0.0, ctx, spec, nested: false };
    let mut options: DaviRestoreOptions = unsafe { std::mem::zeroed() };
    let options_ptr = if opt_flags & 1 == 0 {
        null()
    } else {
        unsafe { davi_restore_options_init(&mut options, size_of::<DaviRestoreOptions>()) };
        if opt_flags & 2 != 0 {
            options.struct_size = inp.u8() as u32;
        }
        if opt_flags & 4 != 0 {
            let t = inp.u8();
            options.tile = if t < 0xf0 { t as u32 % 65 } else { inp.u32() };
            options.overlap = inp.u8() as u32 % 33;
        }
        if opt_flags & 8 != 0 {
            options.ensemble = inp.u32();
        }
        if opt_flags & 16 != 0 {
            options.perturb_h = inp.f64();
        }
        options.seed = if opt_flags & 32 != 0 { inp.u64() } else { 0 };
        if opt_flags & 64 != 0 {
            prog.cancel_at = inp.u8() as u32 % 4;
            prog.nested = opt_flags & 128 != 0;
            options.progress = Some(progress);
            options.user_data = (&mut prog as *mut Progress).cast();
        }
        &options as *const DaviRestoreOptions
    };

    let img_flags = inp.u8();
    let sanitize = img_flags & 1 == 0;
    let in_place = img_flags & 2 != 0;
    let pixel_len = inp.u8() as usize;
    let pixels = inp.bytes(pixel_len);
    let Some(mut input) = image(&mut inp, None, pixels, sanitize) else {
        unsafe { davi_spec_free(spec) };
        return;
    };
    let (mut ow, mut oh) = (0u32, 0u32);
    let sized = !spec.is_null()
        && unsafe { davi_output_size(spec, input.desc.width, input.desc.height, &mut ow, &mut oh) } == DaviStatus::Ok;
    let mut output = if in_place {
        None
    } else {
        match image(&mut inp, sized.then_some((ow, oh)), &[], true) {
            Some(o) => Some(o),
            None => {
                unsafe { davi_spec_free(spec) };
                return;
            }
        }
    };
    let before = output.as_ref().map(|o| o.buf.clone()).unwrap_or_else(|| input.buf.clone());
    let in_desc = input.desc;
    let out_desc: *mut DaviImage = match &mut output {
        Some(o) => &mut o.desc,
        None => &mut input.desc,
    };
    let s = no_panic(unsafe { davi_restore(ctx, &in_desc, out_desc, spec, options_ptr) }, "davi_restore");
    let mut len = 0usize;
    let mut msg = [0 as c_char; 256];
    no_panic(unsafe { davi_context_last_error(ctx, msg.as_mut_ptr(), msg.len(), &mut len) }, "davi_context_last_error");
    if debug() {
        eprintln!("davi_restore: {s:?} {:?}", unsafe { CStr::from_ptr(msg.as_ptr()) });
    }
    if s != DaviStatus::Ok {
        let after = output.as_ref().map(|o| &o.buf).unwrap_or(&input.buf);
        assert!(*after == before, "a failed restore ({s:?}) changed the output");
        assert!(len > 0, "a failed restore left no message");
    }
    let _ = input.pixels;
    unsafe { davi_spec_free(spec) };
});
