//! The committed `include/davi.h` is what the pinned cbindgen generates from the sources, and
//! its version macros are the ones of `Cargo.toml` and of the built library, and the library
//! exports exactly the functions the header declares.
mod common;
#[path = "../gen/header.rs"]
mod header;

use std::ffi::CStr;
use std::process::Command;

fn committed() -> String {
    let path = header::header_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The value of `#define NAME value` in the header.
fn define<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find_map(|l| {
            l.strip_prefix("#define ")?
                .strip_prefix(name)?
                .strip_prefix(' ')
        })
        .unwrap_or_else(|| panic!("include/davi.h has no #define {name}"))
        .trim()
}

#[test]
fn committed_header_equals_a_fresh_generation() {
    let fresh = header::generate().expect("generate the header");
    let old = committed();
    if fresh != old {
        let line = fresh
            .lines()
            .zip(old.lines())
            .position(|(a, b)| a != b)
            .map(|i| i + 1);
        panic!(
            "include/davi.h is stale (first difference at line {}; {} vs {} lines): run \
             `cargo run -p davi-capi --example gen-header` and commit the result",
            line.map_or("end".to_string(), |l| l.to_string()),
            old.lines().count(),
            fresh.lines().count()
        );
    }
}

#[test]
fn version_macros_equal_cargo_toml_and_the_library() {
    let text = committed();
    assert_eq!(
        define(&text, "DAVI_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MAJOR")
    );
    assert_eq!(
        define(&text, "DAVI_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_MINOR")
    );
    assert_eq!(
        define(&text, "DAVI_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION_PATCH")
    );
    assert_eq!(
        define(&text, "DAVI_VERSION_STRING"),
        format!("\"{}\"", env!("CARGO_PKG_VERSION"))
    );
    let abi: u32 = define(&text, "DAVI_ABI_VERSION").parse().expect("a number");
    assert_eq!(
        abi,
        header::abi_version(),
        "DAVI_ABI_VERSION vs [package.metadata.davi]"
    );
    // The library reports the same numbers at run time.
    assert_eq!(davi::davi_abi_version(), abi);
    let v = unsafe { CStr::from_ptr(davi::davi_version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

#[test]
fn every_exported_function_is_declared() {
    let text = committed();
    let src = std::fs::read_to_string(header::crate_dir().join("src/capi.rs")).unwrap();
    let mut n = 0;
    for line in src.lines() {
        let Some(rest) = line.split("extern \"C\" fn ").nth(1) else {
            continue;
        };
        let name = rest.split('(').next().unwrap();
        let declared = text.contains(&format!(" {name}(")) || text.contains(&format!("*{name}("));
        assert!(declared, "{name} is exported but not in include/davi.h");
        n += 1;
    }
    assert!(n >= 20, "found only {n} exported functions");
}

/// Every object-like macro and every enum constant the header defines, used in a C11 and a
/// C++17 translation unit built with strict warnings: a macro that names something C does not
/// have (as `DaviStatus_ALL` once did) fails to compile.
#[test]
fn every_macro_and_constant_compiles_when_used() {
    let text = committed();
    let mut names = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("#define ") {
            let name = rest.split_whitespace().next().unwrap();
            // The include guard has no value; function-like macros take arguments.
            if name != "DAVI_H" && !name.contains('(') {
                names.push(name.to_string());
            }
        } else if let Some((name, _)) = line.trim().split_once(" = ") {
            if name.starts_with("DAVI_")
                && name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                names.push(name.to_string());
            }
        }
    }
    assert!(names.iter().any(|n| n == "DAVI_STATUS_BUSY"), "{names:?}");
    assert!(names.len() > 30, "only {} names: {names:?}", names.len());
    let mut src = String::from("#include \"davi.h\"\nconst unsigned long davi_sizes[] = {\n");
    for n in &names {
        src += &format!("    (unsigned long)sizeof({n}),\n");
    }
    src += "};\n";
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("davi-capi-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (compiler, std, file) in [
        ("cc", "-std=c11", "all.c"),
        ("c++", "-std=c++17", "all.cpp"),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, &src).unwrap();
        let out = Command::new(compiler)
            .args([std, "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-c", "-o"])
            .arg(dir.join(format!("{file}.o")))
            .arg("-I")
            .arg(header::header_path().parent().unwrap())
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
        assert!(
            out.status.success(),
            "{compiler} {std} rejects a use of the header's macros:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The dynamic symbols a shared library defines (functions and data).
fn exported_symbols(lib: &std::path::Path) -> Vec<String> {
    let out = Command::new("nm")
        .args(["-D", "--defined-only", "--format=posix"])
        .arg(lib)
        .output()
        .expect("run nm (binutils)");
    assert!(
        out.status.success(),
        "nm {}: {}",
        lib.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (name, kind) = (f.next()?, f.next()?);
            // Functions and data; version node entries (A) are not symbols.
            matches!(kind, "T" | "D" | "B" | "R" | "W" | "V").then(|| name.to_string())
        })
        .collect()
}

/// `libdavi.so` exports the `davi_*` functions of the header and nothing else, and the engine
/// plugin library only its plugin entry: Rust exports every `#[no_mangle]` function of every
/// dependency from a cdylib (tch's stream callbacks, bzip2's error hook), and a host that also
/// loads another tch-based library could bind those to the wrong copy. Both build scripts link
/// with `--exclude-libs ALL`, which keeps the dependencies' symbols local.
#[test]
fn the_libraries_export_only_their_api() {
    let text = committed();
    let exported = exported_symbols(&common::lib_dir().join("libdavi.so"));
    let stray: Vec<&String> = exported
        .iter()
        .filter(|n| !n.starts_with("davi_"))
        .collect();
    assert!(
        stray.is_empty(),
        "libdavi.so exports symbols outside the API: {stray:?}"
    );
    for name in &exported {
        let declared = text.contains(&format!(" {name}(")) || text.contains(&format!("*{name}("));
        assert!(
            declared,
            "{name} is exported but not declared in include/davi.h"
        );
    }
    assert!(
        exported.len() >= 20,
        "only {} davi_* symbols exported",
        exported.len()
    );
    let plugin = exported_symbols(&common::lib_dir().join("libdavi_engine.so"));
    assert_eq!(
        plugin,
        ["davi_plugin_entry"],
        "the engine plugin library's exports"
    );
}
