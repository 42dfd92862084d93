//! `davirestore`: DAVI restoration as a GStreamer video filter (plugin `davi`,
//! `libgstdavi.so`).
//!
//! ```sh
//! gst-launch-1.0 filesrc location=in.mp4 ! decodebin ! videoconvert \
//!   ! davirestore task=denoise ! videoconvert ! x264enc ! mp4mux ! filesink location=out.mp4
//! ```
//!
//! Why a GStreamer element: `davi video` restores between two ffmpeg processes, but most Linux
//! media applications (players, editors, capture and streaming tools) build their pipelines
//! with GStreamer. The element restores each frame through the same safe API `libdavi.so`
//! adapts for C hosts ([`davi::Context`]), so a frame restored here equals the frame the
//! OpenFX plug-in or a C host gets from `davi_restore` with the same model and options.
//!
//! Modules: [`davirestore`] is the element (properties, start/stop, the per-buffer call);
//! [`caps`] says which output caps an input negotiates (4× SR enlarges, colorization turns
//! gray into colour); [`frame`] maps GStreamer's raw formats onto libdavi's pixel views and
//! restores one frame. Usage, formats, errors and latency: `docs/hosts/gstreamer.md`.
//!
//! Loading: registering the plugin creates no model and touches no device, because
//! `gst-plugin-scanner` loads every plugin while it builds the registry; the model is loaded
//! when the element starts (READY → PAUSED), where a failure is an error message on the bus.
//!
//! Layout after `GStreamer/gst-plugins-rs: video/hsv/` (a `cdylib` for `GST_PLUGIN_PATH`, an
//! `rlib` so tests register the plugin in-process with `plugin_register_static`).

pub mod caps;
pub mod davirestore;
pub mod frame;

use gst::glib;

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    davirestore::register(plugin)
}

// "MIT/X11" is GStreamer's name for the MIT licence; GStreamer refuses plugins whose licence
// string it does not know.
gst::plugin_define!(
    davi,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    env!("CARGO_PKG_VERSION"),
    "MIT/X11",
    "libdavi",
    "libdavi",
    env!("CARGO_PKG_REPOSITORY")
);
