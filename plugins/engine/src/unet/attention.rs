//! Spatial self-attention (`AttentionBlock` with the *legacy* QKV order).
//!
//! Keys: `norm` (GroupNorm), `qkv` (Conv1d C→3C, weight `[3C, C, 1]`), `proj_out` (Conv1d
//! C→C). The legacy order groups the 3C channels **per head first**: head i owns channels
//! `[3·ch·i, 3·ch·(i+1))`, of which the first ch are q, then k, then v. Loading official
//! weights into the "new" order (q/k/v split before heads) runs but gives wrong results.
//! Logits use `(q·ch^-1/4)ᵀ(k·ch^-1/4)` = `qᵀk/√ch`, i.e. standard scaled dot-product
//! attention, which lets libtorch pick its fused kernels.
use super::resblock::{conv_cfg, conv_shapes, group_norm, group_norm_shapes, norm_f32};
use tch::{nn, nn::Module, Tensor};

#[derive(Debug)]
pub struct AttentionBlock {
    heads: i64,
    norm: nn::GroupNorm,
    qkv: nn::Conv1D,
    proj_out: nn::Conv1D,
}

/// The variables [`AttentionBlock::new`] creates for `channels`, names relative to the block.
pub fn parameter_shapes(channels: i64) -> Vec<(String, Vec<i64>)> {
    let mut v = group_norm_shapes("norm.", channels);
    v.extend(conv_shapes("qkv.", channels, 3 * channels, &[1]));
    v.extend(conv_shapes("proj_out.", channels, channels, &[1]));
    v
}

impl AttentionBlock {
    pub fn new(vs: &nn::Path, channels: i64, heads: i64, norm_groups: i64) -> Self {
        let zero = nn::ConvConfig {
            ws_init: nn::Init::Const(0.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        AttentionBlock {
            heads,
            norm: group_norm(vs / "norm", norm_groups, channels),
            qkv: nn::conv1d(
                vs / "qkv",
                channels,
                3 * channels,
                1,
                conv_cfg(channels, 1, 0),
            ),
            proj_out: nn::conv1d(vs / "proj_out", channels, channels, 1, zero),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("attention input is 4-D");
        let t = h * w;
        let x = x.reshape([b, c, t]);
        let qkv = self.qkv.forward(&norm_f32(&self.norm, &x));
        let ch = c / self.heads;
        // (B, 3C, T) -> (B·heads, 3ch, T) -> q, k, v each (B·heads, ch, T)
        let parts = qkv.reshape([b * self.heads, 3 * ch, t]).split(ch, 1);
        let (q, k, v) = (
            parts[0].transpose(1, 2),
            parts[1].transpose(1, 2),
            parts[2].transpose(1, 2),
        );
        let a = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        let a = a.transpose(1, 2).reshape([b, c, t]);
        (x + self.proj_out.forward(&a)).reshape([b, c, h, w])
    }
}
