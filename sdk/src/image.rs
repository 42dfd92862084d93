//! Pixel memory: the C image descriptor [`DaviImage`], its validated safe views
//! ([`ImageView`], [`ImageViewMut`]) and the planar `f32` form plugins restore
//! ([`PlanarImage`], with alpha kept aside in an [`AlphaPlane`]).
//!
//! Why: hosts hand over pixels in their own layout (8/16-bit or float, gray or colour, with or
//! without alpha, top-down or bottom-up) and must not have to repack them. The descriptor says
//! exactly where every sample is: interleaved samples, an explicit **signed** row stride in
//! bytes (a bottom-up host passes the address of the image's top row, which is the last row
//! in memory, and a negative stride), and a data pointer. It is validated once, at the edge,
//! into a view whose every row access is in bounds; code below the edge never sees raw
//! pointers. Plugins only ever see [`PlanarImage`]: RGB planes of `f32` in `[0, 1]`.
//!
//! Anchors: `image-rs/image: src/images/flat.rs` (`SampleLayout`: strides validated once,
//! `NormalFormImageError`-style reasons) and OpenFX `kOfxImagePropRowBytes` (signed row bytes).
//!
//! Conventions: 16-bit samples are native-endian; `u8`/`u16` map to `[0, 1]` by dividing by
//! 255/65535 and back by rounding; `f32` colour is clamped to `[0, 1]` (NaN becomes 0) on the
//! way in and out. Alpha is never converted when written back to the same sample type: it is
//! carried through bit for bit (straight or premultiplied alike, it is not interpreted).

use crate::status::{DaviError, DaviStatus};
use std::ffi::c_void;
use std::marker::PhantomData;
use std::mem::size_of;

/// How each sample is stored.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DaviSampleType {
    /// `uint8_t`, 0..=255 maps to [0, 1].
    U8 = 0,
    /// `uint16_t`, native-endian, 0..=65535 maps to [0, 1]. Data and stride 2-byte aligned.
    U16 = 1,
    /// `float`, [0, 1]. Data and stride 4-byte aligned.
    F32 = 2,
}

/// Which channels each pixel has, in memory order (interleaved).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DaviChannelLayout {
    /// One gray sample.
    Gray = 0,
    /// Gray, then alpha.
    GrayAlpha = 1,
    /// Red, green, blue.
    Rgb = 2,
    /// Red, green, blue, alpha.
    Rgba = 3,
}

impl DaviSampleType {
    /// Decode the `sample_type` field of a descriptor.
    pub fn from_u32(v: u32) -> Option<Self> {
        [Self::U8, Self::U16, Self::F32].get(v as usize).copied()
    }
    /// Bytes per sample (also the required alignment).
    pub const fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::U16 => 2,
            Self::F32 => 4,
        }
    }
}

impl DaviChannelLayout {
    /// Decode the `layout` field of a descriptor.
    pub fn from_u32(v: u32) -> Option<Self> {
        [Self::Gray, Self::GrayAlpha, Self::Rgb, Self::Rgba]
            .get(v as usize)
            .copied()
    }
    /// Samples per pixel.
    pub const fn channels(self) -> usize {
        match self {
            Self::Gray => 1,
            Self::GrayAlpha => 2,
            Self::Rgb => 3,
            Self::Rgba => 4,
        }
    }
    /// Colour samples per pixel (1 or 3).
    pub const fn color_channels(self) -> usize {
        match self {
            Self::Gray | Self::GrayAlpha => 1,
            Self::Rgb | Self::Rgba => 3,
        }
    }
    /// Whether the last sample of each pixel is alpha.
    pub const fn has_alpha(self) -> bool {
        matches!(self, Self::GrayAlpha | Self::Rgba)
    }
}

/// C descriptor of caller-owned interleaved pixel memory (ABI 1.0, 40 bytes on 64-bit).
///
/// Ownership: the descriptor and the pixels belong to the caller and must stay valid (and,
/// for an output, unaliased) for the duration of the call they are passed to; nothing keeps
/// a pointer to them after the call returns. Only `DaviImage` v1 fields are read; the struct
/// grows by appending fields, and `struct_size` tells which ones the caller filled.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DaviImage {
    /// `sizeof(DaviImage)` as the caller compiled it; at least [`DaviImage::V1_SIZE`].
    pub struct_size: u32,
    /// Pixels per row; non-zero.
    pub width: u32,
    /// Rows; non-zero.
    pub height: u32,
    /// A [`DaviSampleType`] value.
    pub sample_type: u32,
    /// A [`DaviChannelLayout`] value.
    pub layout: u32,
    /// Reserved for future use (colour space, premultiplication); must be 0 in ABI 1.0, and a
    /// non-zero value is refused as [`DaviStatus::UnsupportedFormat`] rather than ignored.
    pub flags: u32,
    /// Bytes from the start of one row to the start of the row below it. Its magnitude is at
    /// least `width * channels * sample size` and a multiple of the sample size; it is
    /// negative for bottom-up memory.
    pub row_stride: isize,
    /// Address of the first sample of the **top** row (for bottom-up memory, the row with the
    /// highest address). Aligned to the sample size.
    pub data: *mut c_void,
}

impl DaviImage {
    /// Size of the ABI 1.0 descriptor; smaller `struct_size` values are refused.
    pub const V1_SIZE: u32 = size_of::<DaviImage>() as u32;

    /// A descriptor for Rust callers (sets `struct_size`, zero flags).
    pub fn new(
        width: u32,
        height: u32,
        sample_type: DaviSampleType,
        layout: DaviChannelLayout,
        row_stride: isize,
        data: *mut c_void,
    ) -> Self {
        DaviImage {
            struct_size: Self::V1_SIZE,
            width,
            height,
            sample_type: sample_type as u32,
            layout: layout as u32,
            flags: 0,
            row_stride,
            data,
        }
    }
}

/// Why pixel memory or a planar image was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("`{0}` is NULL")]
    Null(&'static str),
    #[error("image struct_size {got} is smaller than the ABI 1.0 descriptor ({need} bytes)")]
    StructSize { got: u32, need: u32 },
    #[error("unknown sample type {0} (0 = u8, 1 = u16, 2 = f32)")]
    UnknownSampleType(u32),
    #[error("unknown channel layout {0} (0 = gray, 1 = gray+alpha, 2 = rgb, 3 = rgba)")]
    UnknownLayout(u32),
    #[error("image flags {0:#x} are not supported (must be 0)")]
    UnsupportedFlags(u32),
    #[error("image size {width}x{height} is empty")]
    ZeroSize { width: usize, height: usize },
    #[error("image size {width}x{height} overflows the address space")]
    Overflow { width: usize, height: usize },
    #[error("row stride {stride} is smaller than a row ({row_bytes} bytes)")]
    StrideTooSmall { stride: isize, row_bytes: usize },
    #[error("{what} is not aligned to the {align}-byte sample size")]
    Misaligned { what: &'static str, align: usize },
    #[error("buffer holds {got} bytes, the image needs {need}")]
    BufferTooSmall { got: usize, need: usize },
    #[error("{0}")]
    Mismatch(String),
    #[error("allocating {0} bytes failed")]
    OutOfMemory(usize),
}

impl ImageError {
    /// The status C callers see for this error.
    pub fn status(&self) -> DaviStatus {
        match self {
            ImageError::Null(_) => DaviStatus::NullArgument,
            ImageError::UnknownSampleType(_)
            | ImageError::UnknownLayout(_)
            | ImageError::UnsupportedFlags(_) => DaviStatus::UnsupportedFormat,
            ImageError::OutOfMemory(_) => DaviStatus::OutOfMemory,
            _ => DaviStatus::InvalidArgument,
        }
    }
}

impl From<ImageError> for DaviError {
    fn from(e: ImageError) -> Self {
        DaviError::new(e.status(), e.to_string())
    }
}

/// Size, sample type and channels of an interleaved image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ImageFormat {
    pub width: usize,
    pub height: usize,
    pub sample_type: DaviSampleType,
    pub layout: DaviChannelLayout,
}

impl ImageFormat {
    pub fn new(
        width: usize,
        height: usize,
        sample_type: DaviSampleType,
        layout: DaviChannelLayout,
    ) -> Self {
        ImageFormat {
            width,
            height,
            sample_type,
            layout,
        }
    }

    /// Bytes one row of samples occupies (`None` on overflow).
    pub fn row_bytes(&self) -> Option<usize> {
        self.width
            .checked_mul(self.layout.channels())?
            .checked_mul(self.sample_type.size())
    }

    /// Bytes of a tightly packed image (`row_bytes * height`), `None` on overflow.
    pub fn packed_len(&self) -> Option<usize> {
        self.row_bytes()?.checked_mul(self.height)
    }

    /// Validate this format with a stride and return (row bytes, bytes spanned from the lowest
    /// to the highest address touched).
    fn check(&self, stride: isize) -> Result<(usize, usize), ImageError> {
        let (width, height) = (self.width, self.height);
        if width == 0 || height == 0 {
            return Err(ImageError::ZeroSize { width, height });
        }
        let overflow = ImageError::Overflow { width, height };
        let row_bytes = self.row_bytes().ok_or(overflow.clone())?;
        let pitch = stride.unsigned_abs();
        if pitch < row_bytes {
            return Err(ImageError::StrideTooSmall { stride, row_bytes });
        }
        let span = (height - 1)
            .checked_mul(pitch)
            .and_then(|s| s.checked_add(row_bytes))
            .filter(|s| *s <= isize::MAX as usize)
            .ok_or(overflow)?;
        let align = self.sample_type.size();
        if !pitch.is_multiple_of(align) {
            return Err(ImageError::Misaligned {
                what: "row stride",
                align,
            });
        }
        Ok((row_bytes, span))
    }
}

/// A sample type a typed slice can hold (`u8`, `u16`, `f32`).
pub trait Sample: Copy + sealed::Sealed {
    const TYPE: DaviSampleType;
}
impl Sample for u8 {
    const TYPE: DaviSampleType = DaviSampleType::U8;
}
impl Sample for u16 {
    const TYPE: DaviSampleType = DaviSampleType::U16;
}
impl Sample for f32 {
    const TYPE: DaviSampleType = DaviSampleType::F32;
}
mod sealed {
    pub trait Sealed {}
    impl Sealed for u8 {}
    impl Sealed for u16 {}
    impl Sealed for f32 {}
}

/// One row of samples, typed.
#[derive(Clone, Copy, Debug)]
pub enum RowRef<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
    F32(&'a [f32]),
}

/// One mutable row of samples, typed.
#[derive(Debug)]
pub enum RowMut<'a> {
    U8(&'a mut [u8]),
    U16(&'a mut [u16]),
    F32(&'a mut [f32]),
}

/// Where validated pixel memory lies: the top row's address and the signed stride.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    format: ImageFormat,
    stride: isize,
    row_bytes: usize,
    top: usize,
}

impl Geometry {
    /// Validate a format, a stride and the address of the top row.
    fn new(format: ImageFormat, stride: isize, top: *const u8) -> Result<Self, ImageError> {
        let (row_bytes, span) = format.check(stride)?;
        let align = format.sample_type.size();
        let addr = top as usize;
        if !addr.is_multiple_of(align) {
            return Err(ImageError::Misaligned {
                what: "data pointer",
                align,
            });
        }
        // The lowest and highest addresses touched must not wrap around the address space.
        let below = (format.height - 1) * stride.unsigned_abs();
        let fits = if stride < 0 {
            addr.checked_sub(below)
                .and_then(|lo| lo.checked_add(span))
                .is_some()
        } else {
            addr.checked_add(span).is_some()
        };
        if !fits {
            return Err(ImageError::Overflow {
                width: format.width,
                height: format.height,
            });
        }
        Ok(Geometry {
            format,
            stride,
            row_bytes,
            top: addr,
        })
    }

    /// Byte offset of the top row inside a slice that holds the whole image.
    fn top_offset(format: &ImageFormat, stride: isize) -> usize {
        if stride < 0 {
            (format.height - 1) * stride.unsigned_abs()
        } else {
            0
        }
    }

    /// Address of row `y`. Panics if `y` is out of range.
    fn row_addr(&self, y: usize) -> usize {
        assert!(
            y < self.format.height,
            "row {y} out of range (height {})",
            self.format.height
        );
        // |y * stride| <= span <= isize::MAX, checked at construction.
        (self.top as isize).wrapping_add(y as isize * self.stride) as usize
    }
}

/// A validated, read-only view of interleaved pixel memory.
///
/// Made from a C descriptor ([`ImageView::from_descriptor`]) or a typed slice
/// ([`ImageView::from_samples`]); every row it hands out is in bounds.
#[derive(Clone, Copy, Debug)]
pub struct ImageView<'a> {
    geo: Geometry,
    _mem: PhantomData<&'a [u8]>,
}

// SAFETY: an ImageView is a shared borrow of plain bytes, like `&[u8]`.
unsafe impl Send for ImageView<'_> {}
unsafe impl Sync for ImageView<'_> {}

/// A validated, writable view of interleaved pixel memory.
#[derive(Debug)]
pub struct ImageViewMut<'a> {
    geo: Geometry,
    _mem: PhantomData<&'a mut [u8]>,
}

// SAFETY: an ImageViewMut is an exclusive borrow of plain bytes, like `&mut [u8]`.
unsafe impl Send for ImageViewMut<'_> {}
unsafe impl Sync for ImageViewMut<'_> {}

/// Read and check a C descriptor: NULL, `struct_size`, enums, flags, data pointer.
///
/// # Safety
/// `desc` must be NULL or point to at least `struct_size` readable bytes.
unsafe fn read_descriptor(
    desc: *const DaviImage,
) -> Result<(ImageFormat, isize, *mut u8), ImageError> {
    if desc.is_null() {
        return Err(ImageError::Null("image"));
    }
    // Read the size first: a caller with an older, smaller struct must not be over-read.
    let struct_size = std::ptr::read_unaligned(desc.cast::<u32>());
    if struct_size < DaviImage::V1_SIZE {
        return Err(ImageError::StructSize {
            got: struct_size,
            need: DaviImage::V1_SIZE,
        });
    }
    let d = std::ptr::read(desc);
    let sample_type = DaviSampleType::from_u32(d.sample_type)
        .ok_or(ImageError::UnknownSampleType(d.sample_type))?;
    let layout =
        DaviChannelLayout::from_u32(d.layout).ok_or(ImageError::UnknownLayout(d.layout))?;
    if d.flags != 0 {
        return Err(ImageError::UnsupportedFlags(d.flags));
    }
    let format = ImageFormat::new(d.width as usize, d.height as usize, sample_type, layout);
    // Size problems are reported before a NULL data pointer: they are the more useful message.
    format.check(d.row_stride)?;
    if d.data.is_null() {
        return Err(ImageError::Null("image.data"));
    }
    Ok((format, d.row_stride, d.data.cast()))
}

/// Check a typed slice and return the address of the top row.
fn slice_top<T: Sample>(
    len: usize,
    ptr: *const T,
    format: &ImageFormat,
    stride: isize,
) -> Result<*const u8, ImageError> {
    let (_, span) = format.check(stride)?;
    let got = len * size_of::<T>();
    if got < span {
        return Err(ImageError::BufferTooSmall { got, need: span });
    }
    Ok(ptr
        .cast::<u8>()
        .wrapping_add(Geometry::top_offset(format, stride)))
}

impl<'a> ImageView<'a> {
    /// Validate a C descriptor.
    ///
    /// # Safety
    /// `desc` must be NULL or valid for reads of its `struct_size` bytes, and the memory it
    /// describes must stay readable and unmodified for `'a`.
    pub unsafe fn from_descriptor(desc: *const DaviImage) -> Result<Self, ImageError> {
        let (format, stride, data) = read_descriptor(desc)?;
        Ok(ImageView {
            geo: Geometry::new(format, stride, data)?,
            _mem: PhantomData,
        })
    }

    /// View a typed slice. `stride_bytes >= 0`: the top row starts the slice; `< 0`: the slice
    /// is bottom-up, the top row is the last row in memory.
    pub fn from_samples<T: Sample>(
        data: &'a [T],
        width: usize,
        height: usize,
        layout: DaviChannelLayout,
        stride_bytes: isize,
    ) -> Result<Self, ImageError> {
        let format = ImageFormat::new(width, height, T::TYPE, layout);
        let top = slice_top(data.len(), data.as_ptr(), &format, stride_bytes)?;
        Ok(ImageView {
            geo: Geometry::new(format, stride_bytes, top)?,
            _mem: PhantomData,
        })
    }

    pub fn format(&self) -> ImageFormat {
        self.geo.format
    }
    pub fn width(&self) -> usize {
        self.geo.format.width
    }
    pub fn height(&self) -> usize {
        self.geo.format.height
    }
    pub fn stride(&self) -> isize {
        self.geo.stride
    }

    /// The samples of row `y` (0 = top). Panics if `y >= height`.
    pub fn row(&self, y: usize) -> RowRef<'a> {
        let addr = self.geo.row_addr(y);
        let n = self.geo.row_bytes / self.geo.format.sample_type.size();
        // SAFETY: validated at construction: in bounds, aligned, alive for 'a, not mutated.
        unsafe {
            match self.geo.format.sample_type {
                DaviSampleType::U8 => RowRef::U8(std::slice::from_raw_parts(addr as *const u8, n)),
                DaviSampleType::U16 => {
                    RowRef::U16(std::slice::from_raw_parts(addr as *const u16, n))
                }
                DaviSampleType::F32 => {
                    RowRef::F32(std::slice::from_raw_parts(addr as *const f32, n))
                }
            }
        }
    }

    /// The first sample that is not a finite number (NaN, ±inf), as `(x, y, channel)`; `None`
    /// for integer sample types. [`Self::to_planar_rgb`] clamps (NaN becomes 0) and alpha is
    /// carried through untouched, so an edge that refuses non-finite input (libdavi's C API
    /// does) checks here first.
    pub fn first_non_finite(&self) -> Option<(usize, usize, usize)> {
        let ch = self.geo.format.layout.channels();
        (0..self.height()).find_map(|y| match self.row(y) {
            RowRef::F32(r) => r
                .iter()
                .position(|v| !v.is_finite())
                .map(|i| (i / ch, y, i % ch)),
            RowRef::U8(_) | RowRef::U16(_) => None,
        })
    }

    /// Split into planar RGB `f32` in `[0, 1]` (gray is replicated into three planes) and the
    /// alpha plane in its original sample type, if the layout has alpha.
    pub fn to_planar_rgb(&self) -> Result<(PlanarImage, Option<AlphaPlane>), ImageError> {
        let f = self.geo.format;
        let (w, h) = (f.width, f.height);
        let plane = w * h;
        let mut rgb = PlanarImage::try_zeros(w, h, 3)?;
        let mut alpha = if f.layout.has_alpha() {
            Some(AlphaPlane::try_zeros(w, h, f.sample_type)?)
        } else {
            None
        };
        let ch = f.layout.channels();
        let cc = f.layout.color_channels();
        for y in 0..h {
            let row = self.row(y);
            for x in 0..w {
                let i = y * w + x;
                for c in 0..3 {
                    let src = if cc == 1 { 0 } else { c };
                    rgb.data[c * plane + i] = row.get_unit(x * ch + src);
                }
                if let Some(a) = alpha.as_mut() {
                    a.samples.copy_from_row(i, &row, x * ch + ch - 1);
                }
            }
        }
        Ok((rgb, alpha))
    }
}

impl<'a> ImageViewMut<'a> {
    /// Validate a C descriptor of writable memory.
    ///
    /// # Safety
    /// `desc` must be NULL or valid for reads of its `struct_size` bytes, and the memory it
    /// describes must stay writable and not otherwise accessed for `'a`.
    pub unsafe fn from_descriptor(desc: *const DaviImage) -> Result<Self, ImageError> {
        let (format, stride, data) = read_descriptor(desc)?;
        Ok(ImageViewMut {
            geo: Geometry::new(format, stride, data)?,
            _mem: PhantomData,
        })
    }

    /// View a mutable typed slice (see [`ImageView::from_samples`] for the stride sign).
    pub fn from_samples<T: Sample>(
        data: &'a mut [T],
        width: usize,
        height: usize,
        layout: DaviChannelLayout,
        stride_bytes: isize,
    ) -> Result<Self, ImageError> {
        let format = ImageFormat::new(width, height, T::TYPE, layout);
        let top = slice_top(data.len(), data.as_mut_ptr(), &format, stride_bytes)?;
        Ok(ImageViewMut {
            geo: Geometry::new(format, stride_bytes, top)?,
            _mem: PhantomData,
        })
    }

    pub fn format(&self) -> ImageFormat {
        self.geo.format
    }
    pub fn width(&self) -> usize {
        self.geo.format.width
    }
    pub fn height(&self) -> usize {
        self.geo.format.height
    }

    /// A read-only view of the same memory, borrowing this one.
    pub fn as_view(&self) -> ImageView<'_> {
        ImageView {
            geo: self.geo,
            _mem: PhantomData,
        }
    }

    /// The samples of row `y` (0 = top), writable. Panics if `y >= height`.
    pub fn row_mut(&mut self, y: usize) -> RowMut<'_> {
        let addr = self.geo.row_addr(y);
        let n = self.geo.row_bytes / self.geo.format.sample_type.size();
        // SAFETY: validated at construction; rows never overlap because |stride| >= row bytes;
        // `&mut self` makes this the only live row.
        unsafe {
            match self.geo.format.sample_type {
                DaviSampleType::U8 => {
                    RowMut::U8(std::slice::from_raw_parts_mut(addr as *mut u8, n))
                }
                DaviSampleType::U16 => {
                    RowMut::U16(std::slice::from_raw_parts_mut(addr as *mut u16, n))
                }
                DaviSampleType::F32 => {
                    RowMut::F32(std::slice::from_raw_parts_mut(addr as *mut f32, n))
                }
            }
        }
    }

    /// Write planar colour (1 or 3 planes, `[0, 1]`) and, for layouts with alpha, the alpha
    /// plane (`None` writes opaque). Three planes written to a gray layout are averaged.
    /// Nothing is written unless all sizes match.
    pub fn write_planar(
        &mut self,
        color: &PlanarImage,
        alpha: Option<&AlphaPlane>,
    ) -> Result<(), ImageError> {
        let f = self.geo.format;
        let (w, h) = (f.width, f.height);
        if color.width != w || color.height != h {
            return Err(ImageError::Mismatch(format!(
                "planar image is {}x{}, the destination {w}x{h}",
                color.width, color.height
            )));
        }
        if color.channels != 1 && color.channels != 3 {
            return Err(ImageError::Mismatch(format!(
                "planar image has {} channels, need 1 or 3",
                color.channels
            )));
        }
        if let Some(a) = alpha {
            if a.width != w || a.height != h {
                return Err(ImageError::Mismatch(format!(
                    "alpha plane is {}x{}, the destination {w}x{h} (resize it first)",
                    a.width, a.height
                )));
            }
        }
        let plane = w * h;
        let ch = f.layout.channels();
        let cc = f.layout.color_channels();
        let has_alpha = f.layout.has_alpha();
        for y in 0..h {
            let mut row = self.row_mut(y);
            for x in 0..w {
                let i = y * w + x;
                let px = x * ch;
                if cc == 1 {
                    let v = if color.channels == 1 {
                        color.data[i]
                    } else {
                        (color.data[i] + color.data[plane + i] + color.data[2 * plane + i]) / 3.0
                    };
                    row.set_unit(px, v);
                } else {
                    for c in 0..3 {
                        let src = if color.channels == 1 { 0 } else { c };
                        row.set_unit(px + c, color.data[src * plane + i]);
                    }
                }
                if has_alpha {
                    match alpha {
                        Some(a) => a.samples.copy_to_row(i, &mut row, px + ch - 1),
                        None => row.set_unit(px + ch - 1, 1.0),
                    }
                }
            }
        }
        Ok(())
    }
}

impl RowRef<'_> {
    /// Sample `i` mapped to `[0, 1]` (f32 clamped, NaN to 0).
    fn get_unit(&self, i: usize) -> f32 {
        match self {
            RowRef::U8(r) => r[i] as f32 / 255.0,
            RowRef::U16(r) => r[i] as f32 / 65535.0,
            RowRef::F32(r) => clamp_unit(r[i]),
        }
    }
}

impl RowMut<'_> {
    /// Store a `[0, 1]` value at sample `i`, rounding for integer types.
    fn set_unit(&mut self, i: usize, v: f32) {
        let v = clamp_unit(v);
        match self {
            RowMut::U8(r) => r[i] = (v * 255.0 + 0.5) as u8,
            RowMut::U16(r) => r[i] = (v * 65535.0 + 0.5) as u16,
            RowMut::F32(r) => r[i] = v,
        }
    }
}

fn clamp_unit(v: f32) -> f32 {
    if v.is_nan() {
        0.0
    } else {
        v.clamp(0.0, 1.0)
    }
}

/// Colour planes of `f32`, channel-major: sample `(c, y, x)` is
/// `data[(c * height + y) * width + x]`. The form every plugin restores; values are in `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanarImage {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<f32>,
}

impl PlanarImage {
    /// A black image. Panics on overflow; use [`PlanarImage::try_zeros`] at boundaries.
    pub fn zeros(width: usize, height: usize, channels: usize) -> Self {
        Self::try_zeros(width, height, channels).expect("planar image size")
    }

    /// A black image, reporting overflow or a failed allocation.
    pub fn try_zeros(width: usize, height: usize, channels: usize) -> Result<Self, ImageError> {
        let n = planar_len(width, height, channels)?;
        let mut data = Vec::new();
        data.try_reserve_exact(n)
            .map_err(|_| ImageError::OutOfMemory(n.saturating_mul(4)))?;
        data.resize(n, 0.0);
        Ok(PlanarImage {
            width,
            height,
            channels,
            data,
        })
    }

    /// Wrap existing samples; the length must be `width * height * channels`.
    pub fn from_vec(
        width: usize,
        height: usize,
        channels: usize,
        data: Vec<f32>,
    ) -> Result<Self, ImageError> {
        let n = planar_len(width, height, channels)?;
        if data.len() != n {
            return Err(ImageError::BufferTooSmall {
                got: data.len() * 4,
                need: n * 4,
            });
        }
        Ok(PlanarImage {
            width,
            height,
            channels,
            data,
        })
    }

    /// Samples per plane.
    pub fn plane_len(&self) -> usize {
        self.width * self.height
    }
    /// Plane `c`.
    pub fn plane(&self, c: usize) -> &[f32] {
        let n = self.plane_len();
        &self.data[c * n..(c + 1) * n]
    }
    /// Plane `c`, writable.
    pub fn plane_mut(&mut self, c: usize) -> &mut [f32] {
        let n = self.plane_len();
        &mut self.data[c * n..(c + 1) * n]
    }
    /// Sample at channel `c`, row `y`, column `x`.
    pub fn get(&self, c: usize, y: usize, x: usize) -> f32 {
        self.data[(c * self.height + y) * self.width + x]
    }
}

fn planar_len(width: usize, height: usize, channels: usize) -> Result<usize, ImageError> {
    if width == 0 || height == 0 || channels == 0 {
        return Err(ImageError::ZeroSize { width, height });
    }
    width
        .checked_mul(height)
        .and_then(|n| n.checked_mul(channels))
        .filter(|n| n.checked_mul(4).is_some_and(|b| b <= isize::MAX as usize))
        .ok_or(ImageError::Overflow { width, height })
}

/// Alpha samples kept in the type they came in, so writing them back is bit-exact.
#[derive(Clone, Debug, PartialEq)]
pub enum AlphaSamples {
    U8(Vec<u8>),
    U16(Vec<u16>),
    F32(Vec<f32>),
}

/// The alpha plane of an image, row-major, never interpreted by restoration.
#[derive(Clone, Debug, PartialEq)]
pub struct AlphaPlane {
    pub width: usize,
    pub height: usize,
    pub samples: AlphaSamples,
}

impl AlphaPlane {
    fn try_zeros(width: usize, height: usize, t: DaviSampleType) -> Result<Self, ImageError> {
        let n = planar_len(width, height, 1)?;
        let oom = |_| ImageError::OutOfMemory(n.saturating_mul(t.size()));
        let samples = match t {
            DaviSampleType::U8 => {
                let mut v = Vec::new();
                v.try_reserve_exact(n).map_err(oom)?;
                v.resize(n, 0);
                AlphaSamples::U8(v)
            }
            DaviSampleType::U16 => {
                let mut v = Vec::new();
                v.try_reserve_exact(n).map_err(oom)?;
                v.resize(n, 0);
                AlphaSamples::U16(v)
            }
            DaviSampleType::F32 => {
                let mut v = Vec::new();
                v.try_reserve_exact(n).map_err(oom)?;
                v.resize(n, 0.0);
                AlphaSamples::F32(v)
            }
        };
        Ok(AlphaPlane {
            width,
            height,
            samples,
        })
    }

    /// Alpha `i` as a `[0, 1]`-scaled `f64` (f32 alpha is not clamped here).
    fn unit(&self, i: usize) -> f64 {
        match &self.samples {
            AlphaSamples::U8(v) => v[i] as f64 / 255.0,
            AlphaSamples::U16(v) => v[i] as f64 / 65535.0,
            AlphaSamples::F32(v) => v[i] as f64,
        }
    }

    /// Resample to `width x height` with centre-aligned bilinear interpolation (for operators
    /// that change the size, such as super-resolution). The same size returns an exact copy.
    pub fn resized(&self, width: usize, height: usize) -> AlphaPlane {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let (sw, sh) = (self.width, self.height);
        let coord = |o: usize, n_out: usize, n_in: usize| {
            let s =
                ((o as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).clamp(0.0, (n_in - 1) as f64);
            let i0 = s.floor() as usize;
            (i0, (i0 + 1).min(n_in - 1), s - i0 as f64)
        };
        let mut out = Vec::with_capacity(width * height);
        for y in 0..height {
            let (y0, y1, fy) = coord(y, height, sh);
            for x in 0..width {
                let (x0, x1, fx) = coord(x, width, sw);
                let top = self.unit(y0 * sw + x0) * (1.0 - fx) + self.unit(y0 * sw + x1) * fx;
                let bot = self.unit(y1 * sw + x0) * (1.0 - fx) + self.unit(y1 * sw + x1) * fx;
                out.push(top * (1.0 - fy) + bot * fy);
            }
        }
        let samples = match &self.samples {
            AlphaSamples::U8(_) => AlphaSamples::U8(
                out.iter()
                    .map(|v| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8)
                    .collect(),
            ),
            AlphaSamples::U16(_) => AlphaSamples::U16(
                out.iter()
                    .map(|v| (v.clamp(0.0, 1.0) * 65535.0 + 0.5) as u16)
                    .collect(),
            ),
            AlphaSamples::F32(_) => AlphaSamples::F32(out.iter().map(|v| *v as f32).collect()),
        };
        AlphaPlane {
            width,
            height,
            samples,
        }
    }
}

impl AlphaSamples {
    fn copy_from_row(&mut self, i: usize, row: &RowRef<'_>, s: usize) {
        match (self, row) {
            (AlphaSamples::U8(a), RowRef::U8(r)) => a[i] = r[s],
            (AlphaSamples::U16(a), RowRef::U16(r)) => a[i] = r[s],
            (AlphaSamples::F32(a), RowRef::F32(r)) => a[i] = r[s],
            _ => unreachable!("alpha plane is allocated with the row's sample type"),
        }
    }

    /// Store alpha `i` at sample `s` of a row: bit-exact for the same type, rescaled otherwise.
    fn copy_to_row(&self, i: usize, row: &mut RowMut<'_>, s: usize) {
        match (self, row) {
            (AlphaSamples::U8(a), RowMut::U8(r)) => r[s] = a[i],
            (AlphaSamples::U16(a), RowMut::U16(r)) => r[s] = a[i],
            (AlphaSamples::F32(a), RowMut::F32(r)) => r[s] = a[i],
            (a, row) => {
                let v = match a {
                    AlphaSamples::U8(a) => a[i] as f32 / 255.0,
                    AlphaSamples::U16(a) => a[i] as f32 / 65535.0,
                    AlphaSamples::F32(a) => a[i],
                };
                row.set_unit(s, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DaviChannelLayout::*;

    fn desc<T>(
        buf: &mut [T],
        w: u32,
        h: u32,
        t: DaviSampleType,
        l: DaviChannelLayout,
        stride: isize,
    ) -> DaviImage {
        DaviImage::new(w, h, t, l, stride, buf.as_mut_ptr().cast())
    }

    #[test]
    fn descriptor_v1_layout_is_pinned() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(DaviImage, struct_size), 0);
        assert_eq!(offset_of!(DaviImage, width), 4);
        assert_eq!(offset_of!(DaviImage, height), 8);
        assert_eq!(offset_of!(DaviImage, sample_type), 12);
        assert_eq!(offset_of!(DaviImage, layout), 16);
        assert_eq!(offset_of!(DaviImage, flags), 20);
        assert_eq!(offset_of!(DaviImage, row_stride), 24);
        assert_eq!(offset_of!(DaviImage, data), 24 + size_of::<isize>());
        assert_eq!(DaviImage::V1_SIZE as usize, 24 + 2 * size_of::<usize>());
    }

    #[test]
    fn null_descriptor_and_null_data_are_refused() {
        let e = unsafe { ImageView::from_descriptor(std::ptr::null()) }.unwrap_err();
        assert_eq!(e, ImageError::Null("image"));
        assert_eq!(e.status(), DaviStatus::NullArgument);
        let d = DaviImage::new(4, 4, DaviSampleType::U8, Rgb, 12, std::ptr::null_mut());
        let e = unsafe { ImageViewMut::from_descriptor(&d) }.unwrap_err();
        assert_eq!(e, ImageError::Null("image.data"));
    }

    #[test]
    fn zero_sizes_overflow_and_short_strides_are_refused() {
        let mut buf = vec![0u8; 64];
        for (w, h) in [(0, 4), (4, 0)] {
            let d = desc(&mut buf, w, h, DaviSampleType::U8, Rgb, 12);
            let e = unsafe { ImageView::from_descriptor(&d) }.unwrap_err();
            assert!(matches!(e, ImageError::ZeroSize { .. }), "{e}");
            assert_eq!(e.status(), DaviStatus::InvalidArgument);
        }
        // u32::MAX x u32::MAX RGBA f32 rows overflow the address space.
        let d = desc(
            &mut buf,
            u32::MAX,
            u32::MAX,
            DaviSampleType::F32,
            Rgba,
            isize::MAX,
        );
        let e = unsafe { ImageView::from_descriptor(&d) }.unwrap_err();
        assert!(matches!(e, ImageError::Overflow { .. }), "{e}");
        let d = desc(&mut buf, 4, 4, DaviSampleType::U8, Rgb, 11);
        let e = unsafe { ImageView::from_descriptor(&d) }.unwrap_err();
        assert_eq!(
            e,
            ImageError::StrideTooSmall {
                stride: 11,
                row_bytes: 12
            }
        );
        let d = desc(&mut buf, 4, 4, DaviSampleType::U8, Rgb, -11);
        assert!(matches!(
            unsafe { ImageView::from_descriptor(&d) },
            Err(ImageError::StrideTooSmall { .. })
        ));
        // Slices that are too short are refused too.
        let e = ImageView::from_samples(&buf[..47], 4, 4, Rgb, 12).unwrap_err();
        assert_eq!(e, ImageError::BufferTooSmall { got: 47, need: 48 });
        assert!(ImageView::from_samples(&buf[..48], 4, 4, Rgb, 12).is_ok());
    }

    #[test]
    fn struct_size_enums_flags_and_alignment_are_checked() {
        let mut buf = vec![0u16; 64];
        let mut d = desc(&mut buf, 4, 4, DaviSampleType::U16, Rgb, 24);
        assert!(unsafe { ImageView::from_descriptor(&d) }.is_ok());
        d.struct_size = 16;
        assert!(matches!(
            unsafe { ImageView::from_descriptor(&d) },
            Err(ImageError::StructSize { got: 16, .. })
        ));
        d.struct_size = DaviImage::V1_SIZE;
        d.sample_type = 9;
        let e = unsafe { ImageView::from_descriptor(&d) }.unwrap_err();
        assert_eq!(e.status(), DaviStatus::UnsupportedFormat);
        d.sample_type = 1;
        d.layout = 4;
        assert_eq!(
            unsafe { ImageView::from_descriptor(&d) }.unwrap_err(),
            ImageError::UnknownLayout(4)
        );
        d.layout = 2;
        d.flags = 1;
        assert_eq!(
            unsafe { ImageView::from_descriptor(&d) }.unwrap_err(),
            ImageError::UnsupportedFlags(1)
        );
        d.flags = 0;
        d.row_stride = 25;
        assert!(matches!(
            unsafe { ImageView::from_descriptor(&d) },
            Err(ImageError::Misaligned {
                what: "row stride",
                ..
            })
        ));
        d.row_stride = 24;
        d.data = buf.as_mut_ptr().cast::<u8>().wrapping_add(1).cast();
        assert!(matches!(
            unsafe { ImageView::from_descriptor(&d) },
            Err(ImageError::Misaligned {
                what: "data pointer",
                ..
            })
        ));
        let mut fbuf = vec![0f32; 64];
        let mut d = desc(&mut fbuf, 4, 4, DaviSampleType::F32, Rgb, 48);
        d.data = fbuf.as_mut_ptr().cast::<u8>().wrapping_add(2).cast();
        assert!(matches!(
            unsafe { ImageView::from_descriptor(&d) },
            Err(ImageError::Misaligned { .. })
        ));
    }

    #[test]
    fn negative_stride_reads_a_bottom_up_buffer() {
        // 3x4 gray, padded rows of 5 bytes, stored bottom-up: memory row r holds image row 3-r.
        let (w, h, pitch) = (3usize, 4usize, 5usize);
        let mut mem = vec![0xEEu8; pitch * h];
        for r in 0..h {
            let y = h - 1 - r;
            for x in 0..w {
                mem[r * pitch + x] = (10 * y + x) as u8;
            }
        }
        let check = |v: &ImageView<'_>| {
            for y in 0..h {
                let RowRef::U8(row) = v.row(y) else { panic!() };
                assert_eq!(
                    row,
                    &[(10 * y) as u8, (10 * y + 1) as u8, (10 * y + 2) as u8]
                );
            }
        };
        check(&ImageView::from_samples(&mem, w, h, Gray, -(pitch as isize)).unwrap());
        // Through a C descriptor: the data pointer is the top row = the last row in memory.
        let top = unsafe { mem.as_mut_ptr().add((h - 1) * pitch) };
        let d = DaviImage::new(
            w as u32,
            h as u32,
            DaviSampleType::U8,
            Gray,
            -(pitch as isize),
            top.cast(),
        );
        check(&unsafe { ImageView::from_descriptor(&d) }.unwrap());
        // Writing through a bottom-up mutable view lands in the right memory rows.
        let mut out = vec![0u8; pitch * h];
        let (rgb, _) = ImageView::from_samples(&mem, w, h, Gray, -(pitch as isize))
            .unwrap()
            .to_planar_rgb()
            .unwrap();
        ImageViewMut::from_samples(&mut out, w, h, Gray, -(pitch as isize))
            .unwrap()
            .write_planar(&rgb, None)
            .unwrap();
        for r in 0..h {
            assert_eq!(out[r * pitch..r * pitch + w], mem[r * pitch..r * pitch + w]);
            assert_eq!(
                out[r * pitch + w..(r + 1) * pitch],
                [0, 0],
                "padding was written"
            );
        }
    }

    #[test]
    fn u8_rgba_round_trip_keeps_alpha_and_colour() {
        let (w, h) = (5, 3);
        let src: Vec<u8> = (0..w * h * 4).map(|i| (i * 37 % 256) as u8).collect();
        let view = ImageView::from_samples(&src, w, h, Rgba, (w * 4) as isize).unwrap();
        let (rgb, alpha) = view.to_planar_rgb().unwrap();
        assert_eq!((rgb.width, rgb.height, rgb.channels), (w, h, 3));
        assert!(rgb.data.iter().all(|v| (0.0..=1.0).contains(v)));
        let mut dst = vec![0u8; src.len()];
        ImageViewMut::from_samples(&mut dst, w, h, Rgba, (w * 4) as isize)
            .unwrap()
            .write_planar(&rgb, alpha.as_ref())
            .unwrap();
        assert_eq!(dst, src);
    }

    #[test]
    fn u16_gray_alpha_round_trip_keeps_alpha_bits() {
        let (w, h) = (4, 4);
        let src: Vec<u16> = (0..w * h * 2)
            .map(|i| (i as u32 * 4099 % 65536) as u16)
            .collect();
        let view = ImageView::from_samples(&src, w, h, GrayAlpha, (w * 4) as isize).unwrap();
        let (rgb, alpha) = view.to_planar_rgb().unwrap();
        // Gray is replicated into three equal planes.
        assert_eq!(rgb.plane(0), rgb.plane(1));
        assert_eq!(rgb.plane(1), rgb.plane(2));
        // Change the colour: alpha must still come back untouched.
        let mut rgb = rgb;
        rgb.data.iter_mut().for_each(|v| *v = 1.0 - *v);
        let mut dst = vec![0u16; src.len()];
        ImageViewMut::from_samples(&mut dst, w, h, GrayAlpha, (w * 4) as isize)
            .unwrap()
            .write_planar(&rgb, alpha.as_ref())
            .unwrap();
        for i in 0..w * h {
            assert_eq!(dst[2 * i + 1], src[2 * i + 1], "alpha {i}");
            assert_eq!(dst[2 * i], 65535 - src[2 * i], "gray {i}");
        }
    }

    #[test]
    fn f32_rgba_round_trip_keeps_alpha_bits_even_out_of_range() {
        let (w, h) = (3, 2);
        let mut src = vec![0f32; w * h * 4];
        let odd_alphas = [0.25, 1.5, -0.0, f32::NAN, 1e-30, 0.999];
        for i in 0..w * h {
            src[4 * i] = i as f32 / 10.0;
            src[4 * i + 1] = 0.5;
            src[4 * i + 2] = 1.0;
            src[4 * i + 3] = odd_alphas[i];
        }
        let view = ImageView::from_samples(&src, w, h, Rgba, (w * 16) as isize).unwrap();
        let (rgb, alpha) = view.to_planar_rgb().unwrap();
        let mut dst = vec![7f32; src.len()];
        ImageViewMut::from_samples(&mut dst, w, h, Rgba, (w * 16) as isize)
            .unwrap()
            .write_planar(&rgb, alpha.as_ref())
            .unwrap();
        for (a, b) in src.iter().zip(&dst) {
            assert_eq!(a.to_bits(), b.to_bits());
        }
    }

    #[test]
    fn non_finite_samples_are_found_by_position() {
        let (w, h) = (3, 2);
        let mut src = vec![0.5f32; w * h * 4];
        let view = ImageView::from_samples(&src, w, h, Rgba, (w * 16) as isize).unwrap();
        assert_eq!(view.first_non_finite(), None);
        src[(w + 2) * 4 + 3] = f32::NAN; // alpha of (2, 1)
        let view = ImageView::from_samples(&src, w, h, Rgba, (w * 16) as isize).unwrap();
        assert_eq!(view.first_non_finite(), Some((2, 1, 3)));
        src[1] = f32::NEG_INFINITY; // green of (0, 0)
        let view = ImageView::from_samples(&src, w, h, Rgba, (w * 16) as isize).unwrap();
        assert_eq!(view.first_non_finite(), Some((0, 0, 1)));
    }

    #[test]
    fn missing_alpha_is_written_opaque_and_sizes_must_match() {
        let rgb = PlanarImage::zeros(2, 2, 3);
        let mut dst = vec![9u8; 16];
        let mut v = ImageViewMut::from_samples(&mut dst, 2, 2, Rgba, 8).unwrap();
        v.write_planar(&rgb, None).unwrap();
        assert_eq!(dst, [0, 0, 0, 255].repeat(4));
        let mut v = ImageViewMut::from_samples(&mut dst, 2, 2, Rgba, 8).unwrap();
        assert!(v.write_planar(&PlanarImage::zeros(3, 2, 3), None).is_err());
        let a = AlphaPlane {
            width: 1,
            height: 1,
            samples: AlphaSamples::U8(vec![7]),
        };
        assert!(v.write_planar(&rgb, Some(&a)).is_err());
        let a2 = a.resized(2, 2);
        assert_eq!(a2.samples, AlphaSamples::U8(vec![7; 4]));
        v.write_planar(&rgb, Some(&a2)).unwrap();
        assert_eq!(dst, [0, 0, 0, 7].repeat(4));
    }

    #[test]
    fn planar_sizes_are_checked() {
        assert!(PlanarImage::try_zeros(0, 3, 3).is_err());
        assert!(PlanarImage::try_zeros(usize::MAX, 2, 3).is_err());
        assert!(PlanarImage::from_vec(2, 2, 3, vec![0.0; 11]).is_err());
        let p = PlanarImage::from_vec(2, 1, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(p.get(1, 0, 0), 3.0);
        assert_eq!(p.plane(1), &[3.0, 4.0]);
    }
}
