//! Image files to and from planar f32 tensors, for the `davi` CLI.
//!
//! PNG, JPEG and TIFF through the `image` crate, 8- and 16-bit, gray or colour, with or
//! without alpha. Colour values become a `(1, C, H, W)` f32 tensor in [0, 1]; the alpha
//! plane, if any, is kept aside untouched and written back unchanged (re-sampled only when
//! the image changes size, as in super-resolution). Writing goes through a temporary file
//! and a rename, so a failed run never leaves a half-written output.
//!
//! [`read_with_meta`] and [`write_with_meta`] also carry the colour profile and EXIF block
//! from an input to an output, as far as the pinned `image` crate (0.25) reads and writes
//! them: ICC profiles of PNG (`iCCP`), JPEG (APP2) and TIFF; EXIF of PNG (`eXIf`) and JPEG
//! (APP1). See [`Metadata`].
use anyhow::{bail, Context, Result};
use image::codecs::{jpeg::JpegEncoder, png::PngEncoder, tiff::TiffEncoder};
use image::{
    DynamicImage, ImageBuffer, ImageDecoder, ImageEncoder, ImageFormat, Luma, LumaA, Rgb, Rgba,
};
use std::path::Path;
use tch::{Kind, Tensor};

/// A decoded picture: colour planes in [0, 1], optional alpha in [0, 1], bit depth.
pub struct Picture {
    pub color: Tensor,
    pub alpha: Option<Tensor>,
    pub sixteen_bit: bool,
}

impl Picture {
    pub fn channels(&self) -> i64 {
        self.color.size()[1]
    }
    pub fn height(&self) -> i64 {
        self.color.size()[2]
    }
    pub fn width(&self) -> i64 {
        self.color.size()[3]
    }
}

fn planar(data: Vec<f32>, h: u32, w: u32, c: usize) -> Tensor {
    let flat = Tensor::from_slice(&data);
    // Whole photographs: free each image-sized buffer as soon as its copy exists (peak RSS).
    drop(data);
    flat.view([h as i64, w as i64, c as i64])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .contiguous()
}

/// Metadata carried from an input file to its restored output, verbatim.
///
/// What the pinned `image` 0.25 crate can do, and so what is kept:
/// - the ICC colour profile: read from PNG, JPEG and TIFF, written to PNG, JPEG and TIFF;
///   written only when its colour space matches the output (a `GRAY` profile on a gray
///   output, an `RGB ` profile on a colour one), so colorization drops a gray profile and a
///   CMYK JPEG's profile is dropped (its pixels are decoded to RGB);
/// - the EXIF block: read from PNG (an `eXIf` chunk before the image data) and JPEG (APP1),
///   written to PNG and JPEG, copied byte for byte (orientation included; size tags are
///   not updated after super-resolution).
///
/// Not kept: TIFF EXIF/tags, XMP, IPTC, PNG text chunks, `gAMA`/`cHRM`/`sRGB`/`pHYs`, JPEG
/// JFIF density and comments; PNM and BMP carry nothing.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub icc: Option<Vec<u8>>,
    pub exif: Option<Vec<u8>>,
}

/// Read an image file, or a `.npy` raw measurement (see [`read_npy`]).
pub fn read(path: &Path) -> Result<Picture> {
    read_with_meta(path).map(|(p, _)| p)
}

/// Read an image file and the metadata to carry to its output ([`Metadata`]).
pub fn read_with_meta(path: &Path) -> Result<(Picture, Metadata)> {
    if path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        return Ok((read_npy(path)?, Metadata::default()));
    }
    let mut decoder = image::ImageReader::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read {}", path.display()))?
        .into_decoder()
        .with_context(|| format!("cannot decode {}", path.display()))?;
    // Unreadable metadata is dropped, never a reason to refuse the pixels.
    let icc = decoder
        .icc_profile()
        .ok()
        .flatten()
        .filter(|v| !v.is_empty());
    let exif = decoder
        .exif_metadata()
        .ok()
        .flatten()
        .filter(|v| !v.is_empty());
    let img = DynamicImage::from_decoder(decoder)
        .with_context(|| format!("cannot decode {}", path.display()))?;
    Ok((from_dynamic(img), Metadata { icc, exif }))
}

/// Whether an ICC profile describes the output's colour model (header bytes 16..20).
fn icc_fits(icc: &[u8], gray: bool) -> bool {
    match icc.get(16..20) {
        Some(b"GRAY") => gray,
        Some(b"RGB ") => !gray,
        _ => false,
    }
}

/// Convert a decoded image.
pub fn from_dynamic(img: DynamicImage) -> Picture {
    let (w, h) = (img.width(), img.height());
    let sixteen_bit = matches!(
        img,
        DynamicImage::ImageLuma16(_)
            | DynamicImage::ImageLumaA16(_)
            | DynamicImage::ImageRgb16(_)
            | DynamicImage::ImageRgba16(_)
    ) || matches!(
        img,
        DynamicImage::ImageRgb32F(_) | DynamicImage::ImageRgba32F(_)
    );
    let has_alpha = img.color().has_alpha();
    let gray = !img.color().has_color();
    let (cc, all) = match (gray, has_alpha) {
        (true, false) => (1, img.to_luma32f().into_raw()),
        (true, true) => (2, luma_alpha_f32(&img)),
        (false, false) => (3, img.to_rgb32f().into_raw()),
        (false, true) => (4, img.to_rgba32f().into_raw()),
    };
    drop(img);
    let t = planar(all, h, w, cc);
    let color_c = if gray { 1 } else { 3 };
    let color = t.narrow(1, 0, color_c).contiguous();
    let alpha = has_alpha.then(|| t.narrow(1, color_c, 1).contiguous());
    Picture {
        color,
        alpha,
        sixteen_bit,
    }
}

fn luma_alpha_f32(img: &DynamicImage) -> Vec<f32> {
    let la = img.to_luma_alpha16();
    la.into_raw()
        .into_iter()
        .map(|v| v as f32 / 65535.0)
        .collect()
}

/// Planar `(1, C, H, W)` values in [0, 1], scaled to `0..=max` and rounded half up,
/// `floor(v * max + 0.5)` in f32: exactly how libdavi's image views store samples
/// (`sdk/src/image.rs`, `RowMut::set_unit`), so `davi restore` and the C API (`davi.py`, the
/// Ray recipe) write the same samples even where `v * max` ends in .5 (round-half-even would
/// differ there: up to one 16-bit sample in several hundred). In place on one new tensor:
/// whole photographs hold few image-sized buffers at once.
fn quantised(t: &Tensor, max: f64) -> Tensor {
    let mut t = t.clamp(0.0, 1.0);
    t *= max;
    t += 0.5;
    let _ = t.floor_();
    t
}

/// Interleave planar `(1, C, H, W)` values in [0, 1] into `u16` samples (rounded), as f32.
fn interleaved(t: &Tensor, max: f64) -> Vec<f32> {
    let t = quantised(t, max)
        .squeeze_dim(0)
        .permute([1, 2, 0])
        .contiguous()
        .to_kind(Kind::Float);
    Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32 data")
}

/// Interleave planar `(1, C, H, W)` values in [0, 1] into 8-bit samples (rounded): the
/// integers 0..=255 convert exactly, and the interleaving copy is made of bytes.
fn interleaved_u8(t: &Tensor) -> Vec<u8> {
    let t = quantised(t, 255.0)
        .to_kind(Kind::Uint8)
        .squeeze_dim(0)
        .permute([1, 2, 0])
        .contiguous();
    Vec::<u8>::try_from(t.flatten(0, -1)).expect("u8 data")
}

/// Build a `DynamicImage` from colour (1 or 3 channels) and optional alpha.
pub fn to_dynamic(p: &Picture) -> Result<DynamicImage> {
    let (h, w) = (p.height() as u32, p.width() as u32);
    let t = match &p.alpha {
        Some(a) => Tensor::cat(&[p.color.to_kind(Kind::Float), a.to_kind(Kind::Float)], 1),
        None => p.color.to_kind(Kind::Float),
    };
    let c = t.size()[1];
    let img = if p.sixteen_bit {
        let v: Vec<u16> = interleaved(&t, 65535.0)
            .into_iter()
            .map(|x| x as u16)
            .collect();
        match c {
            1 => DynamicImage::ImageLuma16(ImageBuffer::<Luma<u16>, _>::from_raw(w, h, v).unwrap()),
            2 => {
                DynamicImage::ImageLumaA16(ImageBuffer::<LumaA<u16>, _>::from_raw(w, h, v).unwrap())
            }
            3 => DynamicImage::ImageRgb16(ImageBuffer::<Rgb<u16>, _>::from_raw(w, h, v).unwrap()),
            4 => DynamicImage::ImageRgba16(ImageBuffer::<Rgba<u16>, _>::from_raw(w, h, v).unwrap()),
            _ => bail!("unsupported channel count {c}"),
        }
    } else {
        let v: Vec<u8> = interleaved_u8(&t);
        match c {
            1 => DynamicImage::ImageLuma8(ImageBuffer::<Luma<u8>, _>::from_raw(w, h, v).unwrap()),
            2 => DynamicImage::ImageLumaA8(ImageBuffer::<LumaA<u8>, _>::from_raw(w, h, v).unwrap()),
            3 => DynamicImage::ImageRgb8(ImageBuffer::<Rgb<u8>, _>::from_raw(w, h, v).unwrap()),
            4 => DynamicImage::ImageRgba8(ImageBuffer::<Rgba<u8>, _>::from_raw(w, h, v).unwrap()),
            _ => bail!("unsupported channel count {c}"),
        }
    };
    Ok(img)
}

/// Write atomically; the format comes from the extension (png, jpg/jpeg, tif/tiff, pgm/ppm
/// as binary netpbm `P5`/`P6`, bmp).
pub fn write(path: &Path, p: &Picture) -> Result<()> {
    write_with_meta(path, p, &Metadata::default())
}

/// [`write`], embedding what of `meta` the format holds (see [`Metadata`]). With empty
/// metadata the bytes are those of [`write`].
pub fn write_with_meta(path: &Path, p: &Picture, meta: &Metadata) -> Result<()> {
    let fmt = ImageFormat::from_path(path)
        .with_context(|| format!("unknown image extension: {}", path.display()))?;
    let mut img = to_dynamic(p)?;
    if fmt == ImageFormat::Jpeg {
        // JPEG holds neither alpha nor 16 bits.
        if p.alpha.is_some() {
            bail!(
                "{}: JPEG cannot hold the alpha channel; write PNG or TIFF",
                path.display()
            );
        }
        img = if p.channels() == 1 {
            DynamicImage::ImageLuma8(img.to_luma8())
        } else {
            DynamicImage::ImageRgb8(img.to_rgb8())
        };
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    let icc = meta
        .icc
        .clone()
        .filter(|icc| icc_fits(icc, p.channels() == 1));
    let exif = meta.exif.clone();
    // The encoders `DynamicImage::write_to` would pick, with the metadata set on them.
    fn with_meta<E: ImageEncoder>(mut e: E, icc: Option<Vec<u8>>, exif: Option<Vec<u8>>) -> E {
        // PNG and JPEG accept both; TIFF refuses EXIF (then it is left out).
        if let Some(icc) = icc {
            let _ = e.set_icc_profile(icc);
        }
        if let Some(exif) = exif {
            let _ = e.set_exif_metadata(exif);
        }
        e
    }
    let encoded = match fmt {
        ImageFormat::Png => img.write_with_encoder(with_meta(PngEncoder::new(&mut buf), icc, exif)),
        ImageFormat::Jpeg => {
            img.write_with_encoder(with_meta(JpegEncoder::new(&mut buf), icc, exif))
        }
        ImageFormat::Tiff => {
            img.write_with_encoder(with_meta(TiffEncoder::new(&mut buf), icc, exif))
        }
        ImageFormat::Pnm if is_ppm_or_pgm(path) => {
            write_netpbm(buf.get_mut(), &img)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(())
        }
        _ => img.write_to(&mut buf, fmt),
    };
    encoded.with_context(|| format!("cannot encode {}", path.display()))?;
    davi_engine::weights::model_file::write_atomic(path, buf.get_ref()).map_err(anyhow::Error::from)
}

/// `.ppm`, `.pgm` and `.pnm` (any case): written as binary netpbm, not as the PAM (`P7`) file
/// the `image` crate's default PNM encoder writes, which PPM/PGM readers (Pillow, `davi.py`)
/// refuse.
fn is_ppm_or_pgm(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["ppm", "pgm", "pnm"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

/// Binary PGM (`P5`, gray) or PPM (`P6`, colour), 8 bit (maxval 255) or 16 bit (65535,
/// samples big-endian), header `P6\nW H\nMAXVAL\n` as netpbm, Pillow and `davi.py` write it.
/// The pixel data is in the colour model of the image (a colorized `.pgm` input becomes a
/// `P6` file); alpha has no place in these formats and is refused, as for JPEG.
fn write_netpbm(out: &mut Vec<u8>, img: &DynamicImage) -> Result<()> {
    let (magic, maxval) = match img {
        DynamicImage::ImageLuma8(_) => ("P5", 255),
        DynamicImage::ImageRgb8(_) => ("P6", 255),
        DynamicImage::ImageLuma16(_) => ("P5", 65535),
        DynamicImage::ImageRgb16(_) => ("P6", 65535),
        _ if img.color().has_alpha() => {
            bail!("PPM and PGM cannot hold the alpha channel; write PNG or TIFF")
        }
        _ => bail!("unsupported pixel type {:?} for PPM/PGM", img.color()),
    };
    out.extend_from_slice(
        format!("{magic}\n{} {}\n{maxval}\n", img.width(), img.height()).as_bytes(),
    );
    match img {
        DynamicImage::ImageLuma16(b) => b
            .as_raw()
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_be_bytes())),
        DynamicImage::ImageRgb16(b) => b
            .as_raw()
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_be_bytes())),
        _ => out.extend_from_slice(img.as_bytes()),
    }
    Ok(())
}

/// Read a raw measurement from a NumPy `.npy` file: little-endian f32 or f64, C order, shape
/// `(C, H, W)` with C = 1 or 3, values in [-1, 1] image units (what `davi restore -o x.npy`
/// writes, and what evaluation scripts save so libdavi restores exactly their measurement,
/// unclamped). Anything else is refused with a message.
pub fn read_npy(path: &Path) -> Result<Picture> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let bad = |m: &str| anyhow::anyhow!("{}: {m}", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unsupported .npy version")),
    };
    let header = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[i..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr").ok_or_else(|| bad("no descr"))?;
    let width = if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f8'") {
        8
    } else {
        return Err(bad("only little-endian float32/float64 arrays are read"));
    };
    if !field("fortran_order").is_some_and(|v| v.starts_with("False")) {
        return Err(bad("only C-order arrays are read"));
    }
    let shape_text = field("shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or_else(|| bad("no shape"))?;
    let shape: Vec<i64> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<i64>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("unreadable shape"))?;
    let [c, h, w] = shape[..] else {
        return Err(bad("expected a (C, H, W) array"));
    };
    if !(c == 1 || c == 3) || h < 1 || w < 1 || h > 1 << 16 || w > 1 << 16 {
        return Err(bad("expected C = 1 or 3 and sides of 1 to 65536"));
    }
    let n = (c * h * w) as usize;
    let data = &bytes[start + hlen..];
    if data.len() != n * width {
        return Err(bad(&format!(
            "holds {} bytes of data, the shape needs {}",
            data.len(),
            n * width
        )));
    }
    let v: Vec<f32> = if width == 4 {
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect()
    };
    if v.iter().any(|x| !x.is_finite()) {
        return Err(bad("holds non-finite values"));
    }
    let color = (Tensor::from_slice(&v).view([1, c, h, w]) + 1.0) / 2.0;
    Ok(Picture {
        color,
        alpha: None,
        sixteen_bit: true,
    })
}

/// Write a raw f32 tensor as a NumPy `.npy` file (C order, little-endian, its own shape).
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    let t = t
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu)
        .contiguous();
    let shape: Vec<String> = t.size().iter().map(|d| d.to_string()).collect();
    let shape = if shape.len() == 1 {
        format!("{},", shape[0])
    } else {
        shape.join(", ")
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({shape}), }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + t.numel() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let v = Vec::<f32>::try_from(t.flatten(0, -1))?;
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    davi_engine::weights::model_file::write_atomic(path, &out).map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples are stored as libdavi's image views store them (`(v * max + 0.5) as uN` in
    /// f32, `sdk/src/image.rs`), ties included, at 8 and 16 bits.
    #[test]
    fn samples_round_half_up_as_libdavi_does() {
        let v: Vec<f32> = (0..=1u32 << 18)
            .map(|i| i as f32 / (1u32 << 18) as f32)
            .collect();
        let t = Tensor::from_slice(&v).view([1, 1, 1, v.len() as i64]);
        let (u8s, u16s) = (interleaved_u8(&t), interleaved(&t, 65535.0));
        let ties = |max: f32| v.iter().filter(|&&x| (x * max).fract() == 0.5).count();
        assert!(
            ties(255.0) > 0 && ties(65535.0) > 100,
            "the sweep must hold ties"
        );
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(u8s[i], (x * 255.0 + 0.5) as u8, "8 bit, v = {x}");
            assert_eq!(
                u16s[i] as u16,
                (x * 65535.0 + 0.5) as u16,
                "16 bit, v = {x}"
            );
        }
    }
}
