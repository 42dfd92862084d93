//! Process-wide settings that belong to a program, not to the library: the C allocator's
//! thresholds, and what the `davi` binary can (and cannot) do about OpenMP's wait policy.
//! docs/performance.md has the measurements behind both.
//!
//! **Allocator.** With glibc's default thresholds, the multi-megabyte activations of every
//! network call are `mmap`ed (or trimmed off the heap) when freed and page-faulted in again by
//! the next call: on the FFHQ-256 forward that is 7–8 million minor faults and 11–13 s of
//! system time per run, and the forward is 1.33–1.48× slower than with the memory kept. So
//! `main` raises `M_MMAP_THRESHOLD` and `M_TRIM_THRESHOLD` before anything is allocated.
//! Setting only one does not work (any explicit threshold switches off glibc's dynamic mmap
//! threshold; the trim threshold alone made the forward slower). This is a property of the
//! whole process, which is why libdavi itself never calls `mallopt`: a C host that wants the
//! same sets `MALLOC_MMAP_THRESHOLD_` and `MALLOC_TRIM_THRESHOLD_` in its environment, or
//! calls `mallopt` in its own `main`. `DAVI_MALLOPT=off` keeps glibc's defaults;
//! `DAVI_MALLOPT=MMAP_BYTES,TRIM_BYTES` sets other values; a `MALLOC_*_THRESHOLD_` or
//! `glibc.malloc` tunable already in the environment wins (then nothing is changed here).
//!
//! **OpenMP wait policy.** libtorch's OpenMP runtime (libgomp) reads `OMP_WAIT_POLICY` and
//! `GOMP_SPINCOUNT` once, in a constructor that runs when the dynamic loader maps it — before
//! `main`, because the binary links libtorch. Setting the variable in `main` therefore changes
//! nothing (checked: `OMP_DISPLAY_ENV=true davi --version` prints libgomp's settings before
//! `main` runs), and re-executing the binary with the variable set would cost a second
//! libtorch load (about 0.6 CPU-seconds here) on every command. The restore path avoids the
//! problem instead: on a CPU, tile batches run on worker threads with one intra-op thread
//! each (`Restorer::tile_workers`), so no OpenMP team exists to spin. Single-tile restores
//! (one FFHQ-256 image) still use libtorch's intra-op threads; on a shared machine, start
//! `davi` with `OMP_WAIT_POLICY=PASSIVE` in the environment.

/// What [`tune_allocator`] did, for `--stats-json` and the benchmark.
pub fn allocator_setting() -> &'static str {
    ALLOCATOR.get().map(String::as_str).unwrap_or("not set")
}

static ALLOCATOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The thresholds `main` sets by default: `M_MMAP_THRESHOLD` 128 MiB, `M_TRIM_THRESHOLD`
/// 1 GiB. The trim threshold is the value measured in docs/performance.md; the mmap threshold
/// is lower than the 1 GiB measured there, and still above every activation of a network
/// call (the largest, FFHQ-256's skip concatenation at 256×256, is 64 MiB), so those stay on
/// the heap as measured. Image-sized buffers of whole photographs (144 MiB for a 12 MP RGB
/// f32 image, 192 MiB at 4096×4096) are mapped and returned when freed instead of staying
/// in the heap, which keeps peak RSS near what is alive.
pub const DEFAULT_MALLOPT: (i32, i32) = (128 << 20, 1 << 30);

/// Raise glibc's mmap and trim thresholds (see the module documentation). Call first thing
/// in `main`, before other threads exist.
pub fn tune_allocator() {
    let _ = ALLOCATOR.set(choose_and_apply());
}

fn user_has_malloc_settings() -> bool {
    let env = |k: &str| std::env::var_os(k).is_some();
    env("MALLOC_MMAP_THRESHOLD_")
        || env("MALLOC_TRIM_THRESHOLD_")
        || std::env::var("GLIBC_TUNABLES")
            .map(|t| t.contains("glibc.malloc."))
            .unwrap_or(false)
}

fn choose_and_apply() -> String {
    if user_has_malloc_settings() {
        return "glibc settings from the environment".into();
    }
    let (mmap, trim) = match std::env::var("DAVI_MALLOPT") {
        Ok(v) if v.trim() == "off" => return "glibc defaults (DAVI_MALLOPT=off)".into(),
        Ok(v) => match parse_pair(&v) {
            Some(p) => p,
            None => {
                eprintln!(
                    "davi: warning: DAVI_MALLOPT wants `off` or MMAP_BYTES,TRIM_BYTES (got \
                    {v:?}); using the defaults"
                );
                DEFAULT_MALLOPT
            }
        },
        Err(_) => DEFAULT_MALLOPT,
    };
    match set_thresholds(mmap, trim) {
        true => format!("mallopt M_MMAP_THRESHOLD={mmap} M_TRIM_THRESHOLD={trim}"),
        false => "glibc defaults (mallopt unavailable or refused)".into(),
    }
}

fn parse_pair(v: &str) -> Option<(i32, i32)> {
    let (a, b) = v.split_once(',')?;
    let (a, b) = (a.trim().parse::<i32>().ok()?, b.trim().parse::<i32>().ok()?);
    (a >= 0 && b >= 0).then_some((a, b))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_thresholds(mmap: i32, trim: i32) -> bool {
    extern "C" {
        /// glibc's `mallopt(3)`.
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    unsafe { mallopt(M_MMAP_THRESHOLD, mmap) == 1 && mallopt(M_TRIM_THRESHOLD, trim) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_thresholds(_mmap: i32, _trim: i32) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_threshold_pairs() {
        assert_eq!(
            parse_pair("1073741824,1073741824"),
            Some((1 << 30, 1 << 30))
        );
        assert_eq!(
            parse_pair(" 33554432 , 2147483647"),
            Some((32 << 20, i32::MAX))
        );
        assert_eq!(parse_pair("1,2,3"), None);
        assert_eq!(parse_pair("-1,5"), None);
        assert_eq!(parse_pair("off"), None);
    }
}
