//! Plugin loader checks (`sdk/src/loader.rs`): the ELF header check run before `dlopen`, and
//! the function-table checks run on what `davi_plugin_entry` returns, plus the host-side
//! wrappers that decode what a plugin's functions answer.
//!
//! Input: one mode byte, then the payload.
//! - bit 0 clear: the payload is the start of a file. `check_elf_header` must not panic; what
//!   it refuses, `LoadedPlugin::open` on a file of these bytes refuses the same way (a header
//!   it accepts is never handed to `dlopen` here: that would run a fuzzed library).
//! - bit 0 set: the payload describes a table (header, strings, bits, which functions are
//!   NULL) and how its stand-in functions behave (status codes, error messages, output
//!   sizes, progress fractions). `LoadedPlugin::from_entry` must refuse a bad table with a
//!   reason or return a description true to the table; instances, output sizes and restores
//!   through the checked table must return errors, never panic.
#![no_main]

use davi_fuzz::Input;
use davi_sdk::loader::{check_elf_header, LoadError, LoadedPlugin, PluginOrigin, PluginRegistry};
use davi_sdk::plugin::{
    DaviPluginApi, DaviPluginInstance, DaviPluginOptions, DaviProgressFn, DAVI_PLUGIN_ABI_MAJOR,
};
use davi_sdk::{DaviStatusCode, OperatorKind, PlanarImage, PluginOptions};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::ffi::{c_char, c_void, CString};
use std::ptr::null;

/// How the stand-in plugin functions behave this run.
#[derive(Default)]
struct Script {
    table: Option<Box<DaviPluginApi>>,
    null_table: bool,
    new_code: DaviStatusCode,
    new_null_instance: bool,
    size_code: DaviStatusCode,
    out_w: u32,
    out_h: u32,
    restore_code: DaviStatusCode,
    fractions: Vec<f32>,
    message: Vec<u8>,
}

thread_local! {
    static SCRIPT: RefCell<Script> = RefCell::new(Script::default());
}

unsafe fn write_err(err_buf: *mut c_char, err_len: usize) {
    SCRIPT.with(|s| {
        let s = s.borrow();
        if err_buf.is_null() {
            return;
        }
        // Deliberately careless: up to the whole buffer, NUL or not (the host must cope).
        let n = s.message.len().min(err_len);
        std::ptr::copy_nonoverlapping(s.message.as_ptr().cast::<c_char>(), err_buf, n);
    });
}

unsafe extern "C" fn entry(_host_major: u16) -> *const DaviPluginApi {
    SCRIPT.with(|s| {
        let s = s.borrow();
        match &s.table {
            Some(t) if !s.null_table => &**t as *const DaviPluginApi,
            _ => null(),
        }
    })
}

static mut INSTANCE: u8 = 0;

unsafe extern "C" fn instance_new(
    _options: *const DaviPluginOptions,
    out: *mut *mut DaviPluginInstance,
    err_buf: *mut c_char,
    err_len: usize,
) -> DaviStatusCode {
    let (code, null_instance) = SCRIPT.with(|s| (s.borrow().new_code, s.borrow().new_null_instance));
    if code == 0 {
        *out = if null_instance { std::ptr::null_mut() } else { (&raw mut INSTANCE).cast() };
    } else {
        write_err(err_buf, err_len);
    }
    code
}

unsafe extern "C" fn instance_free(_instance: *mut DaviPluginInstance) {}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn output_size(
    _instance: *const DaviPluginInstance,
    _spec: *const c_char,
    _w: u32,
    _h: u32,
    out_w: *mut u32,
    out_h: *mut u32,
    err_buf: *mut c_char,
    err_len: usize,
) -> DaviStatusCode {
    let (code, w, h) = SCRIPT.with(|s| {
        let s = s.borrow();
        (s.size_code, s.out_w, s.out_h)
    });
    if code == 0 {
        *out_w = w;
        *out_h = h;
    } else {
        write_err(err_buf, err_len);
    }
    code
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn restore(
    _instance: *mut DaviPluginInstance,
    _spec: *const c_char,
    _input: *const f32,
    _width: u32,
    _height: u32,
    _channels: u32,
    output: *mut f32,
    output_len: usize,
    progress: DaviProgressFn,
    user_data: *mut c_void,
    err_buf: *mut c_char,
    err_len: usize,
) -> DaviStatusCode {
    let (code, fractions) = SCRIPT.with(|s| {
        let s = s.borrow();
        (s.restore_code, s.fractions.clone())
    });
    if let Some(p) = progress {
        for f in fractions {
            if p(user_data, f) != 0 {
                break;
            }
        }
    }
    if code == 0 {
        for i in 0..output_len {
            *output.add(i) = (i % 7) as f32 / 6.0;
        }
    } else {
        write_err(err_buf, err_len);
    }
    code
}

/// A status code the script uses: mostly real ones, sometimes anything.
fn code(inp: &mut Input) -> DaviStatusCode {
    let b = inp.u8();
    if b & 0x80 != 0 {
        inp.u32() as DaviStatusCode
    } else {
        (b % 16) as DaviStatusCode
    }
}

fn header_check(payload: &[u8]) {
    match check_elf_header(payload) {
        Ok(()) => {
            // A shared object for this host: checked, and not opened here.
            assert!(payload.len() >= 20 && payload.starts_with(b"\x7fELF"));
        }
        Err(e) => {
            let _ = (e.to_string(), e.status());
            assert!(matches!(e, LoadError::NotSharedLibrary(_) | LoadError::WrongArchitecture { .. }), "{e}");
            let path = std::env::temp_dir().join(format!("davi-fuzz-loader-{}.so", std::process::id()));
            std::fs::write(&path, payload).expect("write scratch file");
            let again = LoadedPlugin::open(&path).expect_err("refused bytes must be refused as a file");
            assert_eq!(again.to_string(), e.to_string());
        }
    }
}

fn table_check(mut inp: Input) {
    let struct_size = match inp.u8() {
        0 => DaviPluginApi::V1_SIZE,
        1 => inp.u32(),
        n => DaviPluginApi::V1_SIZE.wrapping_add(n as u32).wrapping_sub(128),
    };
    let abi_major = if inp.u8() & 1 == 0 { DAVI_PLUGIN_ABI_MAJOR } else { inp.u16() };
    let abi_minor = inp.u16();
    let masks = inp.u8();
    let mut strings: Vec<Option<CString>> = Vec::new();
    for i in 0..3 {
        let raw = inp.short_bytes();
        let raw = &raw[..raw.iter().position(|&b| b == 0).unwrap_or(raw.len())];
        strings.push((masks & (1 << i) == 0).then(|| CString::new(raw).unwrap()));
    }
    let ptr = |s: &Option<CString>| s.as_ref().map_or(null(), |c| c.as_ptr());
    let fns = inp.u8();
    let table = DaviPluginApi {
        struct_size,
        abi_major,
        abi_minor,
        id: ptr(&strings[0]),
        version: ptr(&strings[1]),
        description: ptr(&strings[2]),
        operator_kinds: inp.u32(),
        devices: inp.u32(),
        flags: inp.u32(),
        reserved: inp.u32(),
        instance_new: (fns & 1 == 0).then_some(instance_new as _),
        instance_free: (fns & 2 == 0).then_some(instance_free as _),
        output_size: (fns & 4 == 0).then_some(output_size as _),
        restore: (fns & 8 == 0).then_some(restore as _),
    };
    let script = Script {
        table: Some(Box::new(table)),
        null_table: masks & 8 != 0,
        new_code: code(&mut inp),
        new_null_instance: inp.u8() & 1 != 0,
        size_code: code(&mut inp),
        out_w: inp.u8() as u32,
        out_h: inp.u8() as u32,
        restore_code: code(&mut inp),
        fractions: (0..inp.u8() % 8).map(|_| f32::from_bits(inp.u32())).collect(),
        message: inp.rest().to_vec(),
    };
    SCRIPT.with(|s| *s.borrow_mut() = script);

    let plugin = match unsafe { LoadedPlugin::from_entry(entry, PluginOrigin::InProcess) } {
        Ok(p) => p,
        Err(e) => {
            let _ = (e.to_string(), e.status());
            return;
        }
    };
    // What was accepted is exactly what the table says.
    let d = plugin.describe();
    assert_eq!(d.abi_major, DAVI_PLUGIN_ABI_MAJOR);
    assert!(struct_size >= DaviPluginApi::V1_SIZE);
    assert!(masks & 8 == 0 && fns & 15 == 0);
    assert_eq!(Some(d.id.as_bytes()), strings[0].as_ref().map(|c| c.as_bytes()));
    assert!(!d.id.is_empty() && d.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b)));
    let _ = (d.kinds(), d.device_names(), d.is_learned());
    let mut registry = PluginRegistry::new();
    registry.add(plugin.clone()).expect("first add");
    assert!(matches!(registry.add(plugin.clone()), Err(LoadError::DuplicateId { .. })));
    for kind in OperatorKind::ALL {
        let _ = registry.pick(kind, None).map(|p| p.id().to_string());
        let _ = registry.pick(kind, Some(&d.id)).map(|p| p.id().to_string());
    }

    // The host-side wrappers over whatever the stand-in functions answer.
    let mut instance = match plugin.new_instance(&PluginOptions::default()) {
        Ok(i) => i,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = instance.output_size("kind = \"denoising\"", 4, 3);
    let input = PlanarImage::from_vec(4, 3, 3, (0..36).map(|i| i as f32 / 36.0).collect()).unwrap();
    let _ = instance.restore("kind = \"denoising\"", &input, |f| f < 0.75);
    let src: Vec<u8> = (0..4 * 3 * 4).map(|i| (i * 5) as u8).collect();
    let view = davi_sdk::ImageView::from_samples(&src, 4, 3, davi_sdk::DaviChannelLayout::Rgba, 16).unwrap();
    let (w, h) = SCRIPT.with(|s| (s.borrow().out_w as usize, s.borrow().out_h as usize));
    let mut dst = vec![0u8; (w * h * 4).max(1)];
    if let Ok(mut out) = davi_sdk::ImageViewMut::from_samples(&mut dst, w, h, davi_sdk::DaviChannelLayout::Rgba, (w * 4) as isize) {
        let _ = instance.restore_view("kind = \"denoising\"", &view, &mut out, |_| true);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, payload)) = data.split_first() else { return };
    if mode & 1 == 0 {
        header_check(payload);
    } else {
        table_check(Input::new(payload));
    }
});
