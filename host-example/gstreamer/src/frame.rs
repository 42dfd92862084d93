//! One raw video frame through libdavi: which GStreamer formats the element takes, how each
//! maps onto libdavi's interleaved pixel views, and the restore of one mapped frame.
//!
//! Why here and not a conversion of our own: libdavi's views already read 8- and 16-bit,
//! gray and colour, with or without alpha, at any row stride ([`davi_sdk::ImageView`]), and
//! [`davi::Context`] already carries alpha through (resampled when 4× SR enlarges). So every
//! format below is restored straight from the mapped buffer, the way the OpenFX plug-in
//! hands its images to `davi_restore`: the steps are the ones `Context::restore_image`
//! composes (check, read planes, restore, write planes). The one addition is blue-first
//! memory (BGRx, BGRA), which libdavi's layouts do not name: it is read as RGB(A) and the red
//! and blue planes are swapped before and after the network, a swap of two plane buffers
//! rather than a pass over the pixels. Padding bytes (`x`) travel as alpha does, untouched.
//!
//! 16-bit gray is libdavi's native-endian `u16`, so the element offers the `GRAY16` variant
//! of the machine it runs on (`GRAY16_LE` on x86-64 and ARM).

use davi::context::{read_planar, write_planar};
use davi::{Context, RestoreParams};
use davi_sdk::{
    DaviChannelLayout, DaviError, DaviSampleType, ImageView, ImageViewMut, OperatorSpec,
    PlanarImage,
};
use gst_video::prelude::*;
use gst_video::{VideoFormat, VideoFrameRef};

/// 16-bit gray in the machine's byte order (libdavi reads `u16` samples natively).
#[cfg(target_endian = "little")]
pub const GRAY16: VideoFormat = VideoFormat::Gray16Le;
#[cfg(target_endian = "big")]
pub const GRAY16: VideoFormat = VideoFormat::Gray16Be;

/// Every raw format the element takes and produces, in order of preference.
pub const FORMATS: [VideoFormat; 7] = [
    VideoFormat::Rgb,
    VideoFormat::Rgba,
    VideoFormat::Rgbx,
    VideoFormat::Bgrx,
    VideoFormat::Bgra,
    VideoFormat::Gray8,
    GRAY16,
];

/// How a format lies in memory, in libdavi's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pixels {
    pub sample: DaviSampleType,
    /// The layout libdavi reads; `x` padding is read as alpha.
    pub layout: DaviChannelLayout,
    /// Blue comes first in memory (red and blue planes are swapped around the restore).
    pub blue_first: bool,
}

/// libdavi's description of a format, `None` for formats the element does not take.
pub fn pixels(format: VideoFormat) -> Option<Pixels> {
    use DaviChannelLayout as L;
    let (sample, layout, blue_first) = match format {
        VideoFormat::Rgb => (DaviSampleType::U8, L::Rgb, false),
        VideoFormat::Rgba | VideoFormat::Rgbx => (DaviSampleType::U8, L::Rgba, false),
        VideoFormat::Bgra | VideoFormat::Bgrx => (DaviSampleType::U8, L::Rgba, true),
        VideoFormat::Gray8 => (DaviSampleType::U8, L::Gray, false),
        f if f == GRAY16 => (DaviSampleType::U16, L::Gray, false),
        _ => return None,
    };
    Some(Pixels {
        sample,
        layout,
        blue_first,
    })
}

/// Whether a format holds colour (colorization produces colour, so its output must).
pub fn is_color(format: VideoFormat) -> bool {
    pixels(format).is_some_and(|p| p.layout.color_channels() == 3)
}

/// Restore `input` into `output` (sizes and formats as negotiated: the output is the
/// operator's output size; colorization's output is a colour format). `progress` runs
/// between tiles on this thread; returning `false` cancels with
/// [`davi_sdk::DaviStatus::Cancelled`]. `output` is written only on success.
pub fn restore(
    context: &Context,
    spec: &OperatorSpec,
    params: &RestoreParams,
    input: &VideoFrameRef<&gst::BufferRef>,
    output: &mut VideoFrameRef<&mut gst::BufferRef>,
    progress: &mut dyn FnMut(f32) -> bool,
) -> Result<(), DaviError> {
    let (in_px, out_px) = (described(input.format())?, described(output.format())?);
    let (in_w, in_h) = (input.width() as usize, input.height() as usize);
    let (out_w, out_h) = (output.width() as usize, output.height() as usize);
    let in_stride = input.plane_stride()[0] as isize;
    let out_stride = output.plane_stride()[0] as isize;
    let in_data = input.plane_data(0).map_err(mapping)?;
    let in_view = view(in_data, in_px, in_w, in_h, in_stride)?;
    let out_data = output.plane_data_mut(0).map_err(mapping)?;
    let mut out_view = view_mut(out_data, out_px, out_w, out_h, out_stride)?;

    context.check(spec, &in_view.format(), &out_view.format())?;
    let (mut color, alpha) = read_planar(&in_view)?;
    if in_px.blue_first {
        swap_red_blue(&mut color);
    }
    let mut restored = context.restore_planar(spec, &color, params, progress)?;
    if out_px.blue_first {
        swap_red_blue(&mut restored);
    }
    write_planar(&mut out_view, &restored, alpha.as_ref())
}

fn described(format: VideoFormat) -> Result<Pixels, DaviError> {
    pixels(format).ok_or_else(|| {
        DaviError::new(
            davi_sdk::DaviStatus::UnsupportedFormat,
            format!(
                "video format {} is not one davirestore takes",
                format.to_str()
            ),
        )
    })
}

fn mapping(e: gst::glib::BoolError) -> DaviError {
    DaviError::internal(format!("the mapped video frame has no plane 0: {e}"))
}

/// Exchange the first and third planes of a three-plane image (gray has nothing to swap).
fn swap_red_blue(image: &mut PlanarImage) {
    if image.channels == 3 {
        let plane = image.plane_len();
        let (red, rest) = image.data.split_at_mut(plane);
        red.swap_with_slice(&mut rest[plane..2 * plane]);
    }
}

/// A typed view of mapped bytes. GStreamer maps system memory aligned to at least 8 bytes
/// and strides of 16-bit formats are even, so a misaligned `u16` plane is a broken
/// allocator: refused rather than copied.
fn view<'a>(
    data: &'a [u8],
    px: Pixels,
    width: usize,
    height: usize,
    stride: isize,
) -> Result<ImageView<'a>, DaviError> {
    Ok(match px.sample {
        DaviSampleType::U8 => ImageView::from_samples(data, width, height, px.layout, stride)?,
        DaviSampleType::U16 => {
            ImageView::from_samples(aligned_u16(data)?, width, height, px.layout, stride)?
        }
        DaviSampleType::F32 => return Err(DaviError::internal("no float video format is offered")),
    })
}

/// [`view`] for the output frame.
fn view_mut<'a>(
    data: &'a mut [u8],
    px: Pixels,
    width: usize,
    height: usize,
    stride: isize,
) -> Result<ImageViewMut<'a>, DaviError> {
    Ok(match px.sample {
        DaviSampleType::U8 => ImageViewMut::from_samples(data, width, height, px.layout, stride)?,
        DaviSampleType::U16 => {
            // SAFETY: every bit pattern is a valid u16; the prefix is checked empty.
            let (prefix, samples, _) = unsafe { data.align_to_mut::<u16>() };
            if !prefix.is_empty() {
                return Err(misaligned());
            }
            ImageViewMut::from_samples(samples, width, height, px.layout, stride)?
        }
        DaviSampleType::F32 => return Err(DaviError::internal("no float video format is offered")),
    })
}

fn aligned_u16(data: &[u8]) -> Result<&[u16], DaviError> {
    // SAFETY: every bit pattern is a valid u16; the prefix is checked empty.
    let (prefix, samples, _) = unsafe { data.align_to::<u16>() };
    if prefix.is_empty() {
        Ok(samples)
    } else {
        Err(misaligned())
    }
}

fn misaligned() -> DaviError {
    DaviError::new(
        davi_sdk::DaviStatus::UnsupportedFormat,
        "a 16-bit video plane is not 2-byte aligned (the upstream allocator is unusual)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offered_format_is_described() {
        for f in FORMATS {
            assert!(pixels(f).is_some(), "{f:?}");
        }
        assert_eq!(pixels(VideoFormat::I420), None);
        assert!(is_color(VideoFormat::Bgrx) && !is_color(GRAY16));
    }

    #[test]
    fn red_and_blue_planes_swap() {
        let mut img = PlanarImage::from_vec(1, 2, 3, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        swap_red_blue(&mut img);
        assert_eq!(img.data, vec![5.0, 6.0, 3.0, 4.0, 1.0, 2.0]);
    }
}
