//! `ResBlock` (with optional up/down-sampling), `Downsample` and `Upsample` of the ADM U-Net.
//!
//! Key names: `in_layers.{0: GroupNorm, 2: Conv3x3}`, `emb_layers.1` (Linear to 2·C_out in
//! scale-shift form), `out_layers.{0: GroupNorm, 3: Conv3x3}`, `skip_connection` (1×1 conv
//! when the width changes). With scale-shift the projection splits into
//! **scale = first half, shift = second half**: `h = GN(h)·(1 + scale) + shift`.
use tch::{nn, nn::Module, Kind, Tensor};

/// GroupNorm with ADM's settings (eps 1e-5, affine).
pub fn group_norm(vs: nn::Path, groups: i64, channels: i64) -> nn::GroupNorm {
    nn::group_norm(vs, groups, channels, nn::GroupNormConfig { eps: 1e-5, ..Default::default() })
}

/// ADM's `GroupNorm32`: evaluated in f32, cast back to the input kind (matters in bf16/fp16).
pub fn norm_f32(gn: &nn::GroupNorm, x: &Tensor) -> Tensor {
    if x.kind() == Kind::Float {
        gn.forward(x)
    } else {
        let kind = x.kind();
        let w = gn.ws.as_ref().map(|w| w.to_kind(Kind::Float));
        let b = gn.bs.as_ref().map(|b| b.to_kind(Kind::Float));
        x.to_kind(Kind::Float)
            .group_norm(gn.num_groups, w.as_ref(), b.as_ref(), 1e-5, false)
            .to_kind(kind)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct ResBlockConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub emb_channels: i64,
    pub use_scale_shift_norm: bool,
    pub norm_groups: i64,
    pub up: bool,
    pub down: bool,
}

fn resample(x: &Tensor, up: bool, down: bool) -> Tensor {
    if up {
        let (h, w) = (x.size()[2], x.size()[3]);
        x.upsample_nearest2d([h * 2, w * 2], None, None)
    } else if down {
        x.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None)
    } else {
        x.shallow_clone()
    }
}

#[derive(Debug)]
pub struct ResBlock {
    cfg: ResBlockConfig,
    in_norm: nn::GroupNorm,
    in_conv: nn::Conv2D,
    emb_linear: nn::Linear,
    out_norm: nn::GroupNorm,
    out_conv: nn::Conv2D,
    skip: Option<nn::Conv2D>,
}

impl ResBlock {
    pub fn new(vs: &nn::Path, cfg: &ResBlockConfig) -> Self {
        let (cin, cout) = (cfg.in_channels, cfg.out_channels);
        let pad1 = nn::ConvConfig { padding: 1, ..Default::default() };
        let zero = nn::ConvConfig {
            padding: 1,
            ws_init: nn::Init::Const(0.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let il = vs / "in_layers";
        let ol = vs / "out_layers";
        let emb_out = if cfg.use_scale_shift_norm { 2 * cout } else { cout };
        ResBlock {
            cfg: *cfg,
            in_norm: group_norm(&il / 0, cfg.norm_groups, cin),
            in_conv: nn::conv2d(&il / 2, cin, cout, 3, pad1),
            emb_linear: nn::linear(vs / "emb_layers" / 1, cfg.emb_channels, emb_out, Default::default()),
            out_norm: group_norm(&ol / 0, cfg.norm_groups, cout),
            out_conv: nn::conv2d(&ol / 3, cout, cout, 3, zero),
            skip: (cin != cout).then(|| nn::conv2d(vs / "skip_connection", cin, cout, 1, Default::default())),
        }
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Tensor {
        let (up, down) = (self.cfg.up, self.cfg.down);
        let h = norm_f32(&self.in_norm, x).silu();
        let h = self.in_conv.forward(&resample(&h, up, down));
        let x = resample(x, up, down);
        let e = self.emb_linear.forward(&emb.silu()).unsqueeze(-1).unsqueeze(-1);
        let h = if self.cfg.use_scale_shift_norm {
            let parts = e.chunk(2, 1);
            norm_f32(&self.out_norm, &h) * (&parts[0] + 1.0) + &parts[1]
        } else {
            norm_f32(&self.out_norm, &(h + e))
        };
        // Dropout is 0 in every official config; it is not applied.
        let h = self.out_conv.forward(&h.silu());
        match &self.skip {
            Some(s) => s.forward(&x) + h,
            None => x + h,
        }
    }

    pub fn out_conv_weight(&self) -> &Tensor {
        &self.out_conv.ws
    }
}

/// Plain down-sampling (only when `resblock_updown` is false): stride-2 3×3 conv `op`, or
/// 2×2 average pooling.
#[derive(Debug)]
pub struct Downsample(Option<nn::Conv2D>);

impl Downsample {
    pub fn new(vs: &nn::Path, ch: i64, use_conv: bool) -> Self {
        let cfg = nn::ConvConfig { stride: 2, padding: 1, ..Default::default() };
        Downsample(use_conv.then(|| nn::conv2d(vs / "op", ch, ch, 3, cfg)))
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match &self.0 {
            Some(c) => c.forward(x),
            None => resample(x, false, true),
        }
    }
}

/// Plain up-sampling (only when `resblock_updown` is false): nearest ×2, then 3×3 conv `conv`.
#[derive(Debug)]
pub struct Upsample(Option<nn::Conv2D>);

impl Upsample {
    pub fn new(vs: &nn::Path, ch: i64, use_conv: bool) -> Self {
        let cfg = nn::ConvConfig { padding: 1, ..Default::default() };
        Upsample(use_conv.then(|| nn::conv2d(vs / "conv", ch, ch, 3, cfg)))
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = resample(x, true, false);
        match &self.0 {
            Some(c) => c.forward(&x),
            None => x,
        }
    }
}
