//! The ADM ("guided diffusion") U-Net (docs/algorithm.md §2), the network behind every DAVI role:
//! teacher score, fake score and one-step generator.
//!
//! Variable paths mirror the official state dicts, `nn.Sequential` indices included
//! (`input_blocks.9.1.qkv.weight`), so `ffhq_10m.pt`, `256x256_diffusion_uncond.pt` and the
//! DAVI `{deg}_ema.pt` checkpoints load by name with no renaming table. The forward pass
//! follows the official order exactly: cosine-then-sine timestep embedding of the raw
//! integer t, scale = first half of the embedding projection, legacy head-first QKV split,
//! skip concatenation `[h, skip]`.
//!
//! One file per block kind: [`embedding`], [`resblock`] (`ResBlock`, `Downsample`,
//! `Upsample`), [`attention`] (`AttentionBlock`); this file holds the config and assembly.
pub mod attention;
pub mod embedding;
pub mod resblock;

use crate::error::{EngineError, Result};
use attention::AttentionBlock;
use resblock::{Downsample, ResBlock, ResBlockConfig, Upsample};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

/// Architecture hyper-parameters (the official `create_model` arguments that matter).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Training resolution; attention resolutions are converted to down-sampling rates
    /// `image_size / res`. The network is fully convolutional and runs at any size
    /// divisible by `2^(levels-1)`.
    pub image_size: i64,
    #[serde(default = "three")]
    pub in_channels: i64,
    pub model_channels: i64,
    /// 6 with learned variance (ε and v), 3 without.
    #[serde(default = "six")]
    pub out_channels: i64,
    pub num_res_blocks: usize,
    /// Feature-map resolutions (at `image_size`) that get self-attention, e.g. `[16]`.
    pub attention_resolutions: Vec<i64>,
    pub channel_mult: Vec<i64>,
    /// Heads = channels / `num_head_channels` when positive (the official setting, 64);
    /// else `num_heads` heads everywhere.
    #[serde(default = "sixty_four")]
    pub num_head_channels: i64,
    #[serde(default = "four")]
    pub num_heads: i64,
    #[serde(default = "yes")]
    pub use_scale_shift_norm: bool,
    #[serde(default = "yes")]
    pub resblock_updown: bool,
    /// Learned convolution in `Downsample`/`Upsample` when `resblock_updown` is false.
    #[serde(default = "yes")]
    pub conv_resample: bool,
    /// GroupNorm groups (32 in ADM; smaller only for tiny test networks).
    #[serde(default = "thirty_two")]
    pub norm_groups: i64,
    #[serde(default)]
    pub dropout: f64,
}

fn three() -> i64 {
    3
}
fn six() -> i64 {
    6
}
fn four() -> i64 {
    4
}
fn sixty_four() -> i64 {
    64
}
fn thirty_two() -> i64 {
    32
}
fn yes() -> bool {
    true
}

impl UNetConfig {
    /// FFHQ-256 (`ffhq_model_and_ppb_diffusion_defaults`; DPS `ffhq_10m.pt`).
    pub fn ffhq256() -> Self {
        UNetConfig {
            image_size: 256,
            in_channels: 3,
            model_channels: 128,
            out_channels: 6,
            num_res_blocks: 1,
            attention_resolutions: vec![16],
            channel_mult: vec![1, 1, 2, 2, 4, 4],
            num_head_channels: 64,
            num_heads: 4,
            use_scale_shift_norm: true,
            resblock_updown: true,
            conv_resample: true,
            norm_groups: 32,
            dropout: 0.0,
        }
    }

    /// ImageNet-256 unconditional (`imagenet_model_and_ppb_diffusion_defaults`;
    /// guided-diffusion `256x256_diffusion_uncond.pt`).
    pub fn imagenet256() -> Self {
        UNetConfig {
            model_channels: 256,
            num_res_blocks: 2,
            attention_resolutions: vec![32, 16, 8],
            ..Self::ffhq256()
        }
    }

    /// A preset by name: `ffhq256`, `imagenet256`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "ffhq256" | "ffhq" => Ok(Self::ffhq256()),
            "imagenet256" | "imagenet" => Ok(Self::imagenet256()),
            other => Err(EngineError::InvalidInput(format!(
                "unknown preset `{other}` (known: ffhq256, imagenet256)"
            ))),
        }
    }

    /// Check that the blocks can be built (channel counts divisible by groups and heads).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::InvalidInput(format!("unet config: {m}")));
        if self.channel_mult.is_empty() || self.model_channels <= 0 || self.image_size <= 0 {
            return bad(
                "channel_mult, model_channels and image_size must be non-empty/positive".into(),
            );
        }
        if self.model_channels % 2 != 0 {
            return bad("model_channels must be even (timestep embedding)".into());
        }
        if self.norm_groups <= 0 || self.attention_resolutions.iter().any(|r| *r <= 0) {
            return bad("norm_groups and attention_resolutions must be positive".into());
        }
        for m in &self.channel_mult {
            let ch = m * self.model_channels;
            if *m <= 0 || ch % self.norm_groups != 0 {
                return bad(format!(
                    "channels {ch} not divisible by norm_groups {}",
                    self.norm_groups
                ));
            }
            if self.num_head_channels > 0
                && !self.attention_resolutions.is_empty()
                && ch % self.num_head_channels != 0
            {
                return bad(format!(
                    "channels {ch} not divisible by num_head_channels {}",
                    self.num_head_channels
                ));
            }
        }
        // The middle block always attends, whatever `attention_resolutions` says, and with
        // `num_head_channels = -1` the head count is `num_heads` everywhere: check every
        // attention layer the layout has, not just the levels listed.
        let layout = self.layout();
        for (_, layers) in layout.blocks() {
            for layer in layers {
                if let LayerPlan::Attn { channels, heads } = *layer {
                    if heads < 1 || channels % heads != 0 {
                        return bad(format!(
                            "attention over {channels} channels does not split into {heads} heads \
                             (num_head_channels {}, num_heads {})",
                            self.num_head_channels, self.num_heads
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The image side must be a multiple of this (one halving per level but the last).
    pub fn size_multiple(&self) -> i64 {
        1 << (self.channel_mult.len() - 1)
    }

    fn attention_rates(&self) -> Vec<i64> {
        self.attention_resolutions
            .iter()
            .map(|r| self.image_size / r)
            .collect()
    }

    fn heads_for(&self, ch: i64) -> i64 {
        if self.num_head_channels > 0 {
            ch / self.num_head_channels
        } else {
            self.num_heads
        }
    }

    pub fn time_embed_dim(&self) -> i64 {
        4 * self.model_channels
    }
}

/// One layer of the architecture as the config lays it out, before any variable exists.
/// [`UNetModel::new`] builds these and [`UNetConfig::parameter_shapes`] lists their variables,
/// both from the one walk in [`UNetConfig::layout`], so the shapes a model file is checked
/// against are the shapes the network is built with.
#[derive(Clone, Copy, Debug)]
enum LayerPlan {
    /// The 3×3 input convolution.
    ConvIn {
        cin: i64,
        cout: i64,
    },
    Res(ResBlockConfig),
    Attn {
        channels: i64,
        heads: i64,
    },
    Down {
        channels: i64,
        conv: bool,
    },
    Up {
        channels: i64,
        conv: bool,
    },
}

/// The whole network as layer plans, section by section (`input_blocks.i.j`,
/// `middle_block.j`, `output_blocks.i.j`), plus the width the `out` head reads.
struct Layout {
    input_blocks: Vec<Vec<LayerPlan>>,
    middle_block: Vec<LayerPlan>,
    output_blocks: Vec<Vec<LayerPlan>>,
    head_channels: i64,
}

impl Layout {
    /// Every block with its official path (`input_blocks.3`, `middle_block`).
    fn blocks(&self) -> impl Iterator<Item = (String, &[LayerPlan])> {
        self.input_blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("input_blocks.{i}"), b.as_slice()))
            .chain(std::iter::once((
                "middle_block".to_string(),
                self.middle_block.as_slice(),
            )))
            .chain(
                self.output_blocks
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (format!("output_blocks.{i}"), b.as_slice())),
            )
    }
}

impl LayerPlan {
    fn build(&self, vs: &nn::Path, norm_groups: i64) -> Layer {
        match *self {
            LayerPlan::ConvIn { cin, cout } => Layer::Conv(nn::conv2d(
                vs,
                cin,
                cout,
                3,
                resblock::conv_cfg(cin * 9, 1, 1),
            )),
            LayerPlan::Res(cfg) => Layer::Res(ResBlock::new(vs, &cfg)),
            LayerPlan::Attn { channels, heads } => {
                Layer::Attn(AttentionBlock::new(vs, channels, heads, norm_groups))
            }
            LayerPlan::Down { channels, conv } => Layer::Down(Downsample::new(vs, channels, conv)),
            LayerPlan::Up { channels, conv } => Layer::Up(Upsample::new(vs, channels, conv)),
        }
    }

    /// The layer's variables, names relative to the layer, with their shapes.
    fn parameter_shapes(&self) -> Vec<(String, Vec<i64>)> {
        match *self {
            LayerPlan::ConvIn { cin, cout } => resblock::conv_shapes("", cin, cout, &[3, 3]),
            LayerPlan::Res(cfg) => cfg.parameter_shapes(),
            LayerPlan::Attn { channels, .. } => attention::parameter_shapes(channels),
            LayerPlan::Down { channels, conv } => Downsample::parameter_shapes(channels, conv),
            LayerPlan::Up { channels, conv } => Upsample::parameter_shapes(channels, conv),
        }
    }
}

impl UNetConfig {
    /// The layer-by-layer layout the config describes (no variable is created).
    fn layout(&self) -> Layout {
        let c = self;
        let mc = c.model_channels;
        let rates = c.attention_rates();
        let rcfg = |cin: i64, cout: i64| ResBlockConfig {
            in_channels: cin,
            out_channels: cout,
            emb_channels: c.time_embed_dim(),
            use_scale_shift_norm: c.use_scale_shift_norm,
            norm_groups: c.norm_groups,
            up: false,
            down: false,
        };
        let attn = |ch: i64| LayerPlan::Attn {
            channels: ch,
            heads: c.heads_for(ch),
        };

        let mut ch = c.channel_mult[0] * mc;
        let mut input_blocks = vec![vec![LayerPlan::ConvIn {
            cin: c.in_channels,
            cout: ch,
        }]];
        let mut chans = vec![ch];
        let mut ds = 1;
        for (level, mult) in c.channel_mult.iter().enumerate() {
            for _ in 0..c.num_res_blocks {
                let out = mult * mc;
                let mut layers = vec![LayerPlan::Res(rcfg(ch, out))];
                ch = out;
                if rates.contains(&ds) {
                    layers.push(attn(ch));
                }
                input_blocks.push(layers);
                chans.push(ch);
            }
            if level + 1 != c.channel_mult.len() {
                input_blocks.push(vec![if c.resblock_updown {
                    LayerPlan::Res(ResBlockConfig {
                        down: true,
                        ..rcfg(ch, ch)
                    })
                } else {
                    LayerPlan::Down {
                        channels: ch,
                        conv: c.conv_resample,
                    }
                }]);
                chans.push(ch);
                ds *= 2;
            }
        }

        let middle_block = vec![
            LayerPlan::Res(rcfg(ch, ch)),
            attn(ch),
            LayerPlan::Res(rcfg(ch, ch)),
        ];

        let mut output_blocks = Vec::new();
        for (level, mult) in c.channel_mult.iter().enumerate().rev() {
            for i in 0..=c.num_res_blocks {
                let skip = chans.pop().expect("one skip per input block");
                let out = mult * mc;
                let mut layers = vec![LayerPlan::Res(rcfg(ch + skip, out))];
                ch = out;
                if rates.contains(&ds) {
                    layers.push(attn(ch));
                }
                if level > 0 && i == c.num_res_blocks {
                    layers.push(if c.resblock_updown {
                        LayerPlan::Res(ResBlockConfig {
                            up: true,
                            ..rcfg(ch, ch)
                        })
                    } else {
                        LayerPlan::Up {
                            channels: ch,
                            conv: c.conv_resample,
                        }
                    });
                    ds /= 2;
                }
                output_blocks.push(layers);
            }
        }
        Layout {
            input_blocks,
            middle_block,
            output_blocks,
            head_channels: ch,
        }
    }

    /// Every variable of the network by official name, with its shape, in construction
    /// order, computed from the config alone: nothing is allocated, so a model file can be
    /// checked tensor by tensor before a network of the size its metadata claims is built.
    pub fn parameter_shapes(&self) -> Result<Vec<(String, Vec<i64>)>> {
        self.validate()?;
        let (mc, emb) = (self.model_channels, self.time_embed_dim());
        let layout = self.layout();
        let mut out = resblock::linear_shapes("time_embed.0.", mc, emb);
        out.extend(resblock::linear_shapes("time_embed.2.", emb, emb));
        for (block, layers) in layout.blocks() {
            for (j, layer) in layers.iter().enumerate() {
                out.extend(
                    layer
                        .parameter_shapes()
                        .into_iter()
                        .map(|(n, s)| (format!("{block}.{j}.{n}"), s)),
                );
            }
        }
        out.extend(resblock::group_norm_shapes("out.0.", layout.head_channels));
        out.extend(resblock::conv_shapes(
            "out.2.",
            layout.head_channels,
            self.out_channels,
            &[3, 3],
        ));
        Ok(out)
    }

    /// Floating-point operations of one forward pass on one `height × width` sample (a
    /// size the network accepts: a multiple of [`Self::size_multiple`]), counted from the
    /// same layout the network is built from. A multiply-add counts as 2 operations. Counted:
    /// every convolution (`2·C_in·C_out·k²` per output pixel), every linear layer (the
    /// timestep embedding and each ResBlock's embedding projection), and in attention the QKV
    /// and output projections plus the two `T×T` products (`QKᵀ` and `AV`, `2·T²·C` each,
    /// T = tokens). Not counted: biases, GroupNorm, SiLU, the softmax, residual additions,
    /// skip concatenations and the up/down resampling — elementwise work of a few operations
    /// per activation, under 1 % of the total for the shipped models. This is the "floor"
    /// numerator of `scripts/bench-photo.sh` (docs/performance.md).
    pub fn forward_flops(&self, height: i64, width: i64) -> f64 {
        let layout = self.layout();
        let (mut h, mut w) = (height as f64, width as f64);
        let emb = self.time_embed_dim() as f64;
        let mc = self.model_channels as f64;
        // Timestep embedding: Linear(mc → emb), Linear(emb → emb).
        let mut flops = 2.0 * mc * emb + 2.0 * emb * emb;
        let conv = |cin: i64, cout: i64, k: f64, pixels: f64| {
            2.0 * cin as f64 * cout as f64 * k * k * pixels
        };
        for (_, layers) in layout.blocks() {
            for layer in layers {
                match *layer {
                    LayerPlan::ConvIn { cin, cout } => flops += conv(cin, cout, 3.0, h * w),
                    LayerPlan::Res(c) => {
                        // The input is resampled before in_layers' convolution
                        // (docs/algorithm.md §2).
                        if c.up {
                            h *= 2.0;
                            w *= 2.0;
                        } else if c.down {
                            h = (h / 2.0).floor();
                            w = (w / 2.0).floor();
                        }
                        let p = h * w;
                        let emb_out = if c.use_scale_shift_norm {
                            2 * c.out_channels
                        } else {
                            c.out_channels
                        };
                        flops += conv(c.in_channels, c.out_channels, 3.0, p)
                            + 2.0 * c.emb_channels as f64 * emb_out as f64
                            + conv(c.out_channels, c.out_channels, 3.0, p);
                        if c.in_channels != c.out_channels {
                            flops += conv(c.in_channels, c.out_channels, 1.0, p);
                        }
                    }
                    LayerPlan::Attn { channels, .. } => {
                        let (c, t) = (channels as f64, h * w);
                        // qkv (C → 3C) and proj_out (C → C) per token; QKᵀ and AV over all heads.
                        flops += 2.0 * c * 3.0 * c * t + 2.0 * c * c * t + 2.0 * 2.0 * t * t * c;
                    }
                    LayerPlan::Down {
                        channels,
                        conv: with_conv,
                    } => {
                        h = (h / 2.0).floor();
                        w = (w / 2.0).floor();
                        if with_conv {
                            flops += conv(channels, channels, 3.0, h * w);
                        }
                    }
                    LayerPlan::Up {
                        channels,
                        conv: with_conv,
                    } => {
                        h *= 2.0;
                        w *= 2.0;
                        if with_conv {
                            flops += conv(channels, channels, 3.0, h * w);
                        }
                    }
                }
            }
        }
        flops + conv(layout.head_channels, self.out_channels, 3.0, h * w)
    }
}

/// One layer inside an `input_blocks.i` / `middle_block` / `output_blocks.i` sequence.
// Variants differ in size (a residual block holds many layers); a network has a few dozen
// of them, built once, so boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Layer {
    Conv(nn::Conv2D),
    Res(ResBlock),
    Attn(AttentionBlock),
    Down(Downsample),
    Up(Upsample),
}

impl Layer {
    fn forward(&self, x: &Tensor, emb: &Tensor) -> Tensor {
        match self {
            Layer::Conv(c) => c.forward(x),
            Layer::Res(r) => r.forward(x, emb),
            Layer::Attn(a) => a.forward(x),
            Layer::Down(d) => d.forward(x),
            Layer::Up(u) => u.forward(x),
        }
    }
}

/// The guided-diffusion `TimestepEmbedSequential`: layers applied in order, ResBlocks get
/// the timestep embedding.
#[derive(Debug)]
struct TimestepBlock(Vec<Layer>);

impl TimestepBlock {
    fn forward(&self, x: &Tensor, emb: &Tensor) -> Tensor {
        let mut h = self.0[0].forward(x, emb);
        for l in &self.0[1..] {
            h = l.forward(&h, emb);
        }
        h
    }
}

/// The ADM U-Net. `forward(x, t)` returns `(B, out_channels, H, W)`: channels 0..3 are the
/// ε prediction, 3..6 the learned-range variance value v.
#[derive(Debug)]
pub struct UNetModel {
    pub config: UNetConfig,
    time_embed_0: nn::Linear,
    time_embed_2: nn::Linear,
    input_blocks: Vec<TimestepBlock>,
    middle_block: TimestepBlock,
    output_blocks: Vec<TimestepBlock>,
    out_norm: nn::GroupNorm,
    out_conv: nn::Conv2D,
}

impl UNetModel {
    /// Build the network under `vs` with the official variable names. Fresh weights follow
    /// guided-diffusion's initialisation: PyTorch defaults, with the last convolution of
    /// every ResBlock, every attention `proj_out` and the head `out.2` zero-initialised.
    pub fn new(vs: &nn::Path, config: &UNetConfig) -> Result<Self> {
        config.validate()?;
        let (mc, emb_dim) = (config.model_channels, config.time_embed_dim());
        let te = vs / "time_embed";
        let time_embed_0 = resblock::linear(&te / 0, mc, emb_dim);
        let time_embed_2 = resblock::linear(&te / 2, emb_dim, emb_dim);
        let layout = config.layout();
        let build = |section: nn::Path, layers: &[LayerPlan]| {
            TimestepBlock(
                layers
                    .iter()
                    .enumerate()
                    .map(|(j, l)| l.build(&(&section / j), config.norm_groups))
                    .collect(),
            )
        };
        let (ib, ob) = (vs / "input_blocks", vs / "output_blocks");
        let input_blocks = layout
            .input_blocks
            .iter()
            .enumerate()
            .map(|(i, b)| build(&ib / i, b))
            .collect();
        let middle_block = build(vs / "middle_block", &layout.middle_block);
        let output_blocks = layout
            .output_blocks
            .iter()
            .enumerate()
            .map(|(i, b)| build(&ob / i, b))
            .collect();

        let out = vs / "out";
        let ch = layout.head_channels;
        let out_norm = resblock::group_norm(&out / 0, config.norm_groups, ch);
        let zero = nn::ConvConfig {
            padding: 1,
            ws_init: nn::Init::Const(0.0),
            bs_init: nn::Init::Const(0.0),
            ..Default::default()
        };
        let out_conv = nn::conv2d(&out / 2, ch, config.out_channels, 3, zero);
        Ok(UNetModel {
            config: config.clone(),
            time_embed_0,
            time_embed_2,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm,
            out_conv,
        })
    }

    /// `x`: `(B, in_channels, H, W)`; `t`: `(B,)` integer timesteps (fed raw, not rescaled).
    pub fn forward(&self, x: &Tensor, t: &Tensor) -> Tensor {
        let temb = embedding::timestep_embedding(t, self.config.model_channels).to_kind(x.kind());
        let emb = self
            .time_embed_2
            .forward(&self.time_embed_0.forward(&temb).silu());
        let mut hs = Vec::with_capacity(self.input_blocks.len());
        let mut h = x.shallow_clone();
        for b in &self.input_blocks {
            h = b.forward(&h, &emb);
            hs.push(h.shallow_clone());
        }
        h = self.middle_block.forward(&h, &emb);
        for b in &self.output_blocks {
            let skip = hs.pop().expect("one skip per output block");
            h = b.forward(&Tensor::cat(&[h, skip], 1), &emb);
        }
        self.out_conv
            .forward(&resblock::norm_f32(&self.out_norm, &h).silu())
    }

    /// The weight the adaptive GAN weight differentiates against (docs/algorithm.md §5.5):
    /// `output_blocks[-1][0].out_layers[-1].weight`.
    pub fn last_layer_weight(&self) -> &Tensor {
        match &self.output_blocks.last().expect("non-empty").0[0] {
            Layer::Res(r) => r.out_conv_weight(),
            _ => unreachable!("output blocks start with a ResBlock"),
        }
    }
}

/// Number of variables and parameters the config produces (from its shape list: nothing is
/// allocated, so even the largest preset is counted instantly).
pub fn parameter_count(config: &UNetConfig) -> Result<(usize, i64)> {
    let shapes = config.parameter_shapes()?;
    Ok((
        shapes.len(),
        shapes.iter().map(|(_, s)| s.iter().product::<i64>()).sum(),
    ))
}

#[cfg(test)]
mod tests;
