//! How `davirestore` works: a `GstVideoFilter` that never restores in place (a restored frame
//! may be larger, or colour from gray), with its model loaded in `start()` and each buffer
//! restored in the streaming thread.
//!
//! - **Properties** live in a mutex; `task`, `model`, `device` and `precision` choose the model
//!   and how it runs, and are read when the element starts (changes while it runs are refused
//!   with a warning: the negotiated caps depend on the task, and reloading a model mid-stream
//!   would stall it); `seed`, `tile` and `overlap` are read per buffer.
//! - **Loading** happens in `start()` (READY → PAUSED), never at plugin registration: a
//!   missing file, a model of another task or an unknown device is an error message on the
//!   bus and a failed state change, not a crash and not a plugin the registry blacklists.
//! - **Per buffer**, the frame goes through [`crate::frame::restore`] inside libdavi's panic
//!   boundary; a failure is an element error (`GST_STREAM_ERROR_FAILED` with libdavi's
//!   message) and stops the stream.
//! - **Order, latency, QoS**: one buffer in, one out, in the streaming thread, so frames leave
//!   in the order they came and nothing queues inside the element. A restore takes time (tens
//!   of milliseconds to seconds), so the element adds the longest restore it has measured to
//!   the latency it reports, and posts a latency message when that grows by more than a
//!   quarter: a live pipeline then waits for restored frames instead of its sink dropping
//!   every one as late. QoS is on: a frame that would still reach a synchronised sink too
//!   late is dropped before it is restored. Flushing and PAUSED → READY cancel a restore
//!   between tile batches.
//!
//! Patterns: an ML element that loads in `start()` and reports a load failure as an error
//! message, `GStreamer/gst-plugins-rs: analytics/burn/src/yoloxinference/imp.rs`.

use super::Task;
use crate::{caps, frame};
use davi::{Context, ModelSource, RestoreParams};
use davi_sdk::{DaviError, DaviStatus, OperatorSpec};
use gst::glib;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use gst_video::prelude::*;
use gst_video::subclass::prelude::*;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "davirestore",
        gst::DebugColorFlags::empty(),
        Some("DAVI restoration"),
    )
});

const DEFAULT_DEVICE: &str = "auto";
const DEFAULT_PRECISION: &str = "fp32";

#[derive(Clone, Debug)]
struct Settings {
    task: Task,
    /// A model file; `None` = the task's default model.
    model: Option<String>,
    device: String,
    precision: String,
    seed: u64,
    tile: u32,
    overlap: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            task: Task::default(),
            model: None,
            device: DEFAULT_DEVICE.to_string(),
            precision: DEFAULT_PRECISION.to_string(),
            seed: 0,
            tile: 0,
            overlap: 0,
        }
    }
}

impl Settings {
    /// The options of one restore (0 = libdavi's automatic tile and overlap).
    fn params(&self) -> RestoreParams {
        RestoreParams {
            tile: (self.tile != 0).then_some(self.tile),
            overlap: (self.overlap != 0).then_some(self.overlap),
            seed: self.seed,
            ..RestoreParams::default()
        }
    }

    /// The model, for messages.
    fn model_name(&self) -> String {
        match &self.model {
            Some(path) => path.clone(),
            None => format!("(the default {} model)", self.task.name()),
        }
    }
}

/// What `start()` loads and `stop()` drops.
struct State {
    context: Context,
    /// The operator to restore under: the model's own (its trained noise level, blur …),
    /// else the task's official one, as the OpenFX plug-in does.
    spec: OperatorSpec,
}

#[derive(Default)]
pub struct DaviRestore {
    settings: Mutex<Settings>,
    state: Mutex<Option<State>>,
    /// Set by flushes and PAUSED → READY: the restore in progress stops before its next batch
    /// of tiles.
    cancel: AtomicBool,
    /// The latency this element adds, in nanoseconds: the longest restore measured since it
    /// started (0 before the first frame).
    latency_ns: AtomicU64,
}

impl DaviRestore {
    fn settings(&self) -> MutexGuard<'_, Settings> {
        self.settings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, Option<State>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record how long a restore took; past the reported latency by more than a quarter, raise
    /// it and ask the pipeline to recompute its latency. Smaller growth is left to QoS, so a
    /// jittery restore time does not make the pipeline re-latency at every frame.
    fn measured(&self, took: std::time::Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let reported = self.latency_ns.load(Ordering::SeqCst);
        if took > reported.saturating_add(reported / 4) {
            self.latency_ns.store(took, Ordering::SeqCst);
            gst::debug!(CAT, imp = self, "restores take {} ns: new latency", took);
            let _ = self
                .obj()
                .post_message(gst::message::Latency::builder().src(&*self.obj()).build());
        }
    }
}

/// Load the model the settings name and check that it restores their task at the task's scale.
fn load(settings: &Settings) -> Result<State, DaviError> {
    let task = settings.task.name();
    let wanted = OperatorSpec::for_task(task).map_err(|e| DaviError::internal(e.to_string()))?;
    let source = match &settings.model {
        Some(path) => ModelSource::File(Path::new(path)),
        None => ModelSource::Task(task),
    };
    // libtorch's own thread count, as the other hosts default to.
    let context = Context::new(source, &settings.device, 0, &settings.precision)?;
    let spec = context.trained_spec().cloned().unwrap_or(wanted.clone());
    let scale = |s: &OperatorSpec| davi_sdk::plugin::spec_output_size(s, 1, 1);
    if spec.kind_name() != wanted.kind_name() || scale(&spec) != scale(&wanted) {
        return Err(DaviError::new(
            DaviStatus::UnsupportedOperator,
            format!(
                "the model {} was trained for {}, not task={task} ({}); choose a {task} model or \
                 set the task it was trained for",
                context.origin(),
                spec.kind_name(),
                wanted.kind_name()
            ),
        ));
    }
    Ok(State { context, spec })
}

/// The bus message of a failed load: what is missing or wrong, in libdavi's words.
fn load_error(settings: &Settings, e: &DaviError) -> gst::ErrorMessage {
    let text = format!(
        "cannot load {} on device {} in {}: {}",
        settings.model_name(),
        settings.device,
        settings.precision,
        e.message
    );
    let debug = format!("libdavi status {}", e.status.as_str());
    match e.status {
        DaviStatus::NotFound | DaviStatus::IoError => {
            gst::error_msg!(gst::ResourceError::NotFound, ("{text}"), ["{debug}"])
        }
        DaviStatus::DeviceError | DaviStatus::InvalidArgument | DaviStatus::UnsupportedOperator => {
            gst::error_msg!(gst::LibraryError::Settings, ("{text}"), ["{debug}"])
        }
        _ => gst::error_msg!(gst::LibraryError::Init, ("{text}"), ["{debug}"]),
    }
}

#[glib::object_subclass]
impl ObjectSubclass for DaviRestore {
    const NAME: &'static str = "GstDaviRestore";
    type Type = super::DaviRestore;
    type ParentType = gst_video::VideoFilter;
}

impl ObjectImpl for DaviRestore {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: LazyLock<Vec<glib::ParamSpec>> = LazyLock::new(|| {
            vec![
                glib::ParamSpecEnum::builder_with_default("task", Task::default())
                    .nick("Task")
                    .blurb("What to restore; each task has its own model")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("model")
                    .nick("Model file")
                    .blurb(
                        "A .safetensors DAVI model trained for the task; empty = the task's \
                         default model (DAVI_MODEL_DIR, then libdavi's search)",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("device")
                    .nick("Device")
                    .blurb("auto (first CUDA GPU, else CPU), cpu, cuda or cuda:N")
                    .default_value(Some(DEFAULT_DEVICE))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("precision")
                    .nick("Precision")
                    .blurb(
                        "fp32, bf16 (CUDA, and CPUs with bf16 instructions) or fp16 (CUDA) for \
                         the network",
                    )
                    .default_value(Some(DEFAULT_PRECISION))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("seed")
                    .nick("Seed")
                    .blurb(
                        "Seed of the perturbation noise (the shipped models use none): the \
                         same frame, settings and seed give the same pixels",
                    )
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("tile")
                    .nick("Tile")
                    .blurb(
                        "Tile edge in output pixels, a multiple of the model's down-sampling \
                         factor (4 for the shipped models); bounds memory; 0 = the model's tile",
                    )
                    .mutable_playing()
                    .build(),
                glib::ParamSpecUInt::builder("overlap")
                    .nick("Overlap")
                    .blurb(
                        "Pixels neighbouring tiles cross-fade over, smaller than the tile; \
                         0 = automatic",
                    )
                    .mutable_playing()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn constructed(&self) {
        self.parent_constructed();
        // A frame a synchronised sink would drop is better not restored at all.
        self.obj().set_qos(true);
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let started = self.state().is_some();
        let mut settings = self.settings();
        let name = pspec.name();
        if started && matches!(name, "task" | "model" | "device" | "precision") {
            gst::warning!(
                CAT,
                imp = self,
                "{name} cannot change while the element runs; set it in the NULL or READY state"
            );
            return;
        }
        match name {
            "task" => settings.task = value.get().expect("type checked upstream"),
            "model" => {
                let model: Option<String> = value.get().expect("type checked upstream");
                settings.model = model.filter(|m| !m.is_empty());
            }
            "device" => {
                let device: Option<String> = value.get().expect("type checked upstream");
                settings.device = device.unwrap_or_else(|| DEFAULT_DEVICE.to_string());
            }
            "precision" => {
                let precision: Option<String> = value.get().expect("type checked upstream");
                settings.precision = precision.unwrap_or_else(|| DEFAULT_PRECISION.to_string());
            }
            "seed" => settings.seed = value.get().expect("type checked upstream"),
            "tile" => settings.tile = value.get().expect("type checked upstream"),
            "overlap" => settings.overlap = value.get().expect("type checked upstream"),
            _ => unreachable!("GObject only passes the properties above"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings();
        match pspec.name() {
            "task" => settings.task.to_value(),
            "model" => settings.model.to_value(),
            "device" => settings.device.to_value(),
            "precision" => settings.precision.to_value(),
            "seed" => settings.seed.to_value(),
            "tile" => settings.tile.to_value(),
            "overlap" => settings.overlap.to_value(),
            _ => unreachable!("GObject only passes the properties above"),
        }
    }
}

impl GstObjectImpl for DaviRestore {}

impl ElementImpl for DaviRestore {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static METADATA: LazyLock<gst::subclass::ElementMetadata> = LazyLock::new(|| {
            gst::subclass::ElementMetadata::new(
                "DAVI restoration",
                "Filter/Effect/Video",
                "Restores every frame with a one-step diffusion-prior model (libdavi): \
                 denoise, deblur, 4x super-resolution, inpaint, colorize",
                "libdavi contributors",
            )
        });
        Some(&*METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static TEMPLATES: LazyLock<Vec<gst::PadTemplate>> = LazyLock::new(|| {
            let caps = gst_video::VideoCapsBuilder::new()
                .format_list(frame::FORMATS)
                .build();
            let pad = |name, direction| {
                gst::PadTemplate::new(name, direction, gst::PadPresence::Always, &caps)
                    .expect("valid pad template")
            };
            vec![
                pad("src", gst::PadDirection::Src),
                pad("sink", gst::PadDirection::Sink),
            ]
        });
        TEMPLATES.as_ref()
    }

    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        // Stopping waits for the streaming thread; let a long restore end at its next tile.
        if transition == gst::StateChange::PausedToReady {
            self.cancel.store(true, Ordering::SeqCst);
        }
        self.parent_change_state(transition)
    }
}

impl BaseTransformImpl for DaviRestore {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::NeverInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        self.cancel.store(false, Ordering::SeqCst);
        self.latency_ns.store(0, Ordering::SeqCst);
        let settings = self.settings().clone();
        let state =
            davi::boundary::guard(|| load(&settings)).map_err(|e| load_error(&settings, &e))?;
        gst::info!(
            CAT,
            imp = self,
            "loaded {} on {} for task {}",
            state.context.origin(),
            settings.device,
            settings.task.name()
        );
        *self.state() = Some(state);
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        *self.state() = None;
        Ok(())
    }

    fn transform_caps(
        &self,
        direction: gst::PadDirection,
        caps: &gst::Caps,
        filter: Option<&gst::Caps>,
    ) -> Option<gst::Caps> {
        let shape = self.settings().task.shape();
        let other = caps::transform(shape, direction, caps);
        gst::debug!(
            CAT,
            imp = self,
            "{caps} on the {direction:?} side gives {other}"
        );
        Some(match filter {
            Some(f) => f.intersect_with_mode(&other, gst::CapsIntersectMode::First),
            None => other,
        })
    }

    fn query(&self, direction: gst::PadDirection, query: &mut gst::QueryRef) -> bool {
        if !BaseTransformImplExt::parent_query(self, direction, query) {
            return false;
        }
        if direction == gst::PadDirection::Src {
            if let gst::QueryViewMut::Latency(q) = query.view_mut() {
                let ours = gst::ClockTime::from_nseconds(self.latency_ns.load(Ordering::SeqCst));
                let (live, min, max) = q.result();
                q.set(live, min + ours, max.map(|m| m + ours));
            }
        }
        true
    }

    fn sink_event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::FlushStart(_) => self.cancel.store(true, Ordering::SeqCst),
            gst::EventView::FlushStop(_) => self.cancel.store(false, Ordering::SeqCst),
            _ => {}
        }
        self.parent_sink_event(event)
    }
}

impl VideoFilterImpl for DaviRestore {
    fn transform_frame(
        &self,
        inframe: &gst_video::VideoFrameRef<&gst::BufferRef>,
        outframe: &mut gst_video::VideoFrameRef<&mut gst::BufferRef>,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let params = self.settings().params();
        let state = self.state();
        let Some(state) = state.as_ref() else {
            gst::element_imp_error!(self, gst::CoreError::StateChange, ["no model loaded"]);
            return Err(gst::FlowError::Error);
        };
        let mut progress = |_: f32| !self.cancel.load(Ordering::SeqCst);
        let started = std::time::Instant::now();
        let restored = davi::boundary::guard(|| {
            frame::restore(
                &state.context,
                &state.spec,
                &params,
                inframe,
                outframe,
                &mut progress,
            )
        });
        match restored {
            Ok(()) => {
                self.measured(started.elapsed());
                Ok(gst::FlowSuccess::Ok)
            }
            Err(e) if e.status == DaviStatus::Cancelled => Err(gst::FlowError::Flushing),
            Err(e) => {
                gst::element_imp_error!(
                    self,
                    gst::StreamError::Failed,
                    (
                        "cannot restore the frame at {}: {}",
                        inframe.buffer().pts().display(),
                        e.message
                    ),
                    ["libdavi status {}", e.status.as_str()]
                );
                Err(gst::FlowError::Error)
            }
        }
    }
}
