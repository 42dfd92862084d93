//! Operator specifications: what degraded an image, as data.
//!
//! A spec names the forward operator `A` of the inverse problem `y = A(x) + n` and its
//! parameters, plus the measurement noise level `noise_sigma` (standard deviation in the
//! network's [-1, 1] pixel units, as in the official DAVI code: 0.05 for every task but
//! denoising, 0.20 for denoising). Specs travel as TOML or JSON text, e.g.
//!
//! ```toml
//! kind = "gaussian_blur"
//! sigma = 3.0
//! size = 61
//! noise_sigma = 0.05
//! ```
//!
//! Parsing is strict: unknown keys and out-of-range values are errors that say which key
//! and why, because a silently ignored typo (`sigam = 5`) would restore with the wrong
//! operator. This crate carries no libtorch; engines turn a validated spec into tensors.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A validated description of one degradation operator and its noise level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OperatorSpec {
    /// Separable Gaussian blur (docs/algorithm.md §4.2.1, §4.2.2; official `gaussian`).
    GaussianBlur(GaussianBlur),
    /// Down-sampling by an integer factor (docs/algorithm.md §4.2.3; official
    /// `sr_averagepooling`, `bicubic`).
    SuperResolution(SuperResolution),
    /// Missing rectangles (docs/algorithm.md §4.2.4; official `inpainting`).
    Inpainting(Inpainting),
    /// Identity operator: only noise (docs/algorithm.md §4.2.5; official `deno`).
    Denoising(Denoising),
    /// Weighted channel sum to one gray channel (docs/algorithm.md §4.2.6; official
    /// `colorization`).
    Colorization(Colorization),
}

/// How the Gaussian blur operator is realised (reference quirk Q6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BlurMode {
    /// The true blur: separable convolution with zero padding at the borders. What a real
    /// out-of-focus photograph looks like; the default.
    #[default]
    ZeroPadded,
    /// The operator the official code actually applies (DDRM's SVD operator with tiled
    /// singular values, 1D singulars below 3e-2 zeroed, the last tap dropped). Use this to
    /// reproduce the official training and evaluation distribution.
    Ddrm,
}

/// Parameters of [`OperatorSpec::GaussianBlur`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaussianBlur {
    /// Kernel standard deviation in pixels (official 3.0).
    #[serde(default = "default_blur_sigma")]
    pub sigma: f64,
    /// Number of taps, odd (official 61).
    #[serde(default = "default_blur_size")]
    pub size: usize,
    #[serde(default)]
    pub mode: BlurMode,
    #[serde(default)]
    pub noise_sigma: Option<f64>,
}

/// How super-resolution measurements are down-sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DownsampleMethod {
    /// Mean over each factor×factor block (the official `sr_averagepooling`).
    #[default]
    AvgPool,
    /// Cubic kernel (a = -0.5) with stride `factor`, reflective borders (official `bicubic`).
    Bicubic,
}

/// Parameters of [`OperatorSpec::SuperResolution`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperResolution {
    /// Down-sampling factor: 2, 4 or 8 (official 4).
    #[serde(default = "default_sr_factor")]
    pub factor: usize,
    #[serde(default)]
    pub method: DownsampleMethod,
    #[serde(default)]
    pub noise_sigma: Option<f64>,
}

/// A missing rectangle, in pixels of the full-resolution image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rect {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Parameters of [`OperatorSpec::Inpainting`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Inpainting {
    /// Missing rectangles. Empty means the official box: centred, half the image height by
    /// half its width (rows and columns 64..191 of a 256×256 image).
    #[serde(default)]
    pub boxes: Vec<Rect>,
    #[serde(default)]
    pub noise_sigma: Option<f64>,
}

/// Parameters of [`OperatorSpec::Denoising`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Denoising {
    #[serde(default)]
    pub noise_sigma: Option<f64>,
}

/// Parameters of [`OperatorSpec::Colorization`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Colorization {
    /// Weights of R, G, B in the gray value (official 0.3333, 0.3334, 0.3333); each in
    /// [0, 100], summing to at least 0.001.
    #[serde(default = "default_gray_weights")]
    pub weights: [f64; 3],
    #[serde(default)]
    pub noise_sigma: Option<f64>,
}

fn default_blur_sigma() -> f64 {
    3.0
}
fn default_blur_size() -> usize {
    61
}
fn default_sr_factor() -> usize {
    4
}
fn default_gray_weights() -> [f64; 3] {
    [0.3333, 0.3334, 0.3333]
}

/// Why a spec was refused. The message names the offending key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("operator spec is not valid TOML: {0}")]
    Toml(String),
    #[error("operator spec is not valid JSON: {0}")]
    Json(String),
    #[error("operator spec: {0}")]
    Invalid(String),
    #[error("unknown task `{0}` (known: deblur, sr4, sr2, sr8, inpaint, denoise, colorize)")]
    UnknownTask(String),
}

/// The largest coordinate or side of an inpainting box: image sides are `u32` in every API.
pub const MAX_BOX_COORDINATE: usize = u32::MAX as usize;

/// The short task names users type (`--task sr4`), each mapped to the official operator.
pub const TASKS: &[&str] = &[
    "deblur", "sr4", "sr2", "sr8", "inpaint", "denoise", "colorize",
];

impl OperatorSpec {
    /// Parse a TOML spec and validate it.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        let spec: Self =
            toml::from_str(text).map_err(|e| SpecError::Toml(e.message().to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parse a JSON spec and validate it.
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        let spec: Self = serde_json::from_str(text).map_err(|e| SpecError::Json(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parse TOML or JSON, chosen by the first non-blank character (`{` means JSON).
    pub fn parse(text: &str) -> Result<Self, SpecError> {
        if text.trim_start().starts_with('{') {
            Self::from_json(text)
        } else {
            Self::from_toml(text)
        }
    }

    /// Serialise as TOML (round-trips through [`OperatorSpec::from_toml`]).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("operator specs always serialise")
    }

    /// The operator of the official DAVI task behind a short task name
    /// (`deblur` uses the true zero-padded blur; see [`BlurMode`]).
    pub fn for_task(task: &str) -> Result<Self, SpecError> {
        let sr = |factor| {
            OperatorSpec::SuperResolution(SuperResolution {
                factor,
                method: DownsampleMethod::AvgPool,
                noise_sigma: None,
            })
        };
        Ok(match task {
            "deblur" | "gaussian" | "gaussian_blur" => OperatorSpec::GaussianBlur(GaussianBlur {
                sigma: default_blur_sigma(),
                size: default_blur_size(),
                mode: BlurMode::ZeroPadded,
                noise_sigma: None,
            }),
            "sr4" | "sr_averagepooling" | "super_resolution" => sr(4),
            "sr2" => sr(2),
            "sr8" => sr(8),
            "inpaint" | "inpainting" => OperatorSpec::Inpainting(Inpainting::default()),
            "denoise" | "deno" | "denoising" => OperatorSpec::Denoising(Denoising::default()),
            "colorize" | "colorization" => OperatorSpec::Colorization(Colorization {
                weights: default_gray_weights(),
                noise_sigma: None,
            }),
            other => return Err(SpecError::UnknownTask(other.to_string())),
        })
    }

    /// The snake_case kind name, as written in specs.
    pub fn kind_name(&self) -> &'static str {
        match self {
            OperatorSpec::GaussianBlur(_) => "gaussian_blur",
            OperatorSpec::SuperResolution(_) => "super_resolution",
            OperatorSpec::Inpainting(_) => "inpainting",
            OperatorSpec::Denoising(_) => "denoising",
            OperatorSpec::Colorization(_) => "colorization",
        }
    }

    /// Measurement noise standard deviation in [-1, 1] units: the explicit value, else the
    /// official default (0.20 for denoising, 0.05 otherwise).
    pub fn noise_sigma(&self) -> f64 {
        let (explicit, default) = match self {
            OperatorSpec::GaussianBlur(s) => (s.noise_sigma, 0.05),
            OperatorSpec::SuperResolution(s) => (s.noise_sigma, 0.05),
            OperatorSpec::Inpainting(s) => (s.noise_sigma, 0.05),
            OperatorSpec::Denoising(s) => (s.noise_sigma, 0.20),
            OperatorSpec::Colorization(s) => (s.noise_sigma, 0.05),
        };
        explicit.unwrap_or(default)
    }

    /// Set the noise level (`None` restores the per-kind default).
    pub fn set_noise_sigma(&mut self, sigma: Option<f64>) {
        match self {
            OperatorSpec::GaussianBlur(s) => s.noise_sigma = sigma,
            OperatorSpec::SuperResolution(s) => s.noise_sigma = sigma,
            OperatorSpec::Inpainting(s) => s.noise_sigma = sigma,
            OperatorSpec::Denoising(s) => s.noise_sigma = sigma,
            OperatorSpec::Colorization(s) => s.noise_sigma = sigma,
        }
    }

    /// Check every parameter range; the message names the key.
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::Invalid(m));
        let ns = self.noise_sigma();
        if !ns.is_finite() || !(0.0..=2.0).contains(&ns) {
            return bad(format!(
                "noise_sigma must be in [0, 2] (image units are [-1, 1]), got {ns}"
            ));
        }
        match self {
            OperatorSpec::GaussianBlur(b) => {
                if !b.sigma.is_finite() || b.sigma <= 0.0 || b.sigma > 100.0 {
                    return bad(format!(
                        "gaussian_blur.sigma must be in (0, 100], got {}",
                        b.sigma
                    ));
                }
                if b.size == 0 || b.size % 2 == 0 || b.size > 1001 {
                    return bad(format!(
                        "gaussian_blur.size must be odd and in 1..=1001, got {}",
                        b.size
                    ));
                }
                if b.mode == BlurMode::Ddrm && b.size < 3 {
                    // The official matrix drops the last tap.
                    return bad(format!(
                        "gaussian_blur.size must be at least 3 with mode ddrm, got {}",
                        b.size
                    ));
                }
            }
            OperatorSpec::SuperResolution(s) => {
                if ![2, 4, 8].contains(&s.factor) {
                    return bad(format!(
                        "super_resolution.factor must be 2, 4 or 8, got {}",
                        s.factor
                    ));
                }
            }
            OperatorSpec::Inpainting(p) => {
                for (i, r) in p.boxes.iter().enumerate() {
                    if r.height == 0 || r.width == 0 {
                        return bad(format!("inpainting.boxes[{i}] has zero height or width"));
                    }
                    // Image sides are 32-bit everywhere (C API, plugins); larger coordinates
                    // could not lie inside any image, and above i64::MAX they would not even
                    // serialise as TOML.
                    for (key, v) in [
                        ("top", r.top),
                        ("left", r.left),
                        ("height", r.height),
                        ("width", r.width),
                    ] {
                        if v > MAX_BOX_COORDINATE {
                            return bad(format!(
                                "inpainting.boxes[{i}].{key} must be at most {MAX_BOX_COORDINATE}, \
                                    got {v}"
                            ));
                        }
                    }
                }
            }
            OperatorSpec::Denoising(_) => {}
            OperatorSpec::Colorization(c) => {
                if c.weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
                    return bad("colorization.weights must be finite and non-negative".into());
                }
                // Bounded so the operator's pseudo-inverse (w / |w|^2) stays finite in f32.
                if c.weights.iter().any(|w| *w > 100.0) || c.weights.iter().sum::<f64>() < 1e-3 {
                    return bad(format!(
                        "colorization.weights must each be at most 100 and sum to at least 0.001, \
                            got {:?}",
                        c.weights
                    ));
                }
            }
        }
        Ok(())
    }

    /// Check the spec against an image size (boxes inside the image, size divisible by the
    /// super-resolution factor).
    pub fn validate_for_size(&self, height: usize, width: usize) -> Result<(), SpecError> {
        self.validate()?;
        match self {
            OperatorSpec::SuperResolution(s)
                if !height.is_multiple_of(s.factor) || !width.is_multiple_of(s.factor) =>
            {
                Err(SpecError::Invalid(format!(
                    "super_resolution.factor {} does not divide the image size {width}x{height}",
                    s.factor
                )))
            }
            OperatorSpec::Inpainting(p) => {
                for (i, r) in p.boxes.iter().enumerate() {
                    let outside = |start: usize, len: usize, side: usize| {
                        start.checked_add(len).is_none_or(|end| end > side)
                    };
                    if outside(r.top, r.height, height) || outside(r.left, r.width, width) {
                        return Err(SpecError::Invalid(format!(
                            "inpainting.boxes[{i}] ({}x{} at row {}, column {}) lies outside the \
                                {width}x{height} image",
                            r.height, r.width, r.top, r.left
                        )));
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Inpainting {
    /// The rectangles to blank for an image of this size (the centred half box if none given).
    pub fn boxes_for(&self, height: usize, width: usize) -> Vec<Rect> {
        if !self.boxes.is_empty() {
            return self.boxes.clone();
        }
        let (h, w) = (height / 2, width / 2);
        vec![Rect {
            top: (height - h) / 2,
            left: (width - w) / 2,
            height: h,
            width: w,
        }]
    }
}

impl fmt::Display for OperatorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OperatorSpec::GaussianBlur(b) => write!(
                f,
                "gaussian_blur(sigma={}, size={}, mode={:?})",
                b.sigma, b.size, b.mode
            )?,
            OperatorSpec::SuperResolution(s) => {
                write!(f, "super_resolution(x{}, {:?})", s.factor, s.method)?
            }
            OperatorSpec::Inpainting(p) => write!(f, "inpainting({} boxes)", p.boxes.len().max(1))?,
            OperatorSpec::Denoising(_) => write!(f, "denoising")?,
            OperatorSpec::Colorization(c) => write!(f, "colorization(weights={:?})", c.weights)?,
        }
        write!(f, ", noise_sigma={}", self.noise_sigma())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let s = OperatorSpec::from_toml(
            "kind = \"gaussian_blur\"\nsigma = 3.0\nsize = 61\nnoise_sigma = 0.05\n",
        )
        .unwrap();
        assert_eq!(s.kind_name(), "gaussian_blur");
        assert_eq!(s.noise_sigma(), 0.05);
    }

    #[test]
    fn defaults_follow_the_official_code() {
        assert_eq!(
            OperatorSpec::from_toml("kind = \"denoising\"")
                .unwrap()
                .noise_sigma(),
            0.2
        );
        let sr = OperatorSpec::from_toml("kind = \"super_resolution\"").unwrap();
        assert_eq!(sr, OperatorSpec::for_task("sr4").unwrap());
        let OperatorSpec::Inpainting(p) = OperatorSpec::for_task("inpaint").unwrap() else {
            panic!()
        };
        assert_eq!(
            p.boxes_for(256, 256),
            vec![Rect {
                top: 64,
                left: 64,
                height: 128,
                width: 128
            }]
        );
    }

    #[test]
    fn typos_and_bad_values_are_named() {
        let e = OperatorSpec::from_toml("kind = \"gaussian_blur\"\nsigam = 3.0").unwrap_err();
        assert!(e.to_string().contains("sigam"), "{e}");
        let e = OperatorSpec::from_toml("kind = \"gaussian_blur\"\nsize = 60").unwrap_err();
        assert!(e.to_string().contains("size"), "{e}");
        let e = OperatorSpec::from_toml("kind = \"warp\"").unwrap_err();
        assert!(e.to_string().contains("warp"), "{e}");
        let e =
            OperatorSpec::from_json("{\"kind\":\"super_resolution\",\"factor\":3}").unwrap_err();
        assert!(e.to_string().contains("factor"), "{e}");
        assert!(OperatorSpec::parse("kind = \"denoising\"\nnoise_sigma = -1").is_err());
        assert!(OperatorSpec::for_task("nope").is_err());
    }

    #[test]
    fn size_checks() {
        let s = OperatorSpec::for_task("sr4").unwrap();
        assert!(s.validate_for_size(64, 64).is_ok());
        assert!(s.validate_for_size(66, 64).is_err());
        let p = OperatorSpec::parse(
            "kind = \"inpainting\"\n[[boxes]]\ntop = 10\nleft = 10\nheight = 30\nwidth = 5\n",
        )
        .unwrap();
        assert!(p.validate_for_size(40, 40).is_ok());
        assert!(p.validate_for_size(39, 40).is_err());
    }

    /// Fuzz finding (fuzz/artifacts/spec, docs/fuzzing.md): a JSON box side above i64::MAX
    /// parsed and validated, then `to_toml` (and so `davi_spec_to_text`) panicked, and
    /// `validate_for_size` overflowed on `top + height`. Coordinates are now bounded to 32 bits.
    #[test]
    fn fuzz_huge_box_sides_are_refused_by_name() {
        let crash = concat!(
            r#"{"kind":"inpainting","boxes":[{"top":4294967295,"left":0,"#,
            r#""height":13223372036854775807,"width":1}]}"#,
        );
        let e = OperatorSpec::parse(crash).unwrap_err();
        assert!(
            e.to_string()
                .contains("boxes[0].height must be at most 4294967295"),
            "{e}"
        );
        for key in ["top", "left", "height", "width"] {
            let mut huge = serde_json::json!({"top": 1, "left": 1, "height": 1, "width": 1});
            huge[key] = serde_json::json!(u64::MAX);
            let one = serde_json::json!({"top": 1, "left": 1, "height": 1, "width": 1});
            let text = serde_json::json!({"kind": "inpainting", "boxes": [one, huge]});
            let e = OperatorSpec::parse(&text.to_string()).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("boxes[1].{key} must be at most")),
                "{text}: {e}"
            );
        }
        // The largest allowed box serialises, parses back, and is checked against sizes
        // without overflowing.
        let edge = concat!(
            r#"{"kind":"inpainting","boxes":[{"top":4294967295,"left":4294967295,"#,
            r#""height":4294967295,"width":4294967295}]}"#,
        );
        let s = OperatorSpec::parse(edge).unwrap();
        assert_eq!(OperatorSpec::from_toml(&s.to_toml()).unwrap(), s);
        assert!(s.validate_for_size(1 << 32, 1 << 32).is_err());
        assert!(s.validate_for_size(1 << 33, 1 << 33).is_ok());
        assert!(s.validate_for_size(usize::MAX, usize::MAX).is_ok());
    }

    #[test]
    fn toml_round_trip() {
        for t in TASKS {
            let s = OperatorSpec::for_task(t).unwrap();
            assert_eq!(OperatorSpec::from_toml(&s.to_toml()).unwrap(), s);
        }
    }
}

#[cfg(test)]
mod spec_files {
    use super::*;

    /// Every spec file shipped in docs/specs parses and validates.
    #[test]
    fn shipped_spec_files_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/specs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            OperatorSpec::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
        assert!(n >= 8, "expected the shipped spec files, found {n}");
    }

    /// Every seed of the `spec` fuzz target (fuzz/corpus/spec, findings included) parses or is
    /// refused without a panic, and what parses serialises and parses back.
    #[test]
    fn fuzz_seeds_parse_or_are_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/spec");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let Ok(text) = String::from_utf8(std::fs::read(&p).unwrap()) else {
                continue;
            };
            if let Ok(spec) = OperatorSpec::parse(&text) {
                let back = OperatorSpec::from_toml(&spec.to_toml());
                assert_eq!(back.as_ref(), Ok(&spec), "{}", p.display());
            }
            n += 1;
        }
        assert!(
            n >= 20,
            "expected the committed seeds in {}, found {n}",
            dir.display()
        );
    }
}
