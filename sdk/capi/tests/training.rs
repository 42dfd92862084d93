//! Training through the C ABI: the `davi_training_*` functions in-process, and
//! `tests/c/training.c`, a C client written only against `include/davi.h`, under
//! AddressSanitizer and UBSan.
//!
//! What must hold (docs/C_API.md, "Training"):
//! - a tiny prior and a tiny DAVI run train through the C API; a DAVI run cancelled after 2
//!   steps (from its progress callback, in libdavi's thread) and resumed from its run
//!   directory reports exactly the losses and held-out PSNR of the uninterrupted run, step for
//!   step; the exported generator restores through `davi_context_new` / `davi_restore`;
//! - bad configs are `DAVI_STATUS_INVALID_CONFIG`, missing data `NOT_FOUND`, a run directory
//!   holding a run without `resume` `INVALID_ARGUMENT`, a corrupt checkpoint `MODEL_ERROR`
//!   (the file is left byte for byte), a checkpoint that cannot be written (a file size
//!   limit, what a full disk looks like to the writer) `IO_ERROR` with the previous
//!   checkpoint intact and resumable; each with a message naming the cause;
//! - one run at a time per handle (`BUSY`), cancel from any thread, `davi_training_free` of a
//!   running handle cancels and joins its thread, a panic inside training is a status.
//!
//! libtorch's CPU generator is process-wide and these tests compare runs draw for draw, so
//! the in-process tests take turns (the C client is a process of its own).
mod common;

use common::*;
use davi::*;
use davi_sdk::DaviStatus as S;
use std::ffi::{c_char, c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Three small synthetic photographs (as the engine's training tests use) and a tiny prior
/// trained through the C API, shared by the tests of this binary.
struct Fixture {
    dir: PathBuf,
    images: PathBuf,
    teacher: PathBuf,
}

fn write_images(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..3u32 {
        let img = image::RgbImage::from_fn(40, 36, |x, y| {
            let v = |a: u32| (((x * (a + i) + y * (3 + a)) % 97) as f32 / 97.0 * 255.0) as u8;
            if (x / 10 + y / 9 + i) % 2 == 0 {
                image::Rgb([v(1), v(2), v(3)])
            } else {
                image::Rgb([200, (x * 5) as u8, (y * 6) as u8])
            }
        });
        img.save(dir.join(format!("{i}.png"))).unwrap();
    }
}

fn q(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let _turn = exclusive();
        let dir = scratch("training");
        let images = dir.join("images");
        write_images(&images);
        // Prior training through the C API, in the caller's thread, to its end.
        let run = dir.join("prior");
        let t = open(
            Source::Preset("tiny-prior"),
            &[
                format!("data.train_dir={}", q(&images)),
                format!("data.heldout_dir={}", q(&images)),
                "run.total_steps=2".into(),
                "run.device=\"cpu\"".into(),
            ],
            Some(&run),
            false,
            DaviTrainingKind::Prior,
        )
        .unwrap_or_else(|(st, m)| panic!("{st:?}: {m}"));
        let (st, events) = t.run(0, None);
        assert_eq!(st, S::Ok, "{}", t.last_error());
        assert_eq!(events.iter().map(|e| e.step).collect::<Vec<_>>(), [1, 2]);
        assert!(events
            .iter()
            .all(|e| e.loss.is_finite() && e.terms.contains_key("mse")));
        let info = t.info();
        assert_eq!(
            (info.kind, info.step, info.total_steps, info.finished),
            (1, 2, 2, 1)
        );
        let teacher = run.join("model.safetensors");
        assert!(teacher.is_file());
        Fixture {
            dir,
            images,
            teacher,
        }
    })
}

/// Where a config comes from, for [`open`].
enum Source<'a> {
    Preset(&'a str),
    Toml(&'a str),
    RunDir,
}

/// An owned training handle.
struct Train(*mut DaviTraining);
unsafe impl Send for Train {}
unsafe impl Sync for Train {}
impl Drop for Train {
    fn drop(&mut self) {
        unsafe { davi_training_free(self.0) }
    }
}

/// One progress callback's report, copied.
#[derive(Clone, Debug, PartialEq)]
struct Event {
    step: u64,
    checkpoint_step: u64,
    evaluated: bool,
    loss: f64,
    psnr: f64,
    terms: std::collections::BTreeMap<String, f64>,
}

/// What a callback does: record events, and cancel (return non-zero) at `cancel_at`; `also`
/// runs inside the callback with the handle.
struct Recorder {
    events: Vec<Event>,
    cancel_at: u64,
    handle: *mut DaviTraining,
    also: Option<Box<dyn FnMut(*mut DaviTraining, u64) + Send>>,
}

unsafe extern "C" fn record(user: *mut c_void, p: *const DaviTrainingProgress) -> i32 {
    let r = unsafe { &mut *user.cast::<Recorder>() };
    let p = unsafe { &*p };
    assert_eq!(p.struct_size as usize, size_of::<DaviTrainingProgress>());
    let mut terms = std::collections::BTreeMap::new();
    for i in 0..p.term_count as usize {
        let name = unsafe { CStr::from_ptr(*p.term_names.add(i)) };
        terms.insert(name.to_string_lossy().into_owned(), unsafe {
            *p.term_values.add(i)
        });
    }
    r.events.push(Event {
        step: p.step,
        checkpoint_step: p.checkpoint_step,
        evaluated: p.evaluated != 0,
        loss: p.loss,
        psnr: p.heldout_psnr,
        terms,
    });
    if let Some(f) = r.also.as_mut() {
        f(r.handle, p.step);
    }
    (p.step == r.cancel_at) as i32
}

fn run_options(max_steps: u64, recorder: &mut Recorder) -> DaviTrainingRunOptions {
    let mut o = std::mem::MaybeUninit::<DaviTrainingRunOptions>::uninit();
    let st = unsafe {
        davi_training_run_options_init(o.as_mut_ptr(), size_of::<DaviTrainingRunOptions>())
    };
    assert_eq!(st, S::Ok);
    let mut o = unsafe { o.assume_init() };
    o.max_steps = max_steps;
    o.progress = Some(record);
    o.user_data = (recorder as *mut Recorder).cast();
    o
}

impl Train {
    fn last_error(&self) -> String {
        let mut buf = [0 as c_char; 1024];
        let st =
            unsafe { davi_training_last_error(self.0, buf.as_mut_ptr(), buf.len(), null_mut()) };
        assert_eq!(st, S::Ok);
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    }

    fn info(&self) -> DaviTrainingInfo {
        let mut i = std::mem::MaybeUninit::<DaviTrainingInfo>::uninit();
        let st =
            unsafe { davi_training_info(self.0, i.as_mut_ptr(), size_of::<DaviTrainingInfo>()) };
        assert_eq!(st, S::Ok);
        unsafe { i.assume_init() }
    }

    fn recorder(&self, cancel_at: u64) -> Box<Recorder> {
        Box::new(Recorder {
            events: vec![],
            cancel_at,
            handle: self.0,
            also: None,
        })
    }

    /// Train in this thread; the status and the events.
    fn run(&self, max_steps: u64, cancel_at: Option<u64>) -> (S, Vec<Event>) {
        let mut rec = self.recorder(cancel_at.unwrap_or(0));
        let o = run_options(max_steps, &mut rec);
        let st = unsafe { davi_training_run(self.0, &o) };
        (st, rec.events)
    }

    fn export(&self, path: &Path) -> S {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        unsafe { davi_training_export(self.0, p.as_ptr()) }
    }
}

/// `davi_training_new`; the status and message on failure.
fn open(
    source: Source<'_>,
    overrides: &[String],
    run_dir: Option<&Path>,
    resume: bool,
    kind: DaviTrainingKind,
) -> Result<Train, (S, String)> {
    let mut o = std::mem::MaybeUninit::<DaviTrainingOptions>::uninit();
    assert_eq!(
        unsafe { davi_training_options_init(o.as_mut_ptr(), size_of::<DaviTrainingOptions>()) },
        S::Ok
    );
    let mut o = unsafe { o.assume_init() };
    let (preset, toml);
    match source {
        Source::Preset(p) => {
            preset = CString::new(p).unwrap();
            o.preset = preset.as_ptr();
        }
        Source::Toml(t) => {
            toml = CString::new(t).unwrap();
            o.config = toml.as_ptr();
        }
        Source::RunDir => {}
    }
    let strings: Vec<CString> = overrides
        .iter()
        .map(|s| CString::new(s.as_str()).unwrap())
        .collect();
    let pointers: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
    o.overrides = if pointers.is_empty() {
        null()
    } else {
        pointers.as_ptr()
    };
    o.override_count = pointers.len();
    let dir = run_dir.map(|d| CString::new(d.as_os_str().as_bytes()).unwrap());
    o.run_dir = dir.as_ref().map_or(null(), |d| d.as_ptr());
    o.resume = resume as u32;
    o.kind = kind as u32;
    let mut out = null_mut();
    let mut err = [0 as c_char; 1024];
    let st = unsafe { davi_training_new(&o, &mut out, err.as_mut_ptr(), err.len()) };
    let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    if st == S::Ok {
        assert!(!out.is_null());
        Ok(Train(out))
    } else {
        assert!(out.is_null(), "out written on failure");
        Err((st, msg))
    }
}

/// The tiny DAVI preset on the fixture: `steps` steps, evaluation every 2, no checkpoint but
/// at the end of each call (and on cancel).
fn davi_overrides(f: &Fixture, steps: u64) -> Vec<String> {
    vec![
        format!("data.train_dir={}", q(&f.images)),
        format!("data.heldout_dir={}", q(&f.images)),
        format!("davi.teacher={}", q(&f.teacher)),
        format!("run.total_steps={steps}"),
        "run.checkpoint_every=1000".into(),
        "run.eval_every=2".into(),
        "run.device=\"cpu\"".into(),
    ]
}

fn refused(r: Result<Train, (S, String)>) -> (S, String) {
    match r {
        Ok(_) => panic!("opened, should be refused"),
        Err(e) => e,
    }
}

#[test]
fn bad_configs_missing_data_and_held_runs_are_clear_statuses() {
    let f = fixture();
    let _turn = exclusive();
    let dir = scratch("training-refusals");
    let prior = |extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            format!("data.train_dir={}", q(&f.images)),
            "run.device=\"cpu\"".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let any = DaviTrainingKind::Any;
    let run = dir.join("run");

    let (st, m) = refused(open(
        Source::Preset("tiny-nope"),
        &prior(&[]),
        Some(&run),
        false,
        any,
    ));
    assert_eq!(st, S::InvalidConfig, "{m}");
    assert!(
        m.contains("unknown preset `tiny-nope`") && m.contains("tiny-prior"),
        "{m}"
    );
    let (st, m) = refused(open(
        Source::Toml("name = \"x\"\n[run\n"),
        &[],
        Some(&run),
        false,
        any,
    ));
    assert_eq!(st, S::InvalidConfig, "{m}");
    assert!(m.starts_with("config:"), "{m}");
    let (st, m) = refused(open(
        Source::Preset("tiny-prior"),
        &prior(&["prior.lrr=1"]),
        Some(&run),
        false,
        any,
    ));
    assert_eq!(st, S::InvalidConfig, "{m}");
    assert!(m.contains("lrr"), "{m}");
    let (st, m) = refused(open(
        Source::Preset("tiny-prior"),
        &prior(&["data.size=4"]),
        Some(&run),
        false,
        any,
    ));
    assert_eq!(
        (st, m.as_str()),
        (S::InvalidConfig, "config: data.size must be at least 8")
    );
    let (st, m) = refused(open(
        Source::Preset("tiny-prior"),
        &prior(&["nonsense"]),
        Some(&run),
        false,
        any,
    ));
    assert_eq!(st, S::InvalidConfig, "{m}");
    assert!(m.contains("not key=value"), "{m}");
    let (st, m) = refused(open(
        Source::Preset("tiny-prior"),
        &prior(&[]),
        Some(&run),
        false,
        DaviTrainingKind::Davi,
    ));
    assert_eq!(st, S::InvalidConfig, "{m}");
    assert!(m.contains("is a prior run, not a DAVI run"), "{m}");
    assert!(!run.exists(), "a refused config creates nothing");

    // Missing data: a folder that does not exist, one without images, a missing teacher.
    let missing = dir.join("no-such-folder");
    let (st, m) = refused(open(
        Source::Preset("tiny-prior"),
        &prior(&[&format!("data.train_dir={}", q(&missing))]),
        Some(&run),
        false,
        any,
    ));
    assert_eq!(st, S::NotFound, "{m}");
    assert!(
        m.contains("data.train_dir") && m.contains("no-such-folder"),
        "{m}"
    );
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let (st, m) = refused(open(
        Source::Preset("tiny-prior"),
        &prior(&[&format!("data.heldout_dir={}", q(&dir.join("empty")))]),
        Some(&run),
        false,
        any,
    ));
    assert_eq!(st, S::NotFound, "{m}");
    assert!(
        m.contains("data.heldout_dir") && m.contains("no PNG/JPEG/TIFF images"),
        "{m}"
    );
    let mut o = davi_overrides(f, 2);
    o.push(format!(
        "davi.teacher={}",
        q(&missing.join("teacher.safetensors"))
    ));
    let (st, m) = refused(open(
        Source::Preset("tiny-davi"),
        &o,
        Some(&run),
        false,
        any,
    ));
    assert_eq!(st, S::NotFound, "{m}");
    assert!(m.contains("davi.teacher"), "{m}");
    let (st, m) = refused(open(Source::RunDir, &[], Some(&missing), false, any));
    assert_eq!(st, S::NotFound, "{m}");
    assert!(m.contains("not a run directory"), "{m}");

    // A run directory holding a run needs `resume`; with it, the run continues.
    let t = open(
        Source::Preset("tiny-prior"),
        &prior(&["run.total_steps=3"]),
        Some(&run),
        false,
        any,
    )
    .unwrap();
    assert_eq!(t.run(1, None).0, S::Ok);
    drop(t);
    let (st, m) = refused(open(
        Source::Preset("tiny-prior"),
        &prior(&["run.total_steps=3"]),
        Some(&run),
        false,
        any,
    ));
    assert_eq!(st, S::InvalidArgument, "{m}");
    assert!(
        m.contains("already holds a training run") && m.contains("resume"),
        "{m}"
    );
    let t = open(
        Source::RunDir,
        &[],
        Some(&run),
        false,
        DaviTrainingKind::Prior,
    )
    .unwrap();
    assert_eq!((t.info().step, t.info().checkpoint_step), (1, 1));
    drop(t);

    // A corrupt checkpoint is a model error naming it, and is left as it is.
    let ckpt = run.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 2]).unwrap();
    let (st, m) = refused(open(Source::RunDir, &[], Some(&run), false, any));
    assert_eq!(st, S::ModelError, "{m}");
    assert!(
        m.contains("checkpoint.safetensors") && m.contains("corrupt or truncated"),
        "{m}"
    );
    assert_eq!(std::fs::read(&ckpt).unwrap(), &bytes[..bytes.len() / 2]);
    std::fs::write(&ckpt, &bytes).unwrap();
    let t = open(Source::RunDir, &[], Some(&run), false, any).unwrap();
    assert_eq!(t.run(0, None).0, S::Ok);
    assert_eq!(t.info().finished, 1);
}

#[test]
fn arguments_and_handles_are_checked() {
    let _turn = exclusive();
    unsafe {
        let mut out = null_mut();
        assert_eq!(
            davi_training_new(null(), &mut out, null_mut(), 0),
            S::NullArgument
        );
        let mut o = std::mem::MaybeUninit::<DaviTrainingOptions>::uninit();
        assert_eq!(
            davi_training_options_init(o.as_mut_ptr(), 8),
            S::InvalidArgument
        );
        assert_eq!(davi_training_options_init(null_mut(), 64), S::NullArgument);
        assert_eq!(
            davi_training_options_init(o.as_mut_ptr(), size_of::<DaviTrainingOptions>()),
            S::Ok
        );
        let mut o = o.assume_init();
        let mut err = [0 as c_char; 256];
        let msg = |e: &[c_char]| CStr::from_ptr(e.as_ptr()).to_string_lossy().into_owned();
        assert_eq!(
            davi_training_new(&o, &mut out, err.as_mut_ptr(), err.len()),
            S::InvalidArgument
        );
        assert!(msg(&err).contains("no config"), "{}", msg(&err));
        o.preset = c"tiny-prior".as_ptr();
        assert_eq!(
            davi_training_new(&o, null_mut(), null_mut(), 0),
            S::NullArgument
        );
        o.kind = 7;
        assert_eq!(
            davi_training_new(&o, &mut out, err.as_mut_ptr(), err.len()),
            S::InvalidArgument
        );
        assert!(msg(&err).contains("unknown training kind 7"));
        o.kind = 0;
        o.override_count = 2;
        assert_eq!(
            davi_training_new(&o, &mut out, err.as_mut_ptr(), err.len()),
            S::NullArgument
        );
        let overrides = [c"run.total_steps=1".as_ptr(), null()];
        o.overrides = overrides.as_ptr();
        assert_eq!(
            davi_training_new(&o, &mut out, err.as_mut_ptr(), err.len()),
            S::NullArgument
        );
        assert!(msg(&err).contains("options.overrides[1]"));
        o.override_count = 0;
        o.config = c"name = \"x\"".as_ptr();
        assert_eq!(
            davi_training_new(&o, &mut out, err.as_mut_ptr(), err.len()),
            S::InvalidArgument
        );
        assert!(msg(&err).contains("only one of"));
        o.config = null();
        o.reserved = 1;
        assert_eq!(
            davi_training_new(&o, &mut out, err.as_mut_ptr(), err.len()),
            S::InvalidArgument
        );
        o.reserved = 0;
        o.struct_size = 8;
        assert_eq!(
            davi_training_new(&o, &mut out, err.as_mut_ptr(), err.len()),
            S::InvalidArgument
        );
        assert!(out.is_null());

        // Handles of another kind, freed or never made are refused without being read.
        let ctx = context(any_kind_model());
        let as_training = ctx.0.cast::<DaviTraining>();
        let mut info = std::mem::MaybeUninit::<DaviTrainingInfo>::uninit();
        assert_eq!(
            davi_training_info(
                as_training,
                info.as_mut_ptr(),
                size_of::<DaviTrainingInfo>()
            ),
            S::InvalidArgument
        );
        assert_eq!(davi_training_run(as_training, null()), S::InvalidArgument);
        assert_eq!(davi_training_cancel(as_training), S::InvalidArgument);
        assert_eq!(davi_training_wait(null_mut()), S::NullArgument);
        assert_eq!(
            davi_training_export(null_mut(), c"x".as_ptr()),
            S::NullArgument
        );
        davi_training_free(as_training); // ignored: a context
        davi_training_free(null_mut());
        assert_eq!(ctx.last_error(), "");
        let mut buf = [0 as c_char; 64];
        assert_eq!(
            davi_training_last_error(as_training, buf.as_mut_ptr(), buf.len(), null_mut()),
            S::InvalidArgument
        );
    }
}

#[test]
fn background_runs_report_progress_cancel_with_a_checkpoint_and_free_joins_the_thread() {
    let f = fixture();
    let _turn = exclusive();
    let dir = scratch("training-background");
    let run = dir.join("run");
    let t = open(
        Source::Preset("tiny-prior"),
        &[
            format!("data.train_dir={}", q(&f.images)),
            "run.total_steps=6".into(),
            "run.device=\"cpu\"".into(),
            "run.checkpoint_every=100".into(),
        ],
        Some(&run),
        false,
        DaviTrainingKind::Any,
    )
    .unwrap();
    // libdavi's training threads alive in this process.
    let threads = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "davi-training")
            })
            .count()
    };
    assert_eq!(threads(), 0);
    // From its own callback: another run, a wait, an export are refused as busy, a cancel is
    // heard (the run stops after this step, checkpointed).
    let mut rec = t.recorder(0);
    rec.also = Some(Box::new(|h, step| unsafe {
        let own = std::thread::current().name() == Some("davi-training");
        assert!(own, "the callback runs on libdavi's thread");
        assert_eq!(davi_training_run(h, null()), S::Busy);
        assert_eq!(davi_training_start(h, null()), S::Busy);
        assert_eq!(davi_training_wait(h), S::Busy);
        assert_eq!(davi_training_export(h, c"/nonexistent/x".as_ptr()), S::Busy);
        let mut info = std::mem::MaybeUninit::<DaviTrainingInfo>::uninit();
        assert_eq!(
            davi_training_info(h, info.as_mut_ptr(), size_of::<DaviTrainingInfo>()),
            S::Ok
        );
        let info = info.assume_init();
        assert_eq!((info.step, info.running), (step, 1));
        if step == 2 {
            assert_eq!(davi_training_cancel(h), S::Ok);
        }
    }));
    let o = run_options(0, &mut rec);
    assert_eq!(unsafe { davi_training_start(t.0, &o) }, S::Ok);
    assert_eq!(unsafe { davi_training_run(t.0, null()) }, S::Busy);
    assert_eq!(unsafe { davi_training_wait(t.0) }, S::Cancelled);
    assert_eq!(
        unsafe { davi_training_wait(t.0) },
        S::Cancelled,
        "the outcome stays until the next start"
    );
    assert_eq!(
        rec.events.iter().map(|e| e.step).collect::<Vec<_>>(),
        [1, 2]
    );
    let m = t.last_error();
    assert!(
        m.contains("cancelled at step 2") && m.contains("checkpoint of step 2"),
        "{m}"
    );
    let info = t.info();
    assert_eq!(
        (info.step, info.checkpoint_step, info.running, info.finished),
        (2, 2, 0, 0)
    );
    assert!(run.join("checkpoint.safetensors").is_file());
    assert_eq!(threads(), 0, "the run's thread ended");
    // Export the prior of step 2: a teacher model file (which a context refuses).
    let exported = dir.join("prior-2.safetensors");
    assert_eq!(t.export(&exported), S::Ok);
    let meta = davi_engine::weights::model_file::read_meta(&exported).unwrap();
    assert_eq!(
        (meta.role, meta.provenance["steps"].as_u64()),
        (davi_engine::weights::ModelRole::Prior, Some(2))
    );
    assert_eq!(
        t.export(Path::new("/nonexistent/dir/x.safetensors")),
        S::NotFound
    );

    // The next call continues from step 2 (in memory), here 1 step in this thread.
    let (st, events) = t.run(1, None);
    assert_eq!(
        (st, events[0].step, events[0].checkpoint_step),
        (S::Ok, 3, 3)
    );
    assert_eq!(t.last_error(), "");

    // Free while a background run trains: it is cancelled, checkpoints and is joined.
    let mut rec = t.recorder(0);
    let o = run_options(0, &mut rec);
    assert_eq!(unsafe { davi_training_start(t.0, &o) }, S::Ok);
    while t.info().step < 4 {
        std::thread::yield_now();
    }
    drop(t);
    assert_eq!(threads(), 0, "free joined the run's thread");
    let t = open(
        Source::RunDir,
        &[],
        Some(&run),
        false,
        DaviTrainingKind::Any,
    )
    .unwrap();
    let step = t.info().step;
    assert!(
        (4..=6).contains(&step) && t.info().checkpoint_step == step,
        "{:?}",
        t.info()
    );
    assert!(rec.events.iter().all(|e| e.loss.is_finite()));
}

#[test]
fn a_panic_inside_training_is_a_status_and_the_checkpoint_stays() {
    let f = fixture();
    let _turn = exclusive();
    let dir = scratch("training-panic");
    let setup = TrainingSetup {
        source: ConfigSource::Preset("tiny-prior"),
        overrides: vec![
            format!("data.train_dir={}", q(&f.images)),
            "run.device=\"cpu\"".into(),
            "run.checkpoint_every=100".into(),
        ],
        run_dir: Some(dir.join("run")),
        resume: false,
        kind: None,
    };
    let t = Training::open(&setup).unwrap();
    assert_eq!(
        t.run(Some(1), None).unwrap(),
        davi_engine::train::runner::Stop::Paused
    );
    let kept = std::fs::read(dir.join("run/checkpoint.safetensors")).unwrap();
    // A progress callback that panics (Rust callers of the safe API can): in the caller's
    // thread and in the handle's own, the panic is caught and the run is done for.
    let e = t
        .run(None, Some(Box::new(|_| panic!("boom in training"))))
        .unwrap_err();
    assert_eq!(e.status, S::Panic);
    assert!(e.message.contains("boom in training"), "{}", e.message);
    let e = t.run(None, None).unwrap_err();
    assert_eq!(e.status, S::InvalidArgument);
    assert!(
        e.message.contains("failed earlier") && e.message.contains("boom"),
        "{}",
        e.message
    );
    assert_eq!(
        t.export(&dir.join("x.safetensors")).unwrap_err().status,
        S::InvalidArgument
    );
    assert_eq!(
        std::fs::read(dir.join("run/checkpoint.safetensors")).unwrap(),
        kept
    );
    drop(t);
    let t = Training::open(&TrainingSetup {
        source: ConfigSource::RunDir,
        resume: true,
        ..setup
    })
    .unwrap();
    t.start(
        None,
        Some(Box::new(|r| {
            if r.step == 3 {
                panic!("boom in its thread")
            } else {
                true
            }
        })),
    )
    .unwrap();
    let e = t.wait().unwrap_err();
    assert_eq!(e.status, S::Panic);
    assert!(
        e.message.contains("boom in its thread") && t.last_error() == e.message,
        "{}",
        e.message
    );
    assert_eq!(
        std::fs::read(dir.join("run/checkpoint.safetensors")).unwrap(),
        kept
    );
}

/// The C client: prior and DAVI training, cancel in libdavi's thread, resume, same losses as
/// the uninterrupted run, export, restore; refusals; a checkpoint that cannot be written.
#[test]
fn the_c_client_trains_cancels_resumes_exports_and_restores_under_asan() {
    let f = fixture();
    let dir = scratch("training-c");
    let bin = dir.join("training");
    build_host(
        "cc",
        &root().join("sdk/capi/tests/c/training.c"),
        &bin,
        &[
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
            "-pthread",
        ],
    );
    let mut cmd = Command::new(&bin);
    cmd.arg(&f.images)
        .arg(&dir)
        .env("UBSAN_OPTIONS", "print_stacktrace=1");
    let out = output_under_asan(&mut cmd);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success() && stdout.contains(" 0 failed"),
        "C training client failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("Sanitizer") && !stderr.contains("runtime error"),
        "{stderr}"
    );
    eprintln!("{stdout}");
    let _ = f.dir.as_path();
}
