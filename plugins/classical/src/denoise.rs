//! Gaussian denoising with non-local means: every pixel becomes a weighted mean of the pixels
//! in a search window whose surrounding patches look like its own.
//!
//! Why: NL-means is the classical denoiser that still holds up on natural images (it keeps
//! edges and repeated texture that linear or bilateral filters smear), its only parameter is
//! the noise level, which the spec gives (`noise_sigma` is in `[-1, 1]` units, half of it in
//! the `[0, 1]` units used here), and it needs no training.
//!
//! Reference: A. Buades, B. Coll, J.-M. Morel, "Non-Local Means Denoising", Image Processing
//! On Line 1 (2011), <https://doi.org/10.5201/ipol.2011.bcm_nlm> — the colour variant: one
//! weight per pixel pair from the patch distance averaged over the three channels,
//! `w = exp(−max(d² − 2σ², 0) / h²)`, the centre weighted like its best neighbour, and the
//! patch size / filtering parameter `h` per noise range of its Table 1 (search window capped
//! at 21×21 to bound time). Implemented per offset with running box sums, so the cost is
//! O(pixels × search window), independent of the patch size.

use davi_sdk::{DaviError, Progress};

/// Parameters for noise of standard deviation `sigma` in `[0, 1]` units (IPOL Table 1, colour).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NlmParams {
    /// Noise standard deviation, `[0, 1]` units.
    pub sigma: f32,
    /// Patch radius (patch side `2f + 1`).
    pub patch_radius: usize,
    /// Search radius (window side `2r + 1`).
    pub search_radius: usize,
    /// Filtering parameter.
    pub h: f32,
}

impl NlmParams {
    pub fn for_sigma(sigma: f32) -> Self {
        let s255 = sigma * 255.0;
        let (patch_radius, k) = if s255 <= 25.0 {
            (1, 0.55)
        } else if s255 <= 55.0 {
            (2, 0.4)
        } else {
            (3, 0.35)
        };
        NlmParams {
            sigma,
            patch_radius,
            search_radius: 10,
            h: k * sigma,
        }
    }
}

/// Denoise `channels` planes of `w x h` jointly; returns the planes, clamped to `[0, 1]`.
pub fn non_local_means(
    planes: &[f32],
    w: usize,
    h: usize,
    channels: usize,
    p: &NlmParams,
    progress: &mut Progress<'_>,
) -> Result<Vec<f32>, DaviError> {
    let n = w * h;
    if p.sigma <= 0.0 {
        return Ok(planes.iter().map(|v| v.clamp(0.0, 1.0)).collect());
    }
    let f = p.patch_radius;
    let r = p.search_radius;
    let pad = r + f;
    let (pw, ph) = (w + 2 * pad, h + 2 * pad);
    // Mirror-padded copy of every channel.
    let padded: Vec<Vec<f32>> = (0..channels)
        .map(|c| {
            let src = &planes[c * n..(c + 1) * n];
            let mut out = vec![0.0f32; pw * ph];
            for py in 0..ph {
                let sy = mirror(py as i64 - pad as i64, h);
                for px in 0..pw {
                    out[py * pw + px] = src[sy * w + mirror(px as i64 - pad as i64, w)];
                }
            }
            out
        })
        .collect();

    let patch_area = ((2 * f + 1) * (2 * f + 1) * channels) as f32;
    let two_var = 2.0 * p.sigma * p.sigma;
    let inv_h2 = 1.0 / (p.h * p.h);
    let mut num = vec![0.0f32; n * channels];
    let mut den = vec![0.0f32; n];
    let mut wmax = vec![0.0f32; n];
    // Squared differences over the region the patch sums need (image ± f), and box sums.
    let (rw, rh) = (w + 2 * f, h + 2 * f);
    let mut diff = vec![0.0f32; rw * rh];
    let mut hsum = vec![0.0f32; w * rh];
    let offsets = (2 * r + 1) * (2 * r + 1);
    let mut done = 0;
    for dy in -(r as i64)..=r as i64 {
        for dx in -(r as i64)..=r as i64 {
            done += 1;
            if dy == 0 && dx == 0 {
                continue;
            }
            // diff(y, x) for y in -f..h+f, x in -f..w+f (stored shifted by f).
            diff.fill(0.0);
            for plane in &padded {
                for ry in 0..rh {
                    let a = (ry + r) * pw + r;
                    let b = ((ry + r) as i64 + dy) as usize * pw + ((r as i64) + dx) as usize;
                    let (ra, rb) = (&plane[a..a + rw], &plane[b..b + rw]);
                    for ((d, u), v) in diff[ry * rw..(ry + 1) * rw].iter_mut().zip(ra).zip(rb) {
                        let e = u - v;
                        *d += e * e;
                    }
                }
            }
            // Horizontal box sums of width 2f+1.
            for ry in 0..rh {
                let row = &diff[ry * rw..(ry + 1) * rw];
                let mut acc: f32 = row[..2 * f + 1].iter().sum();
                hsum[ry * w] = acc;
                for x in 1..w {
                    acc += row[x + 2 * f] - row[x - 1];
                    hsum[ry * w + x] = acc;
                }
            }
            // Vertical box sums, weights and accumulation.
            for x in 0..w {
                let mut acc: f32 = (0..2 * f + 1).map(|t| hsum[t * w + x]).sum();
                for y in 0..h {
                    if y > 0 {
                        acc += hsum[(y + 2 * f) * w + x] - hsum[(y - 1) * w + x];
                    }
                    let d2 = (acc / patch_area).max(0.0);
                    let wt = (-(d2 - two_var).max(0.0) * inv_h2).exp();
                    let i = y * w + x;
                    let q =
                        ((y + pad) as i64 + dy) as usize * pw + ((x + pad) as i64 + dx) as usize;
                    for (c, plane) in padded.iter().enumerate() {
                        num[c * n + i] += wt * plane[q];
                    }
                    den[i] += wt;
                    if wt > wmax[i] {
                        wmax[i] = wt;
                    }
                }
            }
            if done % 21 == 0 {
                progress.update(done as f32 / offsets as f32)?;
            }
        }
    }
    let mut out = vec![0.0f32; n * channels];
    for i in 0..n {
        // The centre counts like its most similar neighbour (IPOL), or fully if it has none.
        let wc = if wmax[i] > 0.0 { wmax[i] } else { 1.0 };
        let d = den[i] + wc;
        for c in 0..channels {
            out[c * n + i] = ((num[c * n + i] + wc * planes[c * n + i]) / d).clamp(0.0, 1.0);
        }
    }
    Ok(out)
}

/// Mirror an index into `0..n` without repeating the edge sample; for tiny images, clamp.
fn mirror(i: i64, n: usize) -> usize {
    let n = n as i64;
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_follow_the_noise_ranges() {
        assert_eq!(NlmParams::for_sigma(0.05).patch_radius, 1);
        assert_eq!(NlmParams::for_sigma(0.1).patch_radius, 2);
        assert_eq!(NlmParams::for_sigma(0.3).patch_radius, 3);
        assert!((NlmParams::for_sigma(0.1).h - 0.04).abs() < 1e-6);
    }

    #[test]
    fn flat_images_stay_flat_and_zero_noise_is_identity() {
        let planes = vec![0.3f32; 2 * 9 * 7];
        let out = non_local_means(
            &planes,
            9,
            7,
            2,
            &NlmParams::for_sigma(0.1),
            &mut Progress::none(),
        )
        .unwrap();
        assert!(out.iter().all(|v| (v - 0.3).abs() < 1e-5));
        let ramp: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
        let same = non_local_means(
            &ramp,
            4,
            3,
            1,
            &NlmParams::for_sigma(0.0),
            &mut Progress::none(),
        )
        .unwrap();
        assert_eq!(same, ramp);
    }
}
