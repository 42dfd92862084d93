//! The `davirestore` element: its public type, the task it restores, and its registration.
//! The implementation (properties, model loading, the per-buffer restore) is in `imp.rs`.

use crate::caps::Shape;
use gst::glib;
use gst::prelude::*;

mod imp;

glib::wrapper! {
    /// A video filter restoring every frame with a DAVI model.
    pub struct DaviRestore(ObjectSubclass<imp::DaviRestore>)
        @extends gst_video::VideoFilter, gst_base::BaseTransform, gst::Element, gst::Object;
}

/// What the element restores: one DAVI task, each with its own default model
/// (`models/photo-<nick>.safetensors`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstDaviRestoreTask")]
pub enum Task {
    /// Sensor and compression noise.
    #[default]
    #[enum_value(name = "Denoise: remove noise", nick = "denoise")]
    Denoise = 0,
    /// An out-of-focus (Gaussian) blur.
    #[enum_value(name = "Deblur: sharpen a Gaussian blur", nick = "deblur")]
    Deblur = 1,
    /// 4× super-resolution: the output is four times wider and higher.
    #[enum_value(
        name = "Super-resolution 4x: four times the width and height",
        nick = "sr4"
    )]
    Sr4 = 2,
    /// Fill the centred box of half the frame's width and height (the box the models train on).
    #[enum_value(name = "Inpaint: fill the centred half-size box", nick = "inpaint")]
    Inpaint = 3,
    /// Give a black-and-white frame plausible colours; the output is a colour format.
    #[enum_value(name = "Colorize: colour a black-and-white frame", nick = "colorize")]
    Colorize = 4,
}

impl Task {
    /// The task name libdavi knows (`OperatorSpec::for_task`, the default model's file name).
    pub fn name(self) -> &'static str {
        match self {
            Task::Denoise => "denoise",
            Task::Deblur => "deblur",
            Task::Sr4 => "sr4",
            Task::Inpaint => "inpaint",
            Task::Colorize => "colorize",
        }
    }

    /// How the output caps follow from the input caps.
    pub fn shape(self) -> Shape {
        Shape {
            scale: if self == Task::Sr4 { 4 } else { 1 },
            colorizes: self == Task::Colorize,
        }
    }
}

/// Register `davirestore` with a plugin (no model is loaded here; see the crate docs).
pub fn register(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    gst::Element::register(
        Some(plugin),
        "davirestore",
        gst::Rank::NONE,
        DaviRestore::static_type(),
    )
}
