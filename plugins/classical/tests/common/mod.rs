//! Synthetic test images, degradations written independently of the plugin, and PSNR.
//!
//! The degradations follow docs/algorithm.md §4.2–4.3 (zero-padded Gaussian blur, block-mean
//! down-sampling, boxes blanked before the noise, additive Gaussian noise), implemented here
//! naively (2-D convolution, explicit loops) so a bug shared with the plugin's fast code
//! cannot hide.
#![allow(dead_code)]

use davi_sdk::PlanarImage;

/// Deterministic xorshift generator with Box–Muller normals.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// A smooth RGB image: colour gradients and low-frequency waves, values in about [0.1, 0.9].
pub fn smooth(w: usize, h: usize) -> PlanarImage {
    let mut img = PlanarImage::zeros(w, h, 3);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let (u, v) = (x as f64 / w as f64, y as f64 / h as f64);
                let phase = c as f64 * 1.7;
                let val = 0.5
                    + 0.2 * (2.0 * std::f64::consts::PI * (1.3 * u + 0.7 * v) + phase).sin()
                    + 0.12 * (2.0 * std::f64::consts::PI * (2.1 * v - 0.9 * u) + 2.0 * phase).cos()
                    + 0.1 * (u - v);
                img.data[(c * h + y) * w + x] = val.clamp(0.0, 1.0) as f32;
            }
        }
    }
    img
}

/// A photograph-like RGB image: the smooth base, with sharp-edged discs and bars, and a
/// fine texture band, values in [0.05, 0.95].
pub fn natural(w: usize, h: usize) -> PlanarImage {
    let mut img = smooth(w, h);
    let discs = [
        (0.3, 0.35, 0.17, [0.9, 0.75, 0.2]),
        (0.7, 0.65, 0.2, [0.15, 0.3, 0.6]),
    ];
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let (u, v) = (x as f64 / w as f64, y as f64 / h as f64);
                let i = (c * h + y) * w + x;
                let mut val = img.data[i] as f64;
                for (cx, cy, r, col) in discs {
                    if (u - cx).powi(2) + (v - cy).powi(2) < r * r {
                        val = 0.6 * col[c] + 0.4 * val;
                    }
                }
                if (0.05..0.2).contains(&v) && u > 0.45 {
                    val += 0.12 * ((x as f64) * 0.9).sin() * ((y as f64) * 0.7).cos();
                }
                if (0.8..0.86).contains(&v) && u < 0.6 {
                    val = 0.1 + 0.05 * c as f64;
                }
                img.data[i] = val.clamp(0.05, 0.95) as f32;
            }
        }
    }
    img
}

pub fn psnr(a: &PlanarImage, b: &PlanarImage) -> f64 {
    assert_eq!(
        (a.width, a.height, a.channels),
        (b.width, b.height, b.channels)
    );
    let mse: f64 = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| ((*x as f64) - (*y as f64)).powi(2))
        .sum::<f64>()
        / a.data.len() as f64;
    10.0 * (1.0 / mse.max(1e-20)).log10()
}

/// Add N(0, sigma²) noise (sigma in [0, 1] units).
pub fn add_noise(img: &mut PlanarImage, sigma: f64, seed: u64) {
    let mut rng = Rng::new(seed);
    for v in img.data.iter_mut() {
        *v += (sigma * rng.normal()) as f32;
    }
}

/// 2-D convolution with the outer product of the spec's 1-D Gaussian (all taps), zero-padded
/// in the network's [-1, 1] units as the engine's operator is — i.e. mid-gray (0.5) padding
/// in these [0, 1] images.
pub fn gaussian_blur(img: &PlanarImage, sigma: f64, size: usize) -> PlanarImage {
    let r = (size / 2) as i64;
    let k1: Vec<f64> = (-r..=r)
        .map(|x| (-((x * x) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let s: f64 = k1.iter().sum();
    let k1: Vec<f64> = k1.iter().map(|v| v / s).collect();
    let (w, h) = (img.width as i64, img.height as i64);
    let mut out = PlanarImage::zeros(img.width, img.height, img.channels);
    for c in 0..img.channels {
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for dy in -r..=r {
                    let sy = y + dy;
                    if sy < 0 || sy >= h {
                        continue;
                    }
                    for dx in -r..=r {
                        let sx = x + dx;
                        if sx < 0 || sx >= w {
                            continue;
                        }
                        acc += k1[(dy + r) as usize]
                            * k1[(dx + r) as usize]
                            * (img.get(c, sy as usize, sx as usize) as f64 - 0.5);
                    }
                }
                out.data[(c * img.height + y as usize) * img.width + x as usize] =
                    (acc + 0.5) as f32;
            }
        }
    }
    out
}

/// Mean over `f x f` blocks.
pub fn avg_pool(img: &PlanarImage, f: usize) -> PlanarImage {
    let (ow, oh) = (img.width / f, img.height / f);
    let mut out = PlanarImage::zeros(ow, oh, img.channels);
    for c in 0..img.channels {
        for y in 0..oh {
            for x in 0..ow {
                let mut acc = 0.0;
                for dy in 0..f {
                    for dx in 0..f {
                        acc += img.get(c, y * f + dy, x * f + dx) as f64;
                    }
                }
                out.data[(c * oh + y) * ow + x] = (acc / (f * f) as f64) as f32;
            }
        }
    }
    out
}

/// Nearest-neighbour enlargement (the pseudo-inverse of block-mean down-sampling).
pub fn nearest_up(img: &PlanarImage, f: usize) -> PlanarImage {
    let (ow, oh) = (img.width * f, img.height * f);
    let mut out = PlanarImage::zeros(ow, oh, img.channels);
    for c in 0..img.channels {
        for y in 0..oh {
            for x in 0..ow {
                out.data[(c * oh + y) * ow + x] = img.get(c, y / f, x / f);
            }
        }
    }
    out
}

/// Clamp to [0, 1] (what a host stores in an 8-bit or float image).
pub fn clamped(img: &PlanarImage) -> PlanarImage {
    let mut o = img.clone();
    o.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    o
}
