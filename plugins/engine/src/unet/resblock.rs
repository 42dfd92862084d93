//! `ResBlock` (with optional up/down-sampling), `Downsample` and `Upsample` of the ADM U-Net.
//!
//! Key names: `in_layers.{0: GroupNorm, 2: Conv3x3}`, `emb_layers.1` (Linear to 2·C_out in
//! scale-shift form), `out_layers.{0: GroupNorm, 3: Conv3x3}`, `skip_connection` (1×1 conv
//! when the width changes). With scale-shift the projection splits into
//! **scale = first half, shift = second half**: `h = GN(h)·(1 + scale) + shift`.
use tch::{nn, nn::Module, Kind, Tensor};

/// PyTorch's default initialisation of conv/linear weights and biases (kaiming-uniform with
/// a = √5, i.e. U(±1/√fan_in)), which guided diffusion keeps for every layer it does not
/// zero. tch's own default (ReLU gain, zero bias) is 2.45× wider.
pub fn torch_default(fan_in: i64) -> nn::Init {
    let b = 1.0 / (fan_in as f64).sqrt();
    nn::Init::Uniform { lo: -b, up: b }
}

/// A conv config with PyTorch's default initialisation for `fan_in = C_in·k·k`.
pub fn conv_cfg(fan_in: i64, stride: i64, padding: i64) -> nn::ConvConfig {
    nn::ConvConfig {
        stride,
        padding,
        ws_init: torch_default(fan_in),
        bs_init: torch_default(fan_in),
        ..Default::default()
    }
}

/// A linear layer initialised as PyTorch does.
pub fn linear(vs: nn::Path, i: i64, o: i64) -> nn::Linear {
    nn::linear(
        vs,
        i,
        o,
        nn::LinearConfig {
            ws_init: torch_default(i),
            bs_init: Some(torch_default(i)),
            bias: true,
        },
    )
}

/// GroupNorm with ADM's settings (eps 1e-5, affine).
pub fn group_norm(vs: nn::Path, groups: i64, channels: i64) -> nn::GroupNorm {
    nn::group_norm(
        vs,
        groups,
        channels,
        nn::GroupNormConfig {
            eps: 1e-5,
            ..Default::default()
        },
    )
}

/// The variables of a conv layer (`weight` `[cout, cin, kernel…]`, `bias` `[cout]`) named
/// after `prefix`, as `nn::conv1d`/`nn::conv2d` create them.
pub fn conv_shapes(prefix: &str, cin: i64, cout: i64, kernel: &[i64]) -> Vec<(String, Vec<i64>)> {
    let weight = [&[cout, cin][..], kernel].concat();
    vec![
        (format!("{prefix}weight"), weight),
        (format!("{prefix}bias"), vec![cout]),
    ]
}

/// The variables of [`linear`] (`weight` `[o, i]`, `bias` `[o]`).
pub fn linear_shapes(prefix: &str, i: i64, o: i64) -> Vec<(String, Vec<i64>)> {
    vec![
        (format!("{prefix}weight"), vec![o, i]),
        (format!("{prefix}bias"), vec![o]),
    ]
}

/// The variables of [`group_norm`] (affine `weight` and `bias`, one per channel).
pub fn group_norm_shapes(prefix: &str, channels: i64) -> Vec<(String, Vec<i64>)> {
    vec![
        (format!("{prefix}weight"), vec![channels]),
        (format!("{prefix}bias"), vec![channels]),
    ]
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

impl ResBlockConfig {
    /// The variables [`ResBlock::new`] creates, names relative to the block.
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<i64>)> {
        let (cin, cout) = (self.in_channels, self.out_channels);
        let emb_out = if self.use_scale_shift_norm {
            2 * cout
        } else {
            cout
        };
        let mut v = group_norm_shapes("in_layers.0.", cin);
        v.extend(conv_shapes("in_layers.2.", cin, cout, &[3, 3]));
        v.extend(linear_shapes("emb_layers.1.", self.emb_channels, emb_out));
        v.extend(group_norm_shapes("out_layers.0.", cout));
        v.extend(conv_shapes("out_layers.3.", cout, cout, &[3, 3]));
        if cin != cout {
            v.extend(conv_shapes("skip_connection.", cin, cout, &[1, 1]));
        }
        v
    }
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
        let zero = nn::ConvConfig {
            padding: 1,
            ws_init: nn::Init::Const(0.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let il = vs / "in_layers";
        let ol = vs / "out_layers";
        let emb_out = if cfg.use_scale_shift_norm {
            2 * cout
        } else {
            cout
        };
        ResBlock {
            cfg: *cfg,
            in_norm: group_norm(&il / 0, cfg.norm_groups, cin),
            in_conv: nn::conv2d(&il / 2, cin, cout, 3, conv_cfg(cin * 9, 1, 1)),
            emb_linear: linear(vs / "emb_layers" / 1, cfg.emb_channels, emb_out),
            out_norm: group_norm(&ol / 0, cfg.norm_groups, cout),
            out_conv: nn::conv2d(&ol / 3, cout, cout, 3, zero),
            skip: (cin != cout)
                .then(|| nn::conv2d(vs / "skip_connection", cin, cout, 1, conv_cfg(cin, 1, 0))),
        }
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Tensor {
        let (up, down) = (self.cfg.up, self.cfg.down);
        let h = norm_f32(&self.in_norm, x).silu();
        let h = self.in_conv.forward(&resample(&h, up, down));
        let x = resample(x, up, down);
        let e = self
            .emb_linear
            .forward(&emb.silu())
            .unsqueeze(-1)
            .unsqueeze(-1);
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
        Downsample(use_conv.then(|| nn::conv2d(vs / "op", ch, ch, 3, conv_cfg(ch * 9, 2, 1))))
    }
    /// The variables [`Downsample::new`] creates.
    pub fn parameter_shapes(ch: i64, use_conv: bool) -> Vec<(String, Vec<i64>)> {
        if use_conv {
            conv_shapes("op.", ch, ch, &[3, 3])
        } else {
            Vec::new()
        }
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
        Upsample(use_conv.then(|| nn::conv2d(vs / "conv", ch, ch, 3, conv_cfg(ch * 9, 1, 1))))
    }
    /// The variables [`Upsample::new`] creates.
    pub fn parameter_shapes(ch: i64, use_conv: bool) -> Vec<(String, Vec<i64>)> {
        if use_conv {
            conv_shapes("conv.", ch, ch, &[3, 3])
        } else {
            Vec::new()
        }
    }
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let x = resample(x, true, false);
        match &self.0 {
            Some(c) => c.forward(&x),
            None => x,
        }
    }
}
