//! The safe Rust API of training that the C layer adapts: a [`Training`] owns one open
//! training run ([`davi_engine::train::runner::Session`], the same code `davi train` runs),
//! trains it in the caller's thread ([`Training::run`]) or in a thread of its own
//! ([`Training::start`], [`Training::wait`]), cancels it from any thread
//! ([`Training::cancel`]) and exports its network ([`Training::export`]).
//!
//! Why a thread of its own: a host with an event loop (an image editor, a notebook) cannot
//! block in a call that trains for hours, and a C host should not have to write thread code
//! to get a progress bar and a Cancel button. The thread is the handle's: dropping the
//! handle cancels the run and joins the thread, so no thread of libdavi outlives it.
//!
//! State: everything a run in progress touches lives in an `Arc`'d [`Shared`], so a run's
//! thread never reads through the handle: freeing the handle cancels the run and joins its
//! thread, and the thread never needs the handle to finish.
//!
//! Errors keep the last good checkpoint: the session writes checkpoints atomically and an
//! error stops it before anything later is saved. After an error (or a caught panic) the
//! weights in memory may be ahead of the checkpoint or damaged, so the session is dropped and
//! every later call says so; the run is resumed by opening its directory again.

use crate::boundary::guard;
use davi_engine::error::EngineError;
use davi_engine::train::config::TrainConfig;
use davi_engine::train::data::list_images;
use davi_engine::train::runner::{Hooks, Session, StepReport, Stop};
use davi_sdk::{DaviError, DaviStatus};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};

/// The checkpoint file of a run directory (`davi_engine::train::runner`).
const CHECKPOINT: &str = "checkpoint.safetensors";

/// The kind of network a run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainingKind {
    Prior,
    Davi,
}

impl TrainingKind {
    fn of(cfg: &TrainConfig) -> Self {
        if cfg.prior.is_some() {
            TrainingKind::Prior
        } else {
            TrainingKind::Davi
        }
    }

    fn name(self) -> &'static str {
        match self {
            TrainingKind::Prior => "a prior",
            TrainingKind::Davi => "a DAVI",
        }
    }
}

/// Where a run's config comes from.
#[derive(Clone, Copy, Debug)]
pub enum ConfigSource<'a> {
    /// A built-in preset.
    Preset(&'a str),
    /// TOML text.
    Toml(&'a str),
    /// The `config.toml` a run directory holds (resumes that run).
    RunDir,
}

/// What [`Training::open`] opens.
#[derive(Clone, Debug)]
pub struct TrainingSetup<'a> {
    pub source: ConfigSource<'a>,
    /// `key.path=value` overrides, applied in order.
    pub overrides: Vec<String>,
    /// Replaces `run.out_dir`; required with [`ConfigSource::RunDir`].
    pub run_dir: Option<PathBuf>,
    /// Continue a checkpoint in the run directory (implied with [`ConfigSource::RunDir`]).
    pub resume: bool,
    /// The kind the caller expects; `None` accepts both.
    pub kind: Option<TrainingKind>,
}

/// A progress callback: called after every step on the training thread; `false` cancels.
pub type ProgressFn<'a> = Box<dyn FnMut(&StepReport<'_>) -> bool + Send + 'a>;

/// Where a run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainingInfo {
    pub kind: TrainingKind,
    pub step: u64,
    pub total_steps: u64,
    /// 0: no checkpoint yet.
    pub checkpoint_step: u64,
    pub running: bool,
    pub finished: bool,
}

/// The status of an engine error met while training: a file that cannot be written or read
/// (a full disk, a size limit, no permission) is [`DaviStatus::IoError`], a missing one
/// `NotFound`; the rest as for restoring (a corrupt checkpoint is `ModelError`).
pub fn train_error(e: EngineError) -> DaviError {
    match &e {
        EngineError::Io { source, .. } if source.kind() != std::io::ErrorKind::NotFound => {
            DaviError::new(DaviStatus::IoError, e.to_string())
        }
        _ => e.into(),
    }
}

fn config_error(e: EngineError) -> DaviError {
    let message = match e {
        EngineError::InvalidInput(m) => m,
        other => other.to_string(),
    };
    DaviError::new(DaviStatus::InvalidConfig, message)
}

/// Resolve a setup's config: the preset, TOML text or saved config with the overrides
/// applied, validated, and of the expected kind. Every refusal of the config itself is
/// [`DaviStatus::InvalidConfig`].
pub fn resolve_config(setup: &TrainingSetup<'_>) -> Result<TrainConfig, DaviError> {
    let mut cfg = match setup.source {
        ConfigSource::Preset(name) => {
            TrainConfig::preset(name, &setup.overrides).map_err(config_error)?
        }
        ConfigSource::Toml(text) => {
            TrainConfig::from_toml(text, &setup.overrides).map_err(config_error)?
        }
        ConfigSource::RunDir => {
            let dir = setup.run_dir.as_deref().ok_or_else(|| {
                DaviError::invalid_argument(
                    "no config: give a preset, TOML text or a run directory",
                )
            })?;
            let path = dir.join("config.toml");
            let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => DaviError::new(
                    DaviStatus::NotFound,
                    format!(
                        "{} is not a run directory (it has no config.toml)",
                        dir.display()
                    ),
                ),
                _ => train_error(EngineError::io(&path, e)),
            })?;
            TrainConfig::from_toml(&text, &setup.overrides)
                .map_err(|e| config_error(e).prefixed(&format!("{}: ", path.display())))?
        }
    };
    if let Some(dir) = &setup.run_dir {
        cfg.run.out_dir = dir.clone();
    }
    let kind = TrainingKind::of(&cfg);
    if let Some(want) = setup.kind {
        if want != kind {
            return Err(DaviError::new(
                DaviStatus::InvalidConfig,
                format!(
                    "config `{}` is {} run, not {} run",
                    cfg.name,
                    kind.name(),
                    want.name()
                ),
            ));
        }
    }
    Ok(cfg)
}

trait Prefixed {
    fn prefixed(self, prefix: &str) -> Self;
}

impl Prefixed for DaviError {
    fn prefixed(self, prefix: &str) -> Self {
        DaviError::new(self.status, format!("{prefix}{}", self.message))
    }
}

/// Refuse missing training data before anything is built, with `NotFound` naming the folder
/// (an empty folder, or one without images, is missing data too).
fn check_data(cfg: &TrainConfig) -> Result<(), DaviError> {
    let folders = [
        ("data.train_dir", Some(&cfg.data.train_dir)),
        ("data.heldout_dir", cfg.data.heldout_dir.as_ref()),
    ];
    for (key, dir) in folders {
        let Some(dir) = dir else { continue };
        match list_images(dir) {
            Ok(_) => {}
            Err(EngineError::InvalidInput(m)) => {
                return Err(DaviError::new(DaviStatus::NotFound, format!("{key}: {m}")))
            }
            Err(e) => return Err(train_error(e).prefixed(&format!("{key}: "))),
        }
    }
    if let Some(d) = &cfg.davi {
        if !d.teacher.is_file() {
            return Err(DaviError::new(
                DaviStatus::NotFound,
                format!(
                    "davi.teacher: {} is not a file (train a prior first and name its \
                        model.safetensors)",
                    d.teacher.display()
                ),
            ));
        }
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every value behind these locks is consistent after a panic (whole replacements only;
    // a panicking session is caught inside its lock and dropped).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a run in progress and the handle share.
struct Shared {
    /// The open run; `None` once a run failed (see `failure`).
    session: Mutex<Option<Session>>,
    /// Why `session` is gone.
    failure: Mutex<Option<DaviError>>,
    /// A run (in any thread) or an export is in progress.
    busy: AtomicBool,
    cancel: AtomicBool,
    step: AtomicU64,
    checkpoint_step: AtomicU64,
    /// The message of the handle's last call (empty after a success).
    last_error: Mutex<String>,
    /// The outcome of the last background run, once it ended; `None` while it runs or before
    /// the first.
    outcome: Mutex<Option<Result<Stop, DaviError>>>,
    /// The thread of the background run.
    worker_id: Mutex<Option<ThreadId>>,
}

/// Clears `busy` when a run or export ends, however it ends.
struct BusyGuard<'a>(&'a AtomicBool);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, SeqCst);
    }
}

impl Shared {
    /// Mark the handle busy, or refuse: one run or export at a time.
    fn enter(&self) -> Result<BusyGuard<'_>, DaviError> {
        if self
            .busy
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_err()
        {
            return Err(DaviError::new(
                DaviStatus::Busy,
                "a run or an export is in progress on this training handle",
            ));
        }
        Ok(BusyGuard(&self.busy))
    }

    fn gone(&self) -> DaviError {
        let why = lock(&self.failure)
            .as_ref()
            .map(|e| e.message.clone())
            .unwrap_or_else(|| "unknown".into());
        DaviError::invalid_argument(format!(
            "this training run failed earlier ({why}); its checkpoint on disk is intact: free \
             the handle and open the run directory again to resume"
        ))
    }

    /// Train the session (the caller holds `busy`). An error drops the session.
    fn train(
        &self,
        max_steps: Option<u64>,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<Stop, DaviError> {
        let mut slot = lock(&self.session);
        let Some(session) = slot.as_mut() else {
            return Err(self.gone());
        };
        let mut progress = progress;
        let mut report = |r: &StepReport<'_>| {
            self.step.store(r.step, SeqCst);
            self.checkpoint_step
                .store(r.checkpoint_step.unwrap_or(0), SeqCst);
            if let Some(p) = progress.as_mut() {
                if !p(r) {
                    self.cancel.store(true, SeqCst);
                }
            }
        };
        let mut hooks = Hooks {
            progress: Some(&mut report),
            cancel: Some(&self.cancel),
        };
        let r = guard(|| {
            session
                .train(max_steps, None, &mut hooks)
                .map_err(train_error)
        });
        let step = session.step();
        self.step.store(step, SeqCst);
        self.checkpoint_step
            .store(session.checkpoint_step().unwrap_or(0), SeqCst);
        match r {
            Ok(Stop::Cancelled) => Err(DaviError::new(
                DaviStatus::Cancelled,
                match session.checkpoint_step() {
                    Some(saved) => format!(
                        "cancelled at step {step}; the checkpoint of step {saved} is in {}",
                        session.dir().display()
                    ),
                    None => "cancelled before the first step; no checkpoint was written".into(),
                },
            )),
            Ok(stop) => Ok(stop),
            Err(e) => {
                *lock(&self.failure) = Some(e.clone());
                // The weights may be ahead of the checkpoint or damaged: never train or
                // export them again.
                *slot = None;
                Err(e)
            }
        }
    }

    fn record<T>(&self, r: &Result<T, DaviError>) {
        let mut slot = lock(&self.last_error);
        match r {
            Ok(_) => slot.clear(),
            Err(e) => *slot = e.message.clone(),
        }
    }
}

/// One open training run. `Send + Sync`: calls may come from any thread.
pub struct Training {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
    kind: TrainingKind,
    total_steps: u64,
    dir: PathBuf,
}

impl std::fmt::Debug for Training {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Training")
            .field("kind", &self.kind)
            .field("dir", &self.dir)
            .field("info", &self.info())
            .finish()
    }
}

impl Training {
    /// Resolve the config, check the data, and open the run (create its directory, or resume
    /// the checkpoint it holds). Refusals: the config ([`DaviStatus::InvalidConfig`]), missing
    /// data or teacher (`NotFound`), a directory holding a run without `resume`
    /// (`InvalidArgument`), a checkpoint that does not load (`ModelError`; the file is left
    /// as it is), a directory that cannot be written (`IoError`).
    pub fn open(setup: &TrainingSetup<'_>) -> Result<Self, DaviError> {
        let cfg = resolve_config(setup)?;
        let resume = setup.resume || matches!(setup.source, ConfigSource::RunDir);
        check_data(&cfg)?;
        let dir = cfg.run.out_dir.clone();
        if !resume && dir.join(CHECKPOINT).exists() {
            return Err(DaviError::invalid_argument(format!(
                "{} already holds a training run: set resume to continue it, or choose another \
                 run directory",
                dir.display()
            )));
        }
        // Quiet: a library never draws progress lines on the host's stderr.
        let session = Session::open(&cfg, resume, true).map_err(train_error)?;
        let (step, saved) = (session.step(), session.checkpoint_step().unwrap_or(0));
        Ok(Training {
            shared: Arc::new(Shared {
                session: Mutex::new(Some(session)),
                failure: Mutex::new(None),
                busy: AtomicBool::new(false),
                cancel: AtomicBool::new(false),
                step: AtomicU64::new(step),
                checkpoint_step: AtomicU64::new(saved),
                last_error: Mutex::new(String::new()),
                outcome: Mutex::new(None),
                worker_id: Mutex::new(None),
            }),
            worker: Mutex::new(None),
            kind: TrainingKind::of(&cfg),
            total_steps: cfg.run.total_steps,
            dir,
        })
    }

    pub fn kind(&self) -> TrainingKind {
        self.kind
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// Where the run stands; cheap, and exact between steps while it trains.
    pub fn info(&self) -> TrainingInfo {
        let step = self.shared.step.load(SeqCst);
        TrainingInfo {
            kind: self.kind,
            step,
            total_steps: self.total_steps,
            checkpoint_step: self.shared.checkpoint_step.load(SeqCst),
            running: self.shared.busy.load(SeqCst),
            finished: step >= self.total_steps,
        }
    }

    /// The message of the last call that recorded one (empty after a success).
    pub fn last_error(&self) -> String {
        lock(&self.shared.last_error).clone()
    }

    /// Record `r` as the last call's outcome (the C layer's last-error message). The calls
    /// of this type that train, wait or export record their own.
    pub fn record<T>(&self, r: &Result<T, DaviError>) {
        self.shared.record(r);
    }

    /// Train in the calling thread: up to `max_steps` steps (`None`: to the end), calling
    /// `progress` after each. Ends with a checkpoint of the step reached: `Ok` when the run
    /// finished or ran its `max_steps`, `Cancelled` when a cancel stopped it (it continues
    /// from there on the next call). `Busy` while another run or export of this handle is in
    /// progress (also from its own callback).
    pub fn run(
        &self,
        max_steps: Option<u64>,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<Stop, DaviError> {
        // Clone first: everything below touches only the shared state (see the module docs).
        let shared = self.shared.clone();
        let r = shared.enter().and_then(|_busy| {
            shared.cancel.store(false, SeqCst);
            shared.train(max_steps, progress)
        });
        shared.record(&r);
        r
    }

    /// [`Training::run`] in a new thread of this handle; returns at once. The outcome is
    /// [`Training::wait`]'s.
    pub fn start(
        &self,
        max_steps: Option<u64>,
        progress: Option<ProgressFn<'static>>,
    ) -> Result<(), DaviError> {
        let r = self.spawn(max_steps, progress);
        self.shared.record(&r);
        r
    }

    fn spawn(
        &self,
        max_steps: Option<u64>,
        progress: Option<ProgressFn<'static>>,
    ) -> Result<(), DaviError> {
        let busy = self.shared.enter()?;
        // An earlier background run has ended (the handle was not busy): reap its thread.
        let mut worker = lock(&self.worker);
        if let Some(old) = worker.take() {
            let _ = old.join();
        }
        self.shared.cancel.store(false, SeqCst);
        *lock(&self.shared.outcome) = None;
        std::mem::forget(busy); // the thread clears `busy` when it ends
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("davi-training".into())
            .spawn(move || {
                let _busy = BusyGuard(&shared.busy);
                // A boundary of the thread's own: a panic becomes the run's status and stays
                // off the host's stderr.
                let r = guard(|| shared.train(max_steps, progress));
                shared.record(&r);
                *lock(&shared.outcome) = Some(r);
            });
        match spawned {
            Ok(handle) => {
                *lock(&self.shared.worker_id) = Some(handle.thread().id());
                *worker = Some(handle);
                Ok(())
            }
            Err(e) => {
                self.shared.busy.store(false, SeqCst);
                Err(DaviError::internal(format!(
                    "cannot start the training thread: {e}"
                )))
            }
        }
    }

    /// Ask the run in progress (in any thread) to stop after its current step; it writes a
    /// checkpoint of that step and ends with `Cancelled`. Returns at once; without a run in
    /// progress it does nothing.
    pub fn cancel(&self) {
        if self.shared.busy.load(SeqCst) {
            self.shared.cancel.store(true, SeqCst);
        }
    }

    /// Wait for the background run started by [`Training::start`] to end, and return its
    /// outcome (again on every call, until the next start). `Busy` from the run's own thread
    /// (it would wait for itself); `InvalidArgument` if no run was started.
    pub fn wait(&self) -> Result<Stop, DaviError> {
        let r = self.join();
        self.shared.record(&r);
        r
    }

    fn join(&self) -> Result<Stop, DaviError> {
        if *lock(&self.shared.worker_id) == Some(std::thread::current().id()) {
            return Err(DaviError::new(
                DaviStatus::Busy,
                "davi_training_wait from the run's own progress callback would wait for itself",
            ));
        }
        {
            let mut worker = lock(&self.worker);
            if let Some(h) = worker.take() {
                let _ = h.join();
            }
        }
        lock(&self.shared.outcome).clone().unwrap_or_else(|| {
            Err(DaviError::invalid_argument(
                "no background run to wait for: call davi_training_start first",
            ))
        })
    }

    /// Write the EMA network of the current step as a model file, atomically (what the end of
    /// the run writes as `model.safetensors`). `Busy` while a run is in progress.
    pub fn export(&self, path: &Path) -> Result<(), DaviError> {
        let shared = self.shared.clone();
        let r = shared.enter().and_then(|_busy| {
            let slot = lock(&shared.session);
            match slot.as_ref() {
                Some(session) => session.export(path).map_err(train_error),
                None => Err(shared.gone()),
            }
        });
        shared.record(&r);
        r
    }
}

impl Drop for Training {
    /// Cancel a run in progress and join the handle's thread (it writes its checkpoint
    /// first). From the run's own thread (a free inside its progress callback) the thread
    /// cannot be joined: it is cancelled and ends on its own, holding only shared state.
    fn drop(&mut self) {
        self.shared.cancel.store(true, SeqCst);
        let own = *lock(&self.shared.worker_id) == Some(std::thread::current().id());
        let worker = match self.worker.get_mut() {
            Ok(w) => w.take(),
            Err(p) => p.into_inner().take(),
        };
        if let Some(h) = worker {
            if !own {
                let _ = h.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn handles_may_cross_threads() {
        assert_send_sync::<Training>();
    }
}
