//! Training smoke and reproducibility tests on tiny configs (seconds on a CPU).
use davi_engine::train::config::TrainConfig;
use davi_engine::train::runner::{self, RunOptions};
use davi_engine::weights::model_file;
use std::path::{Path, PathBuf};

fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("davi-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("images")).unwrap();
    // three small synthetic "photos" with smooth structure and edges
    for i in 0..3u32 {
        let img = image::RgbImage::from_fn(40, 36, |x, y| {
            let v = |a: u32| (((x * (a + i) + y * (3 + a)) % 97) as f32 / 97.0 * 255.0) as u8;
            if (x / 10 + y / 9 + i) % 2 == 0 {
                image::Rgb([v(1), v(2), v(3)])
            } else {
                image::Rgb([200, (x * 5) as u8, (y * 6) as u8])
            }
        });
        img.save(d.join("images").join(format!("{i}.png"))).unwrap();
    }
    d
}

fn prior_cfg(dir: &Path, steps: u64) -> TrainConfig {
    let set = vec![
        format!("run.out_dir=\"{}\"", dir.join("prior").display()),
        format!("data.train_dir=\"{}\"", dir.join("images").display()),
        format!("data.heldout_dir=\"{}\"", dir.join("images").display()),
        format!("run.total_steps={steps}"),
    ];
    TrainConfig::preset("tiny-prior", &set).unwrap()
}

fn davi_cfg(dir: &Path, steps: u64, out: &str, teacher: &Path) -> TrainConfig {
    let set = vec![
        format!("run.out_dir=\"{}\"", dir.join(out).display()),
        format!("data.train_dir=\"{}\"", dir.join("images").display()),
        format!("data.heldout_dir=\"{}\"", dir.join("images").display()),
        format!("davi.teacher=\"{}\"", teacher.display()),
        format!("run.total_steps={steps}"),
        "run.checkpoint_every=2".into(),
        "run.eval_every=2".into(),
    ];
    TrainConfig::preset("tiny-davi", &set).unwrap()
}

/// libtorch's CPU generator is global to the process and these tests compare runs draw for
/// draw: they take turns.
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn quiet() -> RunOptions {
    RunOptions {
        quiet: true,
        ..Default::default()
    }
}

fn log_losses(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("eval").is_none())
        .collect()
}

#[test]
fn prior_then_davi_train_resume_and_export() {
    let _turn = exclusive();
    let dir = workdir("full");
    // prior: finite losses, exported model
    let r = runner::run(&prior_cfg(&dir, 4), &quiet()).unwrap();
    assert!(r.finished && r.last_terms.values().all(|v| v.is_finite()));
    let teacher = dir.join("prior/model.safetensors");
    let m = model_file::read_meta(&teacher).unwrap();
    assert_eq!(m.role, davi_engine::weights::ModelRole::Prior);

    // DAVI: 4 uninterrupted steps
    let full = davi_cfg(&dir, 4, "full", &teacher);
    let r = runner::run(&full, &quiet()).unwrap();
    assert!(r.finished);
    let a = log_losses(&dir.join("full"));
    assert_eq!(a.len(), 4);
    for rec in &a {
        for k in [
            "fake_score",
            "disc",
            "ikl",
            "con",
            "gt",
            "gan_g",
            "w_adv",
            "loss_g",
        ] {
            let v = rec[k]
                .as_f64()
                .unwrap_or_else(|| panic!("{k} missing in {rec}"));
            assert!(v.is_finite(), "{k} = {v}");
        }
    }
    // the same run interrupted after 2 steps and resumed reproduces steps 3 and 4
    let part = davi_cfg(&dir, 4, "part", &teacher);
    let r = runner::run(
        &part,
        &RunOptions {
            max_steps_now: Some(2),
            ..quiet()
        },
    )
    .unwrap();
    assert!(!r.finished && r.step == 2);
    assert!(
        runner::run(&part, &quiet()).is_err(),
        "an existing run needs --resume"
    );
    let r = runner::run(
        &part,
        &RunOptions {
            resume: true,
            ..quiet()
        },
    )
    .unwrap();
    assert!(r.finished && r.step == 4);
    let b = log_losses(&dir.join("part"));
    for k in ["fake_score", "ikl", "con", "gt", "loss_g"] {
        let (x, y) = (a[3][k].as_f64().unwrap(), b[3][k].as_f64().unwrap());
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1e-3),
            "step 4 {k}: uninterrupted {x} vs resumed {y}"
        );
    }
    // the exported generators agree too
    let (ga, gb) = (
        model_file::load(&dir.join("full/model.safetensors"), tch::Device::Cpu).unwrap(),
        model_file::load(&dir.join("part/model.safetensors"), tch::Device::Cpu).unwrap(),
    );
    let va = ga.vs.variables();
    for (k, v) in gb.vs.variables() {
        let d = (&v - &va[&k]).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{k} differs by {d}");
    }
    assert!(dir.join("full/curves.png").exists() && dir.join("full/grids").is_dir());

    // a truncated checkpoint is refused with a clear error
    let ck = dir.join("part/checkpoint.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 3]).unwrap();
    let mut more = part.clone();
    more.run.total_steps = 6;
    let e = runner::run(
        &more,
        &RunOptions {
            resume: true,
            ..quiet()
        },
    )
    .err()
    .expect("truncated checkpoint must be refused");
    let msg = e.to_string();
    assert!(
        msg.contains("checkpoint.safetensors")
            && (msg.contains("corrupt") || msg.contains("truncated")),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fake_score_loss_falls_on_a_fixed_batch() {
    let _turn = exclusive();
    use davi_engine::train::losses::hybrid_loss;
    use davi_engine::train::optim::{AdamW, AdamWConfig};
    use tch::{nn, Device, Kind, Tensor};
    tch::manual_seed(0);
    let cfg = TrainConfig::preset("tiny-prior", &[])
        .unwrap()
        .prior
        .unwrap();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = davi_engine::unet::UNetModel::new(&vs.root(), &cfg.unet).unwrap();
    let d = davi_engine::diffusion::Diffusion::davi();
    let x = Tensor::rand([4, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let t = Tensor::from_slice(&[10i64, 200, 500, 900]);
    let eps = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    let mut opt = AdamW::new(
        &vs,
        AdamWConfig {
            lr: 2e-3,
            ..Default::default()
        },
    );
    let loss = |net: &davi_engine::unet::UNetModel| {
        hybrid_loss(&d, net, &x, &t, &eps).loss.mean(Kind::Float)
    };
    let first = tch::no_grad(|| loss(&net).double_value(&[]));
    for _ in 0..30 {
        opt.zero_grad();
        loss(&net).backward();
        opt.step();
    }
    let last = tch::no_grad(|| loss(&net).double_value(&[]));
    assert!(last < 0.7 * first, "loss {first} -> {last}");
}

/// The exported EMA weights of two runs differ by at most `tol`.
fn max_weight_diff(a: &Path, b: &Path) -> f64 {
    let (ga, gb) = (
        model_file::load(a, tch::Device::Cpu).unwrap(),
        model_file::load(b, tch::Device::Cpu).unwrap(),
    );
    let va = ga.vs.variables();
    gb.vs
        .variables()
        .iter()
        .map(|(k, v)| (v - &va[k]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

#[test]
fn data_parallel_replicas_train_like_one_device_with_micro_batches() {
    let _turn = exclusive();
    // Two replicas (here both on the CPU, as two GPUs would be) split each batch in two
    // micro-batches, one each, in parallel threads, and sum their gradients; one device with
    // the same two micro-batches accumulates them. Same draws, same updates.
    let dir = workdir("dp");
    let mut single = prior_cfg(&dir, 3);
    single.prior.as_mut().unwrap().micro_batch = Some(1);
    single.run.out_dir = dir.join("prior-1");
    let mut dp = prior_cfg(&dir, 3);
    dp.run.device = "cpu,cpu".into();
    dp.run.out_dir = dir.join("prior-2");
    runner::run(&single, &quiet()).unwrap();
    runner::run(&dp, &quiet()).unwrap();
    let (a, b) = (
        log_losses(&dir.join("prior-1")),
        log_losses(&dir.join("prior-2")),
    );
    for (x, y) in a.iter().zip(&b) {
        let (x, y) = (x["loss"].as_f64().unwrap(), y["loss"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-5 * x.abs(), "prior loss {x} vs {y}");
    }
    let d = max_weight_diff(
        &dir.join("prior-1/model.safetensors"),
        &dir.join("prior-2/model.safetensors"),
    );
    assert!(d < 1e-5, "prior weights differ by {d}");

    let teacher = dir.join("prior-1/model.safetensors");
    let mut single = davi_cfg(&dir, 3, "davi-1", &teacher);
    single.davi.as_mut().unwrap().micro_batch = Some(1);
    let mut dp = davi_cfg(&dir, 3, "davi-2", &teacher);
    dp.run.device = "cpu,cpu".into();
    runner::run(&single, &quiet()).unwrap();
    let r = runner::run(&dp, &quiet()).unwrap();
    assert!(r.finished);
    let (a, b) = (
        log_losses(&dir.join("davi-1")),
        log_losses(&dir.join("davi-2")),
    );
    assert_eq!(a.len(), 3);
    for (x, y) in a.iter().zip(&b) {
        for k in ["fake_score", "disc", "ikl", "con", "gt", "loss_g"] {
            let (x, y) = (x[k].as_f64().unwrap(), y[k].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-4 * x.abs().max(1e-3),
                "step {} {k}: {x} vs {y}",
                b.len()
            );
        }
    }
    let d = max_weight_diff(
        &dir.join("davi-1/model.safetensors"),
        &dir.join("davi-2/model.safetensors"),
    );
    assert!(d < 1e-4, "generator weights differ by {d}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mixed_precision_needs_cuda_and_says_so() {
    let _turn = exclusive();
    let dir = workdir("amp");
    let mut cfg = prior_cfg(&dir, 1);
    cfg.run.precision = davi_engine::train::amp::Precision::Fp16;
    cfg.run.device = "cpu".into();
    let e = runner::run(&cfg, &quiet())
        .err()
        .expect("fp16 on a CPU must be refused")
        .to_string();
    assert!(e.contains("fp16") && e.contains("CUDA"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn loss_scaling_by_a_power_of_two_changes_nothing_but_the_scale() {
    // The fp16 path minus autocast: losses × 2^16, gradients ÷ 2^16 is exact in binary
    // floating point, so one DAVI step equals the fp32 step bit for bit, and the scaler
    // reports its scale.
    use davi_engine::train::amp::GradScaler;
    use davi_engine::train::davi::DaviTrainer;
    use tch::{Device, Kind, Tensor};
    let _turn = exclusive();
    let dir = workdir("scaler");
    let teacher = dir.join("teacher.safetensors");
    let meta = davi_engine::weights::ModelMeta {
        role: davi_engine::weights::ModelRole::Prior,
        ..davi_engine::weights::ModelMeta::tiny_generator(None)
    };
    davi_engine::weights::LoadedModel::random(meta, Device::Cpu, 3)
        .unwrap()
        .save(&teacher)
        .unwrap();
    let cfg = davi_cfg(&dir, 1, "unused", &teacher).davi.unwrap();
    let x = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let run = |scaler: Option<GradScaler>| {
        tch::manual_seed(5);
        let mut d = match scaler {
            Some(s) => DaviTrainer::with_loss_scaler(&cfg, 16, &[Device::Cpu], s).unwrap(),
            None => DaviTrainer::new(&cfg, 16, Device::Cpu).unwrap(),
        };
        tch::manual_seed(6);
        let terms = d.step(&x, &mut davi_engine::restore::SplitMix64(7));
        (terms, d.primary().gen_vs.variables())
    };
    let (t32, w32) = run(None);
    let (t16, w16) = run(Some(GradScaler::default()));
    assert_eq!(t16["amp_scale"], 65536.0);
    assert_eq!(t16["amp_skipped"], 0.0);
    assert_eq!(t32["loss_g"], t16["loss_g"]);
    for (k, v) in &w32 {
        let d = (v - &w16[k]).abs().max().double_value(&[]);
        assert!(d == 0.0, "{k} differs by {d}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_helpers_cut_the_log_and_remove_only_dead_writers_temporaries() {
    use davi_engine::train::monitor::truncate_log;
    let dir =
        std::env::temp_dir().join(format!("davi-train-{}-resume-helpers", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The log: records past the checkpoint's step and a half-written last line are cut; a
    // line without a readable step is kept; cutting twice changes nothing.
    let log = dir.join("log.jsonl");
    assert_eq!(truncate_log(&log, 3).unwrap(), 0, "no log yet");
    let kept = concat!(
        "{\"step\":1,\"loss\":0.5}\n{\"step\":2,\"loss\":0.4}\n{\"eval\":true,\"step\":2}\n",
        "not json\n{\"step\":3,\"loss\":0.3}\n",
    );
    let cut = "{\"eval\":true,\"step\":4}\n{\"step\":5,\"lo";
    std::fs::write(&log, format!("{kept}{cut}")).unwrap();
    assert_eq!(truncate_log(&log, 3).unwrap(), cut.len() as u64);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), kept);
    assert_eq!(truncate_log(&log, 3).unwrap(), 0);
    std::fs::write(&log, "{\"step\":2}\n{\"step\":3").unwrap();
    truncate_log(&log, 3).unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "{\"step\":2}\n",
        "a half-written record goes even at the checkpoint's step"
    );
    truncate_log(&log, 0).unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "",
        "a run starting afresh starts an empty log"
    );

    // Temporary files of `write_atomic`: only those of processes that no longer run go.
    let ours = model_file::temporary_name("checkpoint.safetensors", 42);
    assert!(ours.starts_with(".checkpoint.safetensors.tmp42."), "{ours}");
    assert_eq!(model_file::temporary_pid(&ours), Some(42));
    // Earlier versions' names (no host) still count as this machine's.
    assert_eq!(
        model_file::temporary_pid(".checkpoint.safetensors.tmp42"),
        Some(42)
    );
    // Another machine's temporary is never this machine's to judge.
    let foreign = ".checkpoint.safetensors.tmp42.another-machine-that-is-not-this-one";
    assert_eq!(model_file::temporary_pid(foreign), None);
    for not_temp in [
        "checkpoint.safetensors",
        ".tmp42",
        "x.tmp42",
        ".x.tmp",
        ".x.tmp4a",
        ".x.tmp-1",
    ] {
        assert_eq!(model_file::temporary_pid(not_temp), None, "{not_temp}");
    }
    let live = dir.join(model_file::temporary_name("a.png", std::process::id()));
    let dead = dir.join(model_file::temporary_name("a.png", u32::MAX - 1));
    let dead_other = dir.join(model_file::temporary_name("b.png", u32::MAX - 1));
    let lookalike = dir.join(".a.png.tmp.x.tmp4294967294");
    let foreign = dir.join(".a.png.tmp4294967294.another-machine-that-is-not-this-one");
    for p in [&live, &dead, &dead_other, &lookalike, &foreign] {
        std::fs::write(p, b"partial").unwrap();
    }
    model_file::write_atomic(&dir.join("a.png"), b"whole").unwrap();
    assert!(
        !live.exists(),
        "write_atomic renamed its own temporary file"
    );
    assert!(
        !dead.exists(),
        "a killed writer's temporary of the same name goes with the next write"
    );
    assert!(
        dead_other.exists() && lookalike.exists(),
        "write_atomic touches only temporaries of its own name"
    );
    std::fs::write(&live, b"partial").unwrap();
    assert_eq!(
        model_file::remove_stale_temporaries(&dir),
        2,
        "the folder sweep takes every dead writer's temporary"
    );
    assert!(live.exists() && !dead_other.exists() && !lookalike.exists() && log.exists());
    assert!(
        foreign.exists(),
        "another machine's temporary stays: its writer may still run there"
    );
    assert_eq!(std::fs::read(dir.join("a.png")).unwrap(), b"whole");
    std::fs::remove_dir_all(&dir).ok();
}
