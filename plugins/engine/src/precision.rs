//! The numeric precision of a restore's one network evaluation: `fp32` (the default), `bf16`
//! (CPUs with bf16 instructions, and CUDA) or `fp16` (CUDA only).
//!
//! Reduced precision touches only the network: a [`crate::restore::Restorer`] set to `bf16`
//! converts its generator's weights to bf16 once ([`crate::restore::Restorer::set_precision`]),
//! casts each tile batch of the perturbed input to bf16 for the forward, and casts the ε
//! channels back to f32. Everything numerically delicate stays in f32: the bridge arithmetic
//! (perturbation, `tanh(x - std_fwd·ε)`), the tile blend and the clamp to [0, 1], the
//! operators and the measurement-space steps of window models. Inside the network, GroupNorm
//! runs in f32 and is cast back (`unet::resblock::norm_f32`, ADM's `GroupNorm32`); the
//! attention softmax is libtorch's `scaled_dot_product_attention`, whose CPU kernel
//! accumulates bf16/fp16 in f32 (`pytorch/pytorch`,
//! `aten/src/ATen/native/cpu/FlashAttentionKernel.cpp`, `accum_t = at::opmath_type<scalar_t>`);
//! convolutions and matrix products accumulate in f32 inside oneDNN/cuDNN and round their outputs
//! to the reduced type. Measured cost and speed: docs/performance.md, "Reduced precision".
//!
//! bf16 on a CPU without bf16 instructions (x86: AVX512_BF16; Arm: BF16) is refused rather
//! than emulated: libtorch would convert every value to f32 and back around f32 arithmetic,
//! bf16's rounding at more than f32's cost. Even with AVX512_BF16, bf16 restores were measured
//! slower than f32 on a CPU without AMX (docs/performance.md); the mode pays off on AMX CPUs
//! and GPUs, and stays opt-in. Training's mixed precision is a different knob
//! ([`crate::train::amp::Precision`]).
use crate::error::{EngineError, Result};
use tch::{Device, Kind};

/// The precision a restore runs its network in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// Float32 weights and activations (the default; the only precision golden tests pin).
    #[default]
    Fp32,
    /// bfloat16 weights and activations: f32's range, 8 bits of mantissa.
    Bf16,
    /// float16 weights and activations (CUDA only): 11 bits of mantissa, range ±65504.
    Fp16,
}

impl Precision {
    /// Every precision, in the order their names are listed.
    pub const ALL: [Precision; 3] = [Precision::Fp32, Precision::Bf16, Precision::Fp16];

    /// The name hosts pass: `fp32`, `bf16`, `fp16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    /// Parse a name exactly (lower case, no spaces): anything else is `InvalidInput` naming
    /// the valid values.
    pub fn parse(s: &str) -> Result<Self> {
        Precision::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                EngineError::InvalidInput(format!(
                    "precision {s:?} is not one of \"fp32\", \"bf16\", \"fp16\""
                ))
            })
    }

    /// The libtorch kind the network's weights and activations take.
    pub fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
        }
    }

    /// `Device` error unless this precision runs on `device`: fp16 needs CUDA; bf16 on a CPU
    /// needs bf16 instructions ([`cpu_has_bf16`]).
    pub fn check_device(self, device: Device) -> Result<()> {
        match (self, device) {
            (Precision::Fp32, _) | (_, Device::Cuda(_)) => Ok(()),
            (Precision::Fp16, _) => Err(EngineError::Device(
                "precision fp16 runs on CUDA devices only; on a CPU use bf16 (on CPUs with bf16 \
                 instructions) or fp32"
                    .into(),
            )),
            (Precision::Bf16, Device::Cpu) if cpu_has_bf16() => Ok(()),
            (Precision::Bf16, Device::Cpu) => Err(EngineError::Device(
                "precision bf16 on a CPU needs bf16 instructions (x86: AVX512_BF16; Arm: BF16), \
                 which this CPU lacks: libtorch would emulate them, slower than fp32; use fp32"
                    .into(),
            )),
            (Precision::Bf16, other) => Err(EngineError::Device(format!(
                "precision bf16 is supported on CPU and CUDA, not {other:?}"
            ))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        Precision::parse(s)
    }
}

/// Whether this CPU executes bf16 arithmetic natively: AVX512_BF16 on x86-64 (every CPU with
/// AMX-BF16 has it too), the BF16 extension on AArch64.
pub fn cpu_has_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("bf16")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_exactly() {
        for p in Precision::ALL {
            assert_eq!(Precision::parse(p.name()).unwrap(), p);
        }
        for bad in [
            "", "FP32", "bf16 ", " fp16", "float32", "half", "bfloat16", "fp64",
        ] {
            let e = Precision::parse(bad).unwrap_err();
            assert!(
                matches!(&e, EngineError::InvalidInput(m) if m.contains("\"bf16\"")),
                "{bad:?}: {e}"
            );
        }
        assert_eq!(Precision::default(), Precision::Fp32);
    }

    #[test]
    fn devices_each_precision_runs_on() {
        assert!(Precision::Fp32.check_device(Device::Cpu).is_ok());
        let e = Precision::Fp16.check_device(Device::Cpu).unwrap_err();
        assert!(
            matches!(&e, EngineError::Device(m) if m.contains("CUDA")),
            "{e}"
        );
        assert_eq!(
            Precision::Bf16.check_device(Device::Cpu).is_ok(),
            cpu_has_bf16()
        );
        for p in Precision::ALL {
            assert!(p.check_device(Device::Cuda(0)).is_ok());
        }
    }
}
