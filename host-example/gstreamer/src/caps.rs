//! Caps negotiation of `davirestore`: which output caps an input allows, and back.
//!
//! Most tasks restore a frame into one of the same size and format, but two change it:
//! 4× super-resolution makes the frame four times wider and higher, and colorization turns
//! gray into colour. So the element is not in-place, and `transform_caps` maps each structure
//! across: widths and heights are multiplied by the scale going downstream and divided going
//! upstream (a size the scale does not divide has no input, so such caps are refused), and
//! colorization offers colour formats downstream of any input, the input's own format first
//! so that a colour input keeps its format when downstream accepts it. Everything else
//! (frame rate, pixel aspect ratio, colorimetry of same-format tasks) passes through.
//!
//! Follows the resizing `GstVideoFilter` of GStreamer 1.22,
//! `GStreamer/gstreamer: subprojects/gst-plugins-base/gst/videoconvertscale/gstvideoconvertscale.c`
//! (`transform_caps`), with fixed factors instead of free sizes.

use crate::frame::{is_color, FORMATS};
use gst::glib;
use gst_video::VideoFormat;

/// How a task's output relates to its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Output width and height over input width and height (4 for 4× SR, else 1).
    pub scale: i32,
    /// The output is colour whatever the input (colorization).
    pub colorizes: bool,
}

/// The caps on the other side of the element for `caps` on the `direction` side (`Sink`:
/// `caps` are input caps, the result output caps; `Src`: the reverse).
pub fn transform(shape: Shape, direction: gst::PadDirection, caps: &gst::Caps) -> gst::Caps {
    if caps.is_any() || (shape.scale == 1 && !shape.colorizes) {
        return caps.clone();
    }
    let downstream = direction == gst::PadDirection::Sink;
    let mut out = gst::Caps::new_empty();
    let out_mut = out.get_mut().expect("a new caps is writable");
    for (s, features) in caps.iter_with_features() {
        if let Some(s) = structure(shape, downstream, s) {
            out_mut.append_structure_full(s, Some(features.to_owned()));
        }
    }
    out
}

/// One structure across the element; `None` when no caps on the other side fit it.
fn structure(shape: Shape, downstream: bool, s: &gst::StructureRef) -> Option<gst::Structure> {
    let mut s = s.to_owned();
    if shape.scale != 1 {
        for field in ["width", "height"] {
            if let Ok(v) = s.value(field) {
                let v = if downstream {
                    scale_up(v, shape.scale)?
                } else {
                    scale_down(v, shape.scale)?
                };
                s.set_value(field, v);
            }
        }
    }
    if shape.colorizes {
        // A structure naming only formats the element does not take goes nowhere.
        let own = formats(&s).filter(|f| !f.is_empty())?;
        // Downstream of any input: colour. Upstream of colour: any input.
        let offered = FORMATS
            .into_iter()
            .filter(|f| !downstream || is_color(*f))
            .filter(|f| !own.contains(f));
        let list: Vec<&str> = own
            .iter()
            .copied()
            .filter(|f| !downstream || is_color(*f))
            .chain(offered)
            .map(|f| f.to_str().as_str())
            .collect();
        s.set("format", gst::List::new(list));
        // Gray and colour carry different colorimetry; let the other side's own apply.
        s.remove_fields(["colorimetry", "chroma-site"]);
    }
    Some(s)
}

/// The formats a structure names that the element takes, in its order (all, when it has no
/// format field); `None` when the field is neither a string nor a list of them.
fn formats(s: &gst::StructureRef) -> Option<Vec<VideoFormat>> {
    let Ok(v) = s.value("format") else {
        return Some(FORMATS.to_vec());
    };
    let names: Vec<String> = if let Ok(name) = v.get::<String>() {
        vec![name]
    } else if let Ok(list) = v.get::<gst::List>() {
        list.iter().filter_map(|v| v.get::<String>().ok()).collect()
    } else {
        return None;
    };
    let ours = names
        .iter()
        .map(|n| VideoFormat::from_string(n))
        .filter(|f| FORMATS.contains(f))
        .collect();
    Some(ours)
}

/// A width or height (a number, a range or a list of them) times `k`; sizes past `i32::MAX`
/// are dropped.
fn scale_up(v: &glib::SendValue, k: i32) -> Option<glib::SendValue> {
    use glib::value::ToSendValue;
    if let Ok(n) = v.get::<i32>() {
        return n.checked_mul(k).map(|n| n.to_send_value());
    }
    if let Ok(r) = v.get::<gst::IntRange<i32>>() {
        let step = r.step();
        // The largest allowed value whose product still fits, on the range's step grid.
        let max = r.max().min(i32::MAX / k);
        let max = r.min() + (max - r.min()) / step * step;
        return (max >= r.min()).then(|| range(r.min() * k, max * k, step * k));
    }
    if let Ok(list) = v.get::<gst::List>() {
        return map_list(&list, |v| scale_up(v, k));
    }
    Some(v.clone())
}

/// A width or height divided by `k`; values `k` does not divide are dropped (no input size
/// gives them).
fn scale_down(v: &glib::SendValue, k: i32) -> Option<glib::SendValue> {
    use glib::value::ToSendValue;
    if let Ok(n) = v.get::<i32>() {
        return (n % k == 0).then(|| (n / k).to_send_value());
    }
    if let Ok(r) = v.get::<gst::IntRange<i32>>() {
        let (min, max) = ((r.min() + k - 1) / k, r.max() / k);
        // A step that is a multiple of k stays a grid; otherwise every quotient may occur.
        let step = if r.step() % k == 0 && r.min() % k == 0 {
            r.step() / k
        } else {
            1
        };
        let max = min + (max - min).max(0) / step * step;
        return (max >= min && min * k <= r.max()).then(|| range(min, max, step));
    }
    if let Ok(list) = v.get::<gst::List>() {
        return map_list(&list, |v| scale_down(v, k));
    }
    Some(v.clone())
}

/// A range, or the single value when it has one (GStreamer ranges need `min < max`).
fn range(min: i32, max: i32, step: i32) -> glib::SendValue {
    use glib::value::ToSendValue;
    if min == max {
        min.to_send_value()
    } else {
        gst::IntRange::with_step(min, max, step).to_send_value()
    }
}

fn map_list(
    list: &gst::List,
    f: impl Fn(&glib::SendValue) -> Option<glib::SendValue>,
) -> Option<glib::SendValue> {
    use glib::value::ToSendValue;
    let values: Vec<glib::SendValue> = list.iter().filter_map(f).collect();
    match values.len() {
        0 => None,
        1 => values.into_iter().next(),
        _ => Some(gst::List::from_values(values).to_send_value()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gst::PadDirection::{Sink, Src};

    const SR4: Shape = Shape {
        scale: 4,
        colorizes: false,
    };
    const COLORIZE: Shape = Shape {
        scale: 1,
        colorizes: true,
    };
    const SAME: Shape = Shape {
        scale: 1,
        colorizes: false,
    };

    fn caps(s: &str) -> gst::Caps {
        gst::init().unwrap();
        s.parse().unwrap()
    }

    #[test]
    fn same_size_tasks_pass_caps_through() {
        let c = caps("video/x-raw,format=RGB,width=33,height=17,framerate=25/1");
        assert_eq!(transform(SAME, Sink, &c), c);
        assert_eq!(transform(SAME, Src, &c), c);
    }

    #[test]
    fn sr4_multiplies_downstream_and_divides_upstream() {
        let c = caps("video/x-raw,format=RGBA,width=32,height=24,framerate=25/1");
        let out = transform(SR4, Sink, &c);
        assert_eq!(
            out,
            caps("video/x-raw,format=RGBA,width=128,height=96,framerate=25/1")
        );
        assert_eq!(transform(SR4, Src, &out), c);
        // A size 4 does not divide has no input.
        assert!(transform(SR4, Src, &caps("video/x-raw,width=130,height=96")).is_empty());
    }

    #[test]
    fn sr4_maps_ranges_and_lists() {
        let any = caps("video/x-raw,width=[1,2147483647],height={ 10, 12, 16 }");
        let up = transform(SR4, Sink, &any);
        let s = up.structure(0).unwrap();
        let w = s.get::<gst::IntRange<i32>>("width").unwrap();
        assert_eq!((w.min(), w.max(), w.step()), (4, 2147483644, 4));
        let h: Vec<i32> = s
            .get::<gst::List>("height")
            .unwrap()
            .iter()
            .map(|v| v.get().unwrap())
            .collect();
        assert_eq!(h, vec![40, 48, 64]);

        let down = transform(SR4, Src, &any);
        let s = down.structure(0).unwrap();
        let w = s.get::<gst::IntRange<i32>>("width").unwrap();
        assert_eq!((w.min(), w.max(), w.step()), (1, 536870911, 1));
        let h: Vec<i32> = s
            .get::<gst::List>("height")
            .unwrap()
            .iter()
            .map(|v| v.get().unwrap())
            .collect();
        assert_eq!(h, vec![3, 4]);
        // A range holding a single multiple of 4 becomes that one size.
        let one = transform(SR4, Src, &caps("video/x-raw,width=[5,9]"));
        assert_eq!(one.structure(0).unwrap().get::<i32>("width").unwrap(), 2);
    }

    #[test]
    fn colorize_offers_colour_downstream_keeping_a_colour_input_first() {
        let gray = transform(
            COLORIZE,
            Sink,
            &caps("video/x-raw,format=GRAY8,width=8,height=8"),
        );
        let f: Vec<String> = gray
            .structure(0)
            .unwrap()
            .get::<gst::List>("format")
            .unwrap()
            .iter()
            .map(|v| v.get().unwrap())
            .collect();
        assert_eq!(f, ["RGB", "RGBA", "RGBx", "BGRx", "BGRA"]);

        let bgrx = transform(
            COLORIZE,
            Sink,
            &caps("video/x-raw,format=BGRx,width=8,height=8"),
        );
        let f: Vec<String> = bgrx
            .structure(0)
            .unwrap()
            .get::<gst::List>("format")
            .unwrap()
            .iter()
            .map(|v| v.get().unwrap())
            .collect();
        assert_eq!(f[0], "BGRx");
        assert_eq!(f.len(), 5);

        // Upstream of colour: any input, gray included.
        let up = transform(
            COLORIZE,
            Src,
            &caps("video/x-raw,format=RGB,width=8,height=8"),
        );
        let f: Vec<String> = up
            .structure(0)
            .unwrap()
            .get::<gst::List>("format")
            .unwrap()
            .iter()
            .map(|v| v.get().unwrap())
            .collect();
        assert_eq!(f.len(), FORMATS.len());
        assert_eq!(f[0], "RGB");
        assert!(f.iter().any(|f| f == "GRAY8"));
    }
}
