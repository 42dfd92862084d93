//! Benchmark (not a timed test): one-step restore vs the bare U-Net forward, FFHQ-256.
//!
//! Build and run (see docs/performance.md and scripts/bench.sh):
//!
//! ```text
//! cargo bench -p davi-engine --bench restore --no-run
//! target/release/deps/restore-<hash>            # or: cargo bench -p davi-engine --bench restore
//! ```
//!
//! What it measures, for `UNetConfig::ffhq256()` at 256×256, batch 1, random weights
//! (`LoadedModel::random`, seed 0; the zero-initialised layers — every ResBlock's
//! `out_layers.3`, every attention `proj_out`, the head `out.2` — are re-drawn with
//! PyTorch's default bound and the GroupNorm affines jittered, so that the output is not
//! identically zero and numerical comparisons mean something; the cost is identical):
//!
//! - (a) `net.forward(x, t)` under `tch::no_grad`, t = 999;
//! - (b) `Restorer::restore_lifted` with h = 0.1 (one 256 tile), which adds the seeded
//!   perturbation, the bridge interpolation, the ε slice and `tanh(x - std_fwd·ε)`;
//! - the ratio (b)/(a) (target ≤ 1.05);
//! - experiments: intra-op threads 1 vs 2, channels-last activations (tch 0.24 has no
//!   memory-format API; a channels-last tensor is made with the stride trick
//!   `x.permute([0,2,3,1]).contiguous().permute([0,3,1,2])`, which libtorch's
//!   `suggest_memory_format` recognises), channels-last activations *and* conv weights
//!   (weights re-strided in place with `set_data`), autograd left on (what `no_grad` saves;
//!   tch 0.24 exposes no inference-mode guard), and bf16 weights/activations (fast on CPUs
//!   with AMX/AVX512-BF16, but not within 1e-4), also with channels-last. Every variant is
//!   timed *paired* with its baseline (alternating call by call) and reports wall and
//!   process CPU time, and max |Δ| against the
//!   f32 reference output. These CPU experiments time bf16 one-step latency with the steps
//!   composed in this file (`one_step_in`, checked bit-identical to `restore_lifted` in f32),
//!   written before `Restorer::set_precision` existed; the GPU matrix uses the `Restorer`'s
//!   own bf16 path (docs/performance.md, "Reduced precision").
//!
//! Environment:
//!
//! Variables (default in brackets):
//! - `DAVI_BENCH_REPS` [5 (CPU), 30 (CUDA)]: timed repetitions per measurement;
//! - `DAVI_BENCH_WARMUP` [1 (CPU), 5 (CUDA)]: untimed repetitions first;
//! - `DAVI_BENCH_THREADS` [libtorch's default]: intra-op threads of the main measurement;
//! - `DAVI_BENCH_EXPERIMENTS` [`threads,channels_last,grad,bf16`]: which experiments (CPU);
//!   `none` for none;
//! - `DAVI_BENCH_EXPORT` [unset]: a folder: writes `model.safetensors`, `input.npy` (x),
//!   `forward_tch.npy` (f32 output of (a)), `tch.json` (timings) for
//!   `scripts/bench_pytorch.py`;
//! - `DAVI_BENCH_DEVICE` [`cpu`]: `cuda`/`cuda:N`: fp32 (TF32 convolutions, libtorch's cuDNN
//!   default) and bf16, batch 1 and 32;
//! - `DAVI_BENCH_BATCHES` [`1,32`]: batch sizes of the CUDA run;
//! - `DAVI_BENCH_MATRIX` [unset]: `1`: run the CUDA matrix on the CPU (dry run of the GPU
//!   script);
//! - `DAVI_BENCH_MALLOPT` [the CLI's, `134217728,1073741824`]: `MMAP_BYTES,TRIM_BYTES`: glibc
//!   `mallopt` thresholds set at start; `off` keeps glibc's defaults (see docs/performance.md);
//! - `DAVI_BENCH_SERVE` [unset]: `1`: co-process for `bench_pytorch.py --tch-bin` (paired
//!   tch/PyTorch timing).
use davi_engine::diffusion::schedule::timesteps;
use davi_engine::restore::{seeded_normal, Precision, RestoreOptions, Restorer};
use davi_engine::tiling::Tiling;
use davi_engine::unet::UNetConfig;
use davi_engine::weights::{LoadedModel, ModelMeta, ModelRole};
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

const SIZE: i64 = 256;
const T: i64 = 999;
const H: f64 = 0.1;
const SEED: u64 = 1234;

/// Wall-clock samples plus the process CPU time (all threads, user + system) of each call.
/// On a loaded machine the wall clock mostly measures the scheduler; the CPU time of a
/// single-threaded call is what the call itself costs (≈ its wall time on an idle core).
#[derive(Clone, Debug, Default)]
struct Stats {
    samples: Vec<f64>,
    cpu: Vec<f64>,
}

fn median_of(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

impl Stats {
    fn median(&self) -> f64 {
        median_of(&self.samples)
    }
    fn min(&self) -> f64 {
        self.samples.iter().cloned().fold(f64::INFINITY, f64::min)
    }
    fn cpu_median(&self) -> f64 {
        median_of(&self.cpu)
    }
    fn cpu_min(&self) -> f64 {
        self.cpu.iter().cloned().fold(f64::INFINITY, f64::min)
    }
    fn show(&self) -> String {
        format!(
            "wall median {:.4} s  min {:.4} s | cpu median {:.4} s  min {:.4} s  (n={})",
            self.median(),
            self.min(),
            self.cpu_median(),
            self.cpu_min(),
            self.samples.len()
        )
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "median_s": self.median(),
            "min_s": self.min(),
            "samples_s": self.samples,
            "cpu_median_s": self.cpu_median(),
            "cpu_min_s": self.cpu_min(),
            "cpu_samples_s": self.cpu,
        })
    }
}

/// Process CPU time (user + system, all threads, exited ones included) from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after "pid (comm)": state is field 3, utime 14, stime 15
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Warm up, then time `reps` calls of `f` (synchronising the device around each).
fn time_it(
    device: Device,
    warmup: usize,
    reps: usize,
    mut f: impl FnMut() -> Tensor,
) -> (Stats, Tensor) {
    let mut last = None;
    for _ in 0..warmup {
        last = Some(f());
    }
    sync(device);
    let mut st = Stats::default();
    for _ in 0..reps.max(1) {
        sync(device);
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let out = f();
        sync(device);
        st.samples.push(t0.elapsed().as_secs_f64());
        st.cpu.push(cpu_seconds() - c0);
        last = Some(out);
    }
    (st, last.expect("at least one call"))
}

/// Two measurements taken alternately, rep by rep (order flipped every rep), so that drifting
/// background load affects both alike.
struct Paired {
    base: Stats,
    var: Stats,
    base_out: Tensor,
    var_out: Tensor,
}

impl Paired {
    /// Median over reps of baseline_i / variant_i (wall clock).
    fn speedup(&self) -> f64 {
        let r: Vec<f64> = self
            .base
            .samples
            .iter()
            .zip(&self.var.samples)
            .map(|(b, v)| b / v)
            .collect();
        median_of(&r)
    }
    /// The same on CPU time.
    fn cpu_speedup(&self) -> f64 {
        let r: Vec<f64> = self
            .base
            .cpu
            .iter()
            .zip(&self.var.cpu)
            .map(|(b, v)| b / v)
            .collect();
        median_of(&r)
    }
}

fn paired(
    device: Device,
    warmup: usize,
    reps: usize,
    mut base: impl FnMut() -> Tensor,
    mut var: impl FnMut() -> Tensor,
) -> Paired {
    let mut bo = None;
    let mut vo = None;
    for _ in 0..warmup {
        bo = Some(base());
        vo = Some(var());
    }
    let (mut bs, mut vs) = (Stats::default(), Stats::default());
    let timed = |f: &mut dyn FnMut() -> Tensor| {
        sync(device);
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let out = f();
        sync(device);
        ((t0.elapsed().as_secs_f64(), cpu_seconds() - c0), out)
    };
    for i in 0..reps.max(1) {
        if i % 2 == 0 {
            let (tb, ob) = timed(&mut base);
            let (tv, ov) = timed(&mut var);
            bs.samples.push(tb.0);
            bs.cpu.push(tb.1);
            vs.samples.push(tv.0);
            vs.cpu.push(tv.1);
            bo = Some(ob);
            vo = Some(ov);
        } else {
            let (tv, ov) = timed(&mut var);
            let (tb, ob) = timed(&mut base);
            bs.samples.push(tb.0);
            bs.cpu.push(tb.1);
            vs.samples.push(tv.0);
            vs.cpu.push(tv.1);
            bo = Some(ob);
            vo = Some(ov);
        }
    }
    Paired {
        base: bs,
        var: vs,
        base_out: bo.unwrap(),
        var_out: vo.unwrap(),
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Float).to_device(Device::Cpu) - b.to_kind(Kind::Float).to_device(Device::Cpu))
        .abs()
        .max()
        .double_value(&[])
}

fn max_abs(a: &Tensor) -> f64 {
    a.to_kind(Kind::Float).abs().max().double_value(&[])
}

/// A channels-last view-compatible copy (NHWC strides, NCHW shape).
fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// `LoadedModel::random` zero-initialises the last conv of every ResBlock, every attention
/// `proj_out` and the head (guided-diffusion's init), which makes the network output 0.
/// Re-draw those with PyTorch's default bound `U(±1/√fan_in)` and jitter the GroupNorm
/// affines, in sorted name order so the weights are the same on every run.
fn make_weights_nontrivial(vs: &nn::VarStore, seed: i64) {
    tch::manual_seed(seed);
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    tch::no_grad(|| {
        for name in names {
            let mut v = vars[name].shallow_clone();
            let is_norm = name.ends_with("in_layers.0.weight")
                || name.ends_with("out_layers.0.weight")
                || name.ends_with(".norm.weight")
                || name == "out.0.weight";
            let is_norm_bias = name.ends_with("in_layers.0.bias")
                || name.ends_with("out_layers.0.bias")
                || name.ends_with(".norm.bias")
                || name == "out.0.bias";
            if is_norm {
                v.copy_(&(Tensor::randn_like(&v) * 0.1 + 1.0));
            } else if is_norm_bias {
                v.copy_(&(Tensor::randn_like(&v) * 0.1));
            } else if name.ends_with(".weight") && v.dim() >= 2 && max_abs(&v) == 0.0 {
                let fan_in: i64 = v.size()[1..].iter().product();
                let bound = 1.0 / (fan_in as f64).sqrt();
                v.copy_(&((Tensor::rand_like(&v) * 2.0 - 1.0) * bound));
                let bias = name.trim_end_matches("weight").to_string() + "bias";
                if let Some(b) = vars.get(&bias) {
                    let mut b = b.shallow_clone();
                    b.copy_(&((Tensor::rand_like(&b) * 2.0 - 1.0) * bound));
                }
            }
        }
    });
}

/// Re-stride every 4-D variable (the conv weights) in place, channels-last or contiguous.
fn set_conv_weights_channels_last(vs: &nn::VarStore, on: bool) {
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            if v.dim() == 4 {
                let nd = if on {
                    channels_last(&v)
                } else {
                    v.contiguous()
                };
                v.set_data(&nd);
            }
        }
    });
}

fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn build_restorer(device: Device) -> Restorer {
    // Built through serde so fields added to ModelMeta later take their defaults.
    let meta: ModelMeta = serde_json::from_value(serde_json::json!({
        "role": ModelRole::Generator,
        "unet": UNetConfig::ffhq256(),
        "diffusion_steps": 1000,
        "perturb_h": H,
        "provenance": { "source": "benches/restore.rs: LoadedModel::random(seed 0) + non-zero \
            re-draw (seed 1)" },
    }))
    .expect("bench model metadata");
    let model = LoadedModel::random(meta, device, 0).expect("ffhq256 builds");
    make_weights_nontrivial(&model.vs, 1);
    Restorer::new(model, device)
}

fn input(batch: i64, device: Device) -> Tensor {
    // A lifted-measurement-like image in [-1, 1].
    (seeded_normal(&[batch, 3, SIZE, SIZE], 7) * 0.5)
        .clamp(-1.0, 1.0)
        .to_device(device)
}

fn restore_opts() -> RestoreOptions {
    RestoreOptions {
        perturb_h: Some(H),
        seed: SEED,
        tiling: Some(Tiling {
            tile: SIZE,
            overlap: 32,
        }),
        measurement_noise: None,
    }
}

fn restore_once(r: &Restorer, y: &Tensor) -> Tensor {
    r.restore_lifted(y, &restore_opts(), &mut |_| true)
        .expect("restore runs")
}

/// The single-tile path of `Restorer::restore_lifted` spelled out with the network run in
/// `kind` (on a restorer whose weights are already of that kind): perturbed interpolation with
/// the same seeded noise, one forward at t = 999, `tanh(x_in - std_fwd·ε)`. In f32 it must
/// equal `restore_lifted` exactly (checked below); the CPU bf16 experiment times it (the same
/// steps `Restorer::set_precision` now gives `restore_lifted`).
fn one_step_in(r: &Restorer, y: &Tensor, kind: Kind) -> Tensor {
    tch::no_grad(|| {
        let device = r.device;
        let y = y.to_device(device).to_kind(Kind::Float);
        let b = y.size()[0];
        let t = timesteps(T, b, device);
        let z = seeded_normal(&y.size(), SEED).to_device(device);
        let x_in = r.bridge.perturbed_interpolation(&t, &y, &y, H, &z);
        let out = r.model.net.forward(&x_in.to_kind(kind), &t);
        let eps = out.narrow(1, 0, 3).to_kind(Kind::Float);
        r.bridge.generator_output(&t, &x_in, &eps)
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    /// glibc's `mallopt(3)` (declared here so the bench needs no `libc` dependency).
    fn mallopt(param: i32, value: i32) -> i32;
}
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
unsafe fn mallopt(_param: i32, _value: i32) -> i32 {
    0 // not glibc: nothing to tune
}
const M_TRIM_THRESHOLD: i32 = -1;
const M_MMAP_THRESHOLD: i32 = -3;

/// The thresholds the `davi` CLI sets in `main` (`host-example/cli/src/runtime.rs`,
/// `DEFAULT_MALLOPT`): the bench measures what the CLI ships unless told otherwise.
const CLI_MALLOPT: [i32; 2] = [128 << 20, 1 << 30];

/// Set glibc's malloc thresholds before anything is allocated: by default the CLI's
/// (`CLI_MALLOPT`); `DAVI_BENCH_MALLOPT=MMAP_BYTES,TRIM_BYTES` sets others, and
/// `DAVI_BENCH_MALLOPT=off` (or empty) keeps glibc's defaults. With the defaults, the
/// multi-megabyte activations are mmap'd and unmapped (or trimmed) on every forward and
/// page-faulted in again on the next one; raising both thresholds keeps that memory in the
/// heap across calls (docs/performance.md).
fn apply_mallopt() {
    let v = std::env::var("DAVI_BENCH_MALLOPT")
        .unwrap_or_else(|_| format!("{},{}", CLI_MALLOPT[0], CLI_MALLOPT[1]));
    if v.trim().is_empty() || v.trim() == "off" {
        // stderr: stdout is the co-process protocol in DAVI_BENCH_SERVE mode.
        eprintln!("glibc malloc thresholds: glibc's defaults (DAVI_BENCH_MALLOPT={v:?})");
        return;
    }
    let parts: Vec<i32> = v.split(',').filter_map(|p| p.trim().parse().ok()).collect();
    if parts.len() != 2 {
        eprintln!("bench: DAVI_BENCH_MALLOPT wants MMAP_BYTES,TRIM_BYTES or off (got {v:?})");
        std::process::exit(2);
    }
    // SAFETY: mallopt only changes allocator parameters; called before other threads exist.
    let (a, b) = unsafe {
        (
            mallopt(M_MMAP_THRESHOLD, parts[0]),
            mallopt(M_TRIM_THRESHOLD, parts[1]),
        )
    };
    eprintln!(
        "mallopt(M_MMAP_THRESHOLD, {}) = {a}, mallopt(M_TRIM_THRESHOLD, {}) = {b} (1 = accepted)",
        parts[0], parts[1]
    );
}

fn main() {
    apply_mallopt();
    let device_s = std::env::var("DAVI_BENCH_DEVICE").unwrap_or_else(|_| "cpu".into());
    let device = davi_engine::parse_device(&device_s).unwrap_or_else(|e| {
        eprintln!("bench: {e}");
        std::process::exit(2)
    });
    if std::env::var("DAVI_BENCH_SERVE")
        .map(|v| v == "1")
        .unwrap_or(false)
    {
        serve();
        return;
    }
    // DAVI_BENCH_MATRIX=1 runs the GPU matrix (fp32/bf16 x batches) on the CPU: a dry run
    // of the GPU script on a machine without one.
    if device == Device::Cpu
        && std::env::var("DAVI_BENCH_MATRIX")
            .map(|v| v != "1")
            .unwrap_or(true)
    {
        run_cpu();
    } else {
        run_matrix(device);
    }
}

fn run_cpu() {
    let device = Device::Cpu;
    let reps = env_usize("DAVI_BENCH_REPS", 5);
    let warmup = env_usize("DAVI_BENCH_WARMUP", 1);
    let default_threads = tch::get_num_threads();
    let threads = env_usize("DAVI_BENCH_THREADS", default_threads as usize) as i32;
    tch::set_num_threads(threads);
    let experiments = std::env::var("DAVI_BENCH_EXPERIMENTS")
        .unwrap_or_else(|_| "threads,channels_last,grad,bf16".into());
    let want = |e: &str| experiments.split(',').any(|x| x.trim() == e);

    println!("== davi-engine bench: FFHQ-256 U-Net, 256x256, batch 1, CPU, random weights ==");
    println!(
        "cpu: {} ({} logical CPUs); libtorch default intra-op threads {default_threads}, using \
            {threads}; interop threads {}",
        cpu_model_name(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        tch::get_num_interop_threads()
    );
    println!(
        "libtorch: mkldnn(oneDNN) {}  mkl {}  openmp {}",
        tch::utils::has_mkldnn(),
        tch::utils::has_mkl(),
        tch::utils::has_openmp()
    );
    println!(
        "reps {reps}, warm-up {warmup}; every comparison is paired: the two sides alternate \
        rep by rep (order flipped each rep), so background load hits both alike"
    );

    let r = build_restorer(device);
    println!(
        "parameters: {} ({} tensors)",
        r.model.parameter_count(),
        r.model.vs.variables().len()
    );
    let x = input(1, device);
    let t = timesteps(T, 1, device);
    let fwd = || tch::no_grad(|| r.model.net.forward(&x, &t));

    // (a) bare forward and (b) one-step restore, paired.
    let p = paired(device, warmup, reps, fwd, || restore_once(&r, &x));
    let (sa, sb) = (&p.base, &p.var);
    let (ref_out, ref_restore) = (p.base_out.shallow_clone(), p.var_out.shallow_clone());
    println!("(a) forward (no_grad)           {}", sa.show());
    println!("(b) restore_lifted (h=0.1)      {}", sb.show());
    let ratio = 1.0 / p.speedup();
    println!(
        "ratio (b)/(a): wall paired median {:.4}, median/median {:.4}, min/min {:.4}; cpu paired \
            median {:.4}, min/min {:.4}  (target <= 1.05)",
        ratio,
        sb.median() / sa.median(),
        sb.min() / sa.min(),
        1.0 / p.cpu_speedup(),
        sb.cpu_min() / sa.cpu_min()
    );
    println!(
        "output: max |eps/v| {:.4e}; restore output range max |x| {:.4}",
        max_abs(&ref_out),
        max_abs(&ref_restore)
    );
    let manual_d = max_abs_diff(&one_step_in(&r, &x, Kind::Float), &ref_restore);
    println!(
        "check: bench-composed one-step (used for bf16) vs restore_lifted, f32: max|d| \
        {manual_d:.2e}"
    );
    // The part of a restore outside the network, timed alone (load-insensitive, unlike the
    // ratio of two multi-second measurements).
    let eps = ref_out.narrow(1, 0, 3);
    let (so, _) = time_it(device, 1, 20, || {
        tch::no_grad(|| {
            let tt = timesteps(T, 1, device);
            let z = seeded_normal(&x.size(), SEED);
            let x_in = r.bridge.perturbed_interpolation(&tt, &x, &x, H, &z);
            r.bridge.generator_output(&tt, &x_in, &eps)
        })
    });
    println!(
        "restore work outside the network (seeded noise, bridge interpolation, tanh): median {:.2} \
            ms, min {:.2} ms = {:.3}% of the forward median",
        1e3 * so.median(),
        1e3 * so.min(),
        100.0 * so.median() / sa.median()
    );

    let mut report = serde_json::json!({
        "device": "cpu",
        "cpu": cpu_model_name(),
        "threads": threads,
        "default_threads": default_threads,
        "reps": reps,
        "warmup": warmup,
        "forward": sa.json(),
        "restore": sb.json(),
        "ratio_restore_over_forward_paired_median": ratio,
        "ratio_restore_over_forward_median": sb.median() / sa.median(),
        "ratio_restore_over_forward_min": sb.min() / sa.min(),
        "ratio_restore_over_forward_cpu_paired_median": 1.0 / p.cpu_speedup(),
        "ratio_restore_over_forward_cpu_min": sb.cpu_min() / sa.cpu_min(),
        "restore_overhead_outside_network": so.json(),
        "experiments": {},
    });

    if let Ok(dir) = std::env::var("DAVI_BENCH_EXPORT") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("export folder");
        r.model
            .save(&dir.join("model.safetensors"))
            .expect("save model");
        x.write_npy(dir.join("input.npy")).expect("write input");
        ref_out
            .write_npy(dir.join("forward_tch.npy"))
            .expect("write output");
        println!(
            "exported model.safetensors, input.npy, forward_tch.npy to {}",
            dir.display()
        );
    }

    let mut exps = serde_json::Map::new();
    let mut record = |key: &str, label: &str, p: &Paired, reference: &Tensor| {
        let d = max_abs_diff(&p.var_out, reference);
        println!(
            "[{label}]\n    baseline {}\n    variant  {}\n    speed-up (baseline/variant): wall \
                paired median x{:.3}, min/min x{:.3}; cpu paired median x{:.3}; max|d| {d:.2e}",
            p.base.show(),
            p.var.show(),
            p.speedup(),
            p.base.min() / p.var.min(),
            p.cpu_speedup()
        );
        exps.insert(
            key.into(),
            serde_json::json!({ "label": label, "baseline": p.base.json(), "variant": p.var.json(),
                "speedup_paired_median": p.speedup(), "speedup_min": p.base.min() / p.var.min(),
                "cpu_speedup_paired_median": p.cpu_speedup(), "max_abs_diff": d }),
        );
    };
    if want("threads") {
        let other = if threads == 1 { 2 } else { 1 };
        let base = || {
            tch::set_num_threads(threads);
            fwd()
        };
        let var = || {
            tch::set_num_threads(other);
            fwd()
        };
        let p = paired(device, warmup, reps, base, var);
        tch::set_num_threads(threads);
        record(
            &format!("threads_{other}_vs_{threads}"),
            &format!("forward, {threads} threads vs {other} thread(s)"),
            &p,
            &ref_out,
        );
    }
    if want("channels_last") {
        let xcl = channels_last(&x);
        let p = paired(device, warmup, reps, fwd, || {
            tch::no_grad(|| r.model.net.forward(&xcl, &t))
        });
        record(
            "channels_last_input",
            "forward, channels-last input (weights contiguous)",
            &p,
            &ref_out,
        );
    }
    if want("grad") {
        // Autograd on: what no_grad saves (tch 0.24 has no inference-mode guard).
        let p = paired(device, warmup, reps, fwd, || {
            r.model.net.forward(&x, &t).detach()
        });
        record(
            "grad_enabled",
            "forward, no_grad vs autograd on (speed-up < 1 = no_grad is faster)",
            &p,
            &ref_out,
        );
    }
    println!(
        "[inference mode] not measurable in tch: tch 0.24 / torch-sys 0.24 expose no \
        InferenceMode guard (bench_pytorch.py measures it on the PyTorch side)"
    );
    if want("channels_last") || want("bf16") {
        // A second copy of the same weights, modified in place, paired with the untouched one.
        let mut r2 = build_restorer(device);
        if want("channels_last") {
            set_conv_weights_channels_last(&r2.model.vs, true);
            let xcl = channels_last(&x);
            let p = paired(device, warmup, reps, fwd, || {
                tch::no_grad(|| r2.model.net.forward(&xcl, &t))
            });
            record(
                "channels_last_input_weights",
                "forward, channels-last input and conv weights",
                &p,
                &ref_out,
            );
            let p = paired(
                device,
                warmup,
                reps,
                || restore_once(&r, &x),
                || restore_once(&r2, &channels_last(&x)),
            );
            record(
                "channels_last_restore",
                "restore_lifted, channels-last input and conv weights",
                &p,
                &ref_restore,
            );
            set_conv_weights_channels_last(&r2.model.vs, false);
        }
        if want("bf16") {
            r2.model.vs.bfloat16();
            let xb = x.to_kind(Kind::BFloat16);
            let p = paired(device, warmup, reps, fwd, || {
                tch::no_grad(|| r2.model.net.forward(&xb, &t))
            });
            record(
                "bf16_forward",
                "forward, f32 vs bf16 weights and activations",
                &p,
                &ref_out,
            );
            let p = paired(
                device,
                warmup,
                reps,
                || restore_once(&r, &x),
                || one_step_in(&r2, &x, Kind::BFloat16),
            );
            record(
                "bf16_one_step",
                "one-step restore, f32 restore_lifted vs bf16 (bench-composed)",
                &p,
                &ref_restore,
            );
            set_conv_weights_channels_last(&r2.model.vs, true);
            let xbcl = channels_last(&xb);
            let p = paired(device, warmup, reps, fwd, || {
                tch::no_grad(|| r2.model.net.forward(&xbcl, &t))
            });
            record(
                "bf16_channels_last_forward",
                "forward, f32 vs bf16 channels-last (input and conv weights)",
                &p,
                &ref_out,
            );
        }
    }
    report["experiments"] = serde_json::Value::Object(exps);
    if let Ok(dir) = std::env::var("DAVI_BENCH_EXPORT") {
        let p = PathBuf::from(dir).join("tch.json");
        std::fs::write(&p, serde_json::to_string_pretty(&report).unwrap()).expect("write tch.json");
        println!("wrote {}", p.display());
    }
}

/// Co-process mode for `scripts/bench_pytorch.py --tch-bin`: build the same model, then for
/// every stdin line `forward` / `restore` run it once and print its seconds; anything else
/// ends. The driver alternates tch and PyTorch calls, so their ratio is paired.
fn serve() {
    use std::io::{BufRead, Write};
    let device = Device::Cpu;
    if let Ok(n) = std::env::var("DAVI_BENCH_THREADS") {
        if let Ok(n) = n.trim().parse::<i32>() {
            tch::set_num_threads(n);
        }
    }
    let r = build_restorer(device);
    let x = input(1, device);
    let t = timesteps(T, 1, device);
    let mut out = std::io::stdout();
    writeln!(out, "ready threads={}", tch::get_num_threads()).unwrap();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let (t0, c0) = (Instant::now(), cpu_seconds());
        let y = match line.trim() {
            "forward" => tch::no_grad(|| r.model.net.forward(&x, &t)),
            "restore" => restore_once(&r, &x),
            _ => break,
        };
        let (secs, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
        writeln!(out, "{secs} {cpu} {:.6e}", max_abs(&y)).unwrap();
        out.flush().unwrap();
    }
}

fn run_matrix(device: Device) {
    let reps = env_usize("DAVI_BENCH_REPS", 30);
    let warmup = env_usize("DAVI_BENCH_WARMUP", 5);
    let batches: Vec<i64> = std::env::var("DAVI_BENCH_BATCHES")
        .unwrap_or_else(|_| "1,32".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("== davi-engine bench: FFHQ-256 U-Net, 256x256, {device:?}, random weights ==");
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
        println!(
            "reps {reps}, warm-up {warmup}, batches {batches:?}, cudnn benchmark on; fp32 \
            convolutions use TF32 (libtorch's cuDNN default), matmuls full fp32"
        );
    } else {
        println!(
            "reps {reps}, warm-up {warmup}, batches {batches:?} (GPU matrix dry run on the CPU)"
        );
    }
    // The restore's perturbation noise is drawn on the CPU (seeded SplitMix64 + Box-Muller)
    // and copied over: time that alone per batch size, since on a GPU it is not negligible.
    for &b in &batches {
        let (s, _) = time_it(Device::Cpu, 1, 5, || {
            seeded_normal(&[b, 3, SIZE, SIZE], SEED).to_device(device)
        });
        println!(
            "[b={b}] seeded_normal on the CPU + copy to {device:?}: median {:.2} ms",
            1e3 * s.median()
        );
    }
    let mut r = build_restorer(device);
    let mut refs = Vec::new();
    for kind in [Kind::Float, Kind::BFloat16] {
        if kind == Kind::BFloat16 {
            // The restore path hosts get with `--precision bf16` / DaviContextOptions.precision.
            if let Err(e) = r.set_precision(Precision::Bf16) {
                println!("[bf16] not run: {e}");
                break;
            }
        }
        let name = if kind == Kind::Float {
            "fp32/tf32"
        } else {
            "bf16"
        };
        for (i, &b) in batches.iter().enumerate() {
            let x = input(b, device);
            let xk = x.to_kind(kind);
            let t = timesteps(T, b, device);
            let (sa, out) = time_it(device, warmup, reps, || {
                tch::no_grad(|| r.model.net.forward(&xk, &t))
            });
            // Both through Restorer::restore_lifted (bf16 with Restorer::set_precision).
            let (sb, _) = time_it(device, warmup, reps, || restore_once(&r, &x));
            let diff = if kind == Kind::Float {
                refs.push(
                    out.narrow(0, 0, 1)
                        .to_kind(Kind::Float)
                        .to_device(Device::Cpu),
                );
                String::new()
            } else {
                format!(
                    "  max|d| vs fp32 {:.2e}",
                    max_abs_diff(&out.narrow(0, 0, 1), &refs[i])
                )
            };
            println!(
                "[{name} b={b}] forward {}  ({:.2} ms/img)\n[{name} b={b}] restore {}  ({:.2} \
                    ms/img)  ratio {:.3}{diff}",
                sa.show(),
                1e3 * sa.median() / b as f64,
                sb.show(),
                1e3 * sb.median() / b as f64,
                sb.median() / sa.median()
            );
        }
    }
}
