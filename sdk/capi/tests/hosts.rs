//! The C and C++ hosts of `host-example/`, built here with strict warnings against
//! `include/davi.h` and this run's `libdavi.so`: they restore a real photograph better than
//! its degraded input, the C host runs clean under AddressSanitizer over repeated
//! create/restore/free cycles, and `scripts/install.sh` gives a prefix that `pkg-config`
//! compiles the same host against.
//!
//! The photograph tests need the project's default denoising model,
//! `models/photo-denoise.safetensors`, and the held-out photos (`scripts/fetch-photos.sh`);
//! without them they fail (never skip), naming what is missing.
mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn cpp_host() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = scratch("cpp-host").join("restore_cpp");
        build_host(
            "c++",
            &root().join("host-example/cpp/restore.cpp"),
            &out,
            &[],
        );
        out
    })
}

/// Restore a noisy crop of a real photo with a host and check it beats the noisy input.
fn host_beats_the_noisy_input(host: &Path, name: &str) {
    let model = default_denoise_model();
    let dir = scratch(name);
    let clean = photo(192, 128);
    let noisy = degrade(&clean, &model, 7);
    let (noisy_path, out_path) = (dir.join("noisy.ppm"), dir.join("restored.ppm"));
    write_pnm(&noisy_path, &noisy);
    let out = run(Command::new(host)
        .args(["--task", "denoise", "--device", "cpu", "--tile", "64"])
        .arg(&noisy_path)
        .arg(&out_path)
        .env("DAVI_MODEL_DIR", root().join("models")));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("restored denoising: 192x128 -> 192x128") && stdout.contains("last 1.000"),
        "{stdout}"
    );
    let restored = read_pnm(&out_path);
    assert_eq!(
        (restored.width, restored.height, restored.channels),
        (192, 128, 3)
    );
    let (before, after) = (
        psnr(&noisy.data, &clean.data),
        psnr(&restored.data, &clean.data),
    );
    eprintln!("{name}: PSNR noisy {before:.2} dB, restored {after:.2} dB");
    assert!(
        after > before + 0.5,
        "{name}: restored PSNR {after:.2} dB does not beat the noisy input's {before:.2} dB"
    );
}

#[test]
fn the_c_host_restores_a_real_photo_better_than_its_noisy_input() {
    host_beats_the_noisy_input(c_host(), "c-photo");
}

#[test]
fn the_cpp_host_restores_a_real_photo_better_than_its_noisy_input() {
    host_beats_the_noisy_input(cpp_host(), "cpp-photo");
}

#[test]
fn the_hosts_report_errors_with_status_and_message_and_fail() {
    let dir = scratch("host-errors");
    let input = dir.join("in.ppm");
    write_pnm(
        &input,
        &Pnm {
            width: 8,
            height: 8,
            channels: 3,
            data: picture_u8(8, 8, 3),
        },
    );
    for host in [c_host(), cpp_host()] {
        let out = Command::new(host)
            .args(["--model", "/nonexistent/m.safetensors", "--device", "cpu"])
            .arg(&input)
            .arg(dir.join("out.ppm"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", host.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("not found") && stderr.contains("/nonexistent/m.safetensors"),
            "{stderr}"
        );
    }
}

/// The C host built with AddressSanitizer, over repeated create/restore/free cycles, in
/// 8-bit and 16-bit, with and without tiling. libtorch itself is not instrumented; leak
/// detection stays on (no ASAN_OPTIONS relaxations are needed).
#[test]
fn the_c_host_runs_clean_under_address_sanitizer() {
    let dir = scratch("asan");
    let bin = dir.join("restore_asan");
    build_host(
        "cc",
        &root().join("host-example/c/restore.c"),
        &bin,
        &["-fsanitize=address", "-fno-omit-frame-pointer"],
    );
    let input8 = dir.join("in8.ppm");
    write_pnm(
        &input8,
        &Pnm {
            width: 24,
            height: 16,
            channels: 3,
            data: picture_u8(24, 16, 3),
        },
    );
    // A 16-bit PGM (big-endian samples).
    let gray = picture_u8(20, 12, 1);
    let mut pgm16 = b"P5\n20 12\n65535\n".to_vec();
    for v in &gray {
        pgm16.extend_from_slice(&(*v as u16 * 257 + 3).to_be_bytes());
    }
    let input16 = dir.join("in16.pgm");
    std::fs::write(&input16, pgm16).unwrap();
    for (input, tile) in [(&input8, "16"), (&input8, "0"), (&input16, "8")] {
        let output = dir.join("out.pnm");
        let mut cmd = Command::new(&bin);
        cmd.args(["--model"])
            .arg(any_kind_model())
            .args([
                "--device", "cpu", "--cycles", "3", "--quiet", "--tile", tile,
            ])
            .arg(input)
            .arg(&output);
        let out = output_under_asan(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "ASan host failed ({}):\n{stderr}",
            out.status
        );
        assert!(
            !stderr.contains("AddressSanitizer") && !stderr.contains("LeakSanitizer"),
            "{stderr}"
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout)
                .matches("restored denoising")
                .count(),
            3
        );
    }
}

/// `scripts/install.sh` into a temporary prefix; the C host compiles with the flags
/// `pkg-config` gives for it (or the `.pc` fields when pkg-config is absent), links the
/// installed library through its SONAME, and restores the same pixels as the host built
/// against the build tree. The installed plugin directory loads through the SDK loader.
#[test]
fn install_script_gives_a_prefix_pkg_config_can_build_against() {
    let dir = scratch("install");
    let prefix = dir.join("prefix");
    run(Command::new("bash")
        .arg(root().join("scripts/install.sh"))
        .arg("--from")
        .arg(lib_dir())
        .arg("--with-plugins")
        .arg(&prefix));
    let version = env!("CARGO_PKG_VERSION");
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    let lib = prefix.join("lib");
    let real = lib.join(format!("libdavi.so.{version}"));
    assert!(real.is_file() && !real.is_symlink(), "{}", real.display());
    assert_eq!(
        std::fs::read_link(lib.join(format!("libdavi.so.{major}"))).unwrap(),
        Path::new(&format!("libdavi.so.{version}"))
    );
    assert_eq!(
        std::fs::read_link(lib.join("libdavi.so")).unwrap(),
        Path::new(&format!("libdavi.so.{major}"))
    );
    assert_eq!(
        std::fs::read(prefix.join("include/davi/davi.h")).unwrap(),
        std::fs::read(root().join("include/davi.h")).unwrap()
    );
    let pc = std::fs::read_to_string(lib.join("pkgconfig/davi.pc")).unwrap();
    assert!(pc.contains(&format!("Version: {version}")), "{pc}");

    // Compiler flags from pkg-config, or from the .pc file itself.
    let flags = match Command::new("pkg-config").arg("--version").output() {
        Ok(o) if o.status.success() => {
            let out = run(Command::new("pkg-config")
                .args(["--cflags", "--libs", "davi"])
                .env("PKG_CONFIG_PATH", lib.join("pkgconfig")));
            String::from_utf8(out.stdout).unwrap()
        }
        _ => pc_flags(&pc),
    };
    let flags: Vec<&str> = flags.split_whitespace().collect();
    assert!(flags.contains(&"-ldavi"), "{flags:?}");
    let bin = dir.join("restore");
    run(Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror"])
        .arg(root().join("host-example/c/restore.c"))
        .arg("-o")
        .arg(&bin)
        .args(&flags));
    let needed =
        String::from_utf8(run(Command::new("readelf").arg("-d").arg(&bin)).stdout).unwrap();
    assert!(
        needed.contains(&format!("[libdavi.so.{major}]")),
        "{needed}"
    );
    assert!(
        needed.contains(&lib.display().to_string()),
        "no rpath to the prefix:\n{needed}"
    );

    let input = dir.join("in.ppm");
    write_pnm(
        &input,
        &Pnm {
            width: 24,
            height: 16,
            channels: 3,
            data: picture_u8(24, 16, 3),
        },
    );
    let restore_with = |host: &Path, out: &Path| {
        run(Command::new(host)
            .arg("--model")
            .arg(any_kind_model())
            .args(["--device", "cpu", "--quiet", "--tile", "16", "--seed", "5"])
            .arg(&input)
            .arg(out));
        read_pnm(out)
    };
    let installed = restore_with(&bin, &dir.join("installed.ppm"));
    let build_tree = restore_with(c_host(), &dir.join("build-tree.ppm"));
    assert_eq!(installed, build_tree);

    let plugins = davi_sdk::PluginRegistry::scan(lib.join("libdavi/plugins")).unwrap();
    assert!(
        plugins.get("davi").is_some(),
        "refused: {:?}",
        plugins.refused()
    );
}

/// `pkg-config --cflags --libs` computed from a `.pc` file's variables.
fn pc_flags(pc: &str) -> String {
    let mut vars: Vec<(String, String)> = Vec::new();
    let expand = |s: &str, vars: &[(String, String)]| {
        let mut s = s.to_string();
        for (k, v) in vars.iter().rev() {
            s = s.replace(&format!("${{{k}}}"), v);
        }
        s
    };
    let mut flags = String::new();
    for line in pc.lines() {
        if let Some((k, v)) = line.split_once('=') {
            if !k.contains(':') && !k.contains(' ') {
                let v = expand(v.trim(), &vars);
                vars.push((k.trim().to_string(), v));
                continue;
            }
        }
        if let Some(v) = line
            .strip_prefix("Cflags:")
            .or_else(|| line.strip_prefix("Libs:"))
        {
            flags.push_str(&expand(v.trim(), &vars));
            flags.push(' ');
        }
    }
    flags
}

#[test]
fn pc_fields_expand_like_pkg_config() {
    let pc =
        "prefix=/p\nlibdir=${prefix}/lib\nName: davi\nCflags: -I${prefix}/include/davi\nLibs: \
        -L${libdir} -ldavi\n";
    assert_eq!(pc_flags(pc).trim(), "-I/p/include/davi -L/p/lib -ldavi");
}

/// The C example of `docs/C_API.md` compiles as strict C11 against the header.
#[test]
fn the_documented_c_example_compiles() {
    let doc = std::fs::read_to_string(root().join("docs/C_API.md")).unwrap();
    let start = doc.find("```c\n").expect("a C example in docs/C_API.md") + 5;
    let len = doc[start..].find("```").unwrap();
    let dir = scratch("doc-example");
    let src = dir.join("example.c");
    std::fs::write(&src, &doc[start..start + len]).unwrap();
    assert!(
        doc[start..start + len].lines().count() <= 30,
        "the example should stay short"
    );
    run(Command::new("cc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Wpedantic",
            "-Werror",
            "-c",
        ])
        .arg("-I")
        .arg(root().join("include"))
        .arg(&src)
        .arg("-o")
        .arg(dir.join("example.o")));
}
