//! Model weights I/O.
//!
//! - [`model_file`]: the project's own format — safetensors whose header metadata carries
//!   the architecture, schedule, task and provenance, so a model file is self-describing;
//! - [`torch_pickle`]: a reader for PyTorch `.pt` files (zip and legacy), which tch's own
//!   loader cannot read when they hold `OrderedDict`s or nested dicts;
//! - [`convert`]: official checkpoints (`ffhq_10m.pt`, `{deg}_ema.pt`) to model files.
pub mod convert;
pub mod model_file;
pub mod torch_pickle;

pub use model_file::{LoadedModel, ModelMeta, ModelRole};
