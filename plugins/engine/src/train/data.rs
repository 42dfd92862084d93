//! Image-folder datasets for training and evaluation.
//!
//! Files are found recursively (PNG, JPEG, TIFF) and sorted, so a split is reproducible.
//! Two preprocessings:
//! - `center`: the official one (docs/algorithm.md §5.2, quirk Q23): centre square crop of side
//!   min(W, H), bilinear resize to `size`, values mapped to [-1, 1];
//! - `random`: patch training — each sample takes a random `size`×`size` crop of a randomly
//!   rescaled image (scale in `[min_scale, 1]`), with an optional horizontal flip.
//!
//! Batches are a pure function of `(seed, step)`: resuming a run at step k draws exactly
//! the batch the uninterrupted run would have drawn, with no loader state to save. Decoded
//! images are cached in memory (the photo sets used here are small); a background thread
//! prepares the next batches so a 2-core machine is not left waiting on decoding.
use crate::error::{EngineError, Result};
use crate::restore::SplitMix64;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use tch::{Kind, Tensor};

/// List image files under `dir`, recursively, sorted.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(d)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if let Some(ext) = p.extension().and_then(|e| e.to_str()) {
                if ["png", "jpg", "jpeg", "tif", "tiff"]
                    .contains(&ext.to_ascii_lowercase().as_str())
                {
                    out.push(p);
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out).map_err(|e| EngineError::io(dir, e))?;
    out.sort();
    if out.is_empty() {
        return Err(EngineError::InvalidInput(format!(
            "no PNG/JPEG/TIFF images under {}",
            dir.display()
        )));
    }
    Ok(out)
}

/// Decode an image file as a `(3, H, W)` f32 tensor in [0, 1] (gray is replicated).
pub fn load_rgb(path: &Path) -> Result<Tensor> {
    let img = image::open(path)
        .map_err(|e| EngineError::InvalidInput(format!("{}: {e}", path.display())))?;
    let rgb = img.to_rgb32f();
    let (w, h) = (rgb.width() as i64, rgb.height() as i64);
    Ok(Tensor::from_slice(rgb.as_raw())
        .view([h, w, 3])
        .permute([2, 0, 1])
        .contiguous())
}

/// Official preprocessing: centre square crop, bilinear resize, [0, 1] (caller maps to [-1, 1]).
pub fn center_crop_resize(img: &Tensor, size: i64) -> Tensor {
    let (_, h, w) = img.size3().expect("3-D");
    let s = h.min(w);
    let c = img
        .narrow(1, (h - s) / 2, s)
        .narrow(2, (w - s) / 2, s)
        .unsqueeze(0);
    let r = if s == size {
        c
    } else {
        resize_aa(&c, size, size)
    };
    r.squeeze_dim(0).clamp(0.0, 1.0)
}

/// Bilinear resize with antialiasing when shrinking (PIL/torchvision `antialias=True`).
pub fn resize_aa(x: &Tensor, h: i64, w: i64) -> Tensor {
    x.internal_upsample_bilinear2d_aa([h, w], false, None, None)
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crop {
    Center,
    Random,
}

/// A set of decoded images and how to sample from them.
pub struct Dataset {
    pub files: Vec<PathBuf>,
    images: Vec<Tensor>,
    pub size: i64,
    pub crop: Crop,
    pub min_scale: f64,
    pub hflip: bool,
}

impl Dataset {
    pub fn open(
        files: Vec<PathBuf>,
        size: i64,
        crop: Crop,
        min_scale: f64,
        hflip: bool,
    ) -> Result<Self> {
        let mut images = Vec::with_capacity(files.len());
        for f in &files {
            let img = load_rgb(f)?;
            let (_, h, w) = img.size3().expect("3-D");
            if crop == Crop::Random && (h < size || w < size) {
                return Err(EngineError::InvalidInput(format!(
                    "{} ({w}x{h}) is smaller than the {size}px patch",
                    f.display()
                )));
            }
            images.push(if crop == Crop::Center {
                center_crop_resize(&img, size)
            } else {
                img
            });
        }
        Ok(Dataset {
            files,
            images,
            size,
            crop,
            min_scale: min_scale.clamp(0.05, 1.0),
            hflip,
        })
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Sample `i` of the deterministic stream `(seed, step)`: `(3, size, size)` in [-1, 1].
    fn sample(&self, rng: &mut SplitMix64) -> Tensor {
        let idx = (rng.next() % self.images.len() as u64) as usize;
        let img = &self.images[idx];
        let out = match self.crop {
            Crop::Center => img.shallow_clone(),
            Crop::Random => {
                let (_, h, w) = img.size3().expect("3-D");
                let min_s = (self.size as f64 / h.min(w) as f64)
                    .max(self.min_scale)
                    .min(1.0);
                let scale = min_s + (1.0 - min_s) * rng.uniform();
                // crop a window that becomes size×size after rescaling
                let win = ((self.size as f64 / scale).round() as i64).clamp(self.size, h.min(w));
                let y0 = (rng.uniform() * (h - win + 1) as f64) as i64;
                let x0 = (rng.uniform() * (w - win + 1) as f64) as i64;
                let c = img
                    .narrow(1, y0.min(h - win), win)
                    .narrow(2, x0.min(w - win), win);
                if win == self.size {
                    c.contiguous()
                } else {
                    resize_aa(&c.unsqueeze(0), self.size, self.size).squeeze_dim(0)
                }
            }
        };
        let out = if self.hflip && rng.next() & 1 == 1 {
            out.flip([2])
        } else {
            out
        };
        out.clamp(0.0, 1.0) * 2.0 - 1.0
    }

    /// The batch for `(seed, step)`: `(batch, 3, size, size)` in [-1, 1].
    pub fn batch(&self, seed: u64, step: u64, batch: usize) -> Tensor {
        let mut rng = SplitMix64(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDA7A);
        let v: Vec<Tensor> = (0..batch).map(|_| self.sample(&mut rng)).collect();
        Tensor::stack(&v, 0).to_kind(Kind::Float)
    }

    /// Every image once, in order, for evaluation (`center` crops; random-crop datasets
    /// give a centre crop of each image).
    pub fn eval_batch(&self) -> Tensor {
        let v: Vec<Tensor> = self
            .images
            .iter()
            .map(|img| {
                let (_, h, w) = img.size3().expect("3-D");
                let s = self.size.min(h).min(w);
                img.narrow(1, (h - s) / 2, s).narrow(2, (w - s) / 2, s) * 2.0 - 1.0
            })
            .collect();
        Tensor::stack(&v, 0)
    }
}

/// Batches for consecutive steps prepared on a background thread, which ends (and is
/// joined) when the prefetcher is dropped: a library that trains in a host's process leaves
/// no thread of its own behind.
pub struct Prefetcher {
    rx: mpsc::Receiver<(u64, Tensor)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Close the channel first: the thread's next send fails and it returns.
        let (_, closed) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.rx, closed));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Prefetcher {
    /// Start producing batches for steps `start..` (at most `depth` ahead).
    pub fn start(ds: Dataset, seed: u64, start: u64, batch: usize, depth: usize) -> Self {
        let (tx, rx) = mpsc::sync_channel(depth.max(1));
        let handle = std::thread::spawn(move || {
            let _guard = tch::no_grad_guard();
            let mut s = start;
            while tx.send((s, ds.batch(seed, s, batch))).is_ok() {
                s += 1;
            }
        });
        Prefetcher {
            rx,
            handle: Some(handle),
        }
    }

    /// The batch for `step` (steps must be requested in order).
    pub fn next(&self, step: u64) -> Tensor {
        let (s, b) = self.rx.recv().expect("prefetch thread alive");
        assert_eq!(s, step, "prefetcher out of order");
        b
    }
}

/// Draw `u ~ Beta(3, 1)` (density 3u²) by inversion: `u = U^(1/3)`.
pub fn beta31(rng: &mut SplitMix64) -> f64 {
    let u = ((rng.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    u.cbrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_a_function_of_seed_and_step() {
        let _rng = crate::test_rng::seeded(0);
        let img = Tensor::rand([3, 40, 50], (Kind::Float, tch::Device::Cpu));
        let ds = Dataset {
            files: vec![],
            images: vec![img.shallow_clone(), img.flip([1])],
            size: 16,
            crop: Crop::Random,
            min_scale: 0.5,
            hflip: true,
        };
        let a = ds.batch(1, 5, 4);
        let b = ds.batch(1, 5, 4);
        let c = ds.batch(1, 6, 4);
        assert_eq!(a.size(), vec![4, 3, 16, 16]);
        assert_eq!((&a - &b).abs().max().double_value(&[]), 0.0);
        assert!((&a - &c).abs().max().double_value(&[]) > 0.0);
        assert!(a.min().double_value(&[]) >= -1.0 && a.max().double_value(&[]) <= 1.0);
        let p = Prefetcher::start(ds, 1, 5, 4, 2);
        assert_eq!((p.next(5) - a).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn center_crop_takes_the_short_edge() {
        let img = Tensor::arange(3 * 4 * 6, (Kind::Float, tch::Device::Cpu)).view([3, 4, 6]) / 72.0;
        let c = center_crop_resize(&img, 4);
        assert_eq!(c.size(), vec![3, 4, 4]);
        assert_eq!(c.double_value(&[0, 0, 0]), img.double_value(&[0, 0, 1]));
    }

    #[test]
    fn beta31_mean() {
        let mut r = SplitMix64(3);
        let n = 20000;
        let m: f64 = (0..n).map(|_| beta31(&mut r)).sum::<f64>() / n as f64;
        assert!((m - 0.75).abs() < 0.01, "{m}");
    }
}
