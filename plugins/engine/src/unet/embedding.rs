//! Sinusoidal timestep embedding (guided-diffusion `timestep_embedding`).
//!
//! `freq_k = exp(-ln(10000)·k/half)`, `args = t·freq`, embedding = `[cos(args), sin(args)]`
//! — cosine half first; swapping the halves silently breaks official weights.
use tch::{Kind, Tensor};

/// `t`: `(B,)` timesteps (any numeric kind, used as raw floats). Returns `(B, dim)` f32.
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let dev = t.device();
    let k = Tensor::arange(half, (Kind::Float, dev));
    let freqs = (k * (-(10000f64.ln()) / half as f64)).exp();
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let emb = Tensor::cat(&[args.cos(), args.sin()], 1);
    if dim % 2 == 1 {
        Tensor::cat(&[emb.shallow_clone(), emb.zeros_like().narrow(1, 0, 1)], 1)
    } else {
        emb
    }
}
