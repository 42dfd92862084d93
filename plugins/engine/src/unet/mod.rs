//! The ADM ("guided diffusion") U-Net (reference §2), the network behind every DAVI role:
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
            return bad("channel_mult, model_channels and image_size must be non-empty/positive".into());
        }
        if self.model_channels % 2 != 0 {
            return bad("model_channels must be even (timestep embedding)".into());
        }
        for m in &self.channel_mult {
            let ch = m * self.model_channels;
            if *m <= 0 || ch % self.norm_groups != 0 {
                return bad(format!("channels {ch} not divisible by norm_groups {}", self.norm_groups));
            }
            if self.num_head_channels > 0 && !self.attention_resolutions.is_empty() && ch % self.num_head_channels != 0 {
                return bad(format!("channels {ch} not divisible by num_head_channels {}", self.num_head_channels));
            }
        }
        Ok(())
    }


    /// The image side must be a multiple of this (one halving per level but the last).
    pub fn size_multiple(&self) -> i64 {
        1 << (self.channel_mult.len() - 1)
    }

    fn attention_rates(&self) -> Vec<i64> {
        self.attention_resolutions.iter().map(|r| self.image_size / r).collect()
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

/// One layer inside an `input_blocks.i` / `middle_block` / `output_blocks.i` sequence.
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
        let c = config;
        let mc = c.model_channels;
        let emb_dim = c.time_embed_dim();
        let rates = c.attention_rates();
        let te = vs / "time_embed";
        let time_embed_0 = resblock::linear(&te / 0, mc, emb_dim);
        let time_embed_2 = resblock::linear(&te / 2, emb_dim, emb_dim);
        let rcfg = |cin: i64, cout: i64| ResBlockConfig {
            in_channels: cin,
            out_channels: cout,
            emb_channels: emb_dim,
            use_scale_shift_norm: c.use_scale_shift_norm,
            norm_groups: c.norm_groups,
            up: false,
            down: false,
        };

        let ib = vs / "input_blocks";
        let mut ch = c.channel_mult[0] * mc;
        let conv_in = resblock::conv_cfg(c.in_channels * 9, 1, 1);
        let mut input_blocks =
            vec![TimestepBlock(vec![Layer::Conv(nn::conv2d(&ib / 0 / 0, c.in_channels, ch, 3, conv_in))])];
        let mut chans = vec![ch];
        let mut ds = 1;
        for (level, mult) in c.channel_mult.iter().enumerate() {
            for _ in 0..c.num_res_blocks {
                let p = &ib / input_blocks.len();
                let out = mult * mc;
                let mut layers = vec![Layer::Res(ResBlock::new(&(&p / 0), &rcfg(ch, out)))];
                ch = out;
                if rates.contains(&ds) {
                    layers.push(Layer::Attn(AttentionBlock::new(&(&p / 1), ch, c.heads_for(ch), c.norm_groups)));
                }
                input_blocks.push(TimestepBlock(layers));
                chans.push(ch);
            }
            if level + 1 != c.channel_mult.len() {
                let p = &ib / input_blocks.len() / 0;
                let layer = if c.resblock_updown {
                    Layer::Res(ResBlock::new(&p, &ResBlockConfig { down: true, ..rcfg(ch, ch) }))
                } else {
                    Layer::Down(Downsample::new(&p, ch, c.conv_resample))
                };
                input_blocks.push(TimestepBlock(vec![layer]));
                chans.push(ch);
                ds *= 2;
            }
        }

        let mb = vs / "middle_block";
        let middle_block = TimestepBlock(vec![
            Layer::Res(ResBlock::new(&(&mb / 0), &rcfg(ch, ch))),
            Layer::Attn(AttentionBlock::new(&(&mb / 1), ch, c.heads_for(ch), c.norm_groups)),
            Layer::Res(ResBlock::new(&(&mb / 2), &rcfg(ch, ch))),
        ]);

        let ob = vs / "output_blocks";
        let mut output_blocks = Vec::new();
        for (level, mult) in c.channel_mult.iter().enumerate().rev() {
            for i in 0..=c.num_res_blocks {
                let p = &ob / output_blocks.len();
                let skip = chans.pop().expect("one skip per input block");
                let out = mult * mc;
                let mut layers = vec![Layer::Res(ResBlock::new(&(&p / 0), &rcfg(ch + skip, out)))];
                ch = out;
                if rates.contains(&ds) {
                    layers.push(Layer::Attn(AttentionBlock::new(&(&p / 1), ch, c.heads_for(ch), c.norm_groups)));
                }
                if level > 0 && i == c.num_res_blocks {
                    let q = &p / layers.len();
                    layers.push(if c.resblock_updown {
                        Layer::Res(ResBlock::new(&q, &ResBlockConfig { up: true, ..rcfg(ch, ch) }))
                    } else {
                        Layer::Up(Upsample::new(&q, ch, c.conv_resample))
                    });
                    ds /= 2;
                }
                output_blocks.push(TimestepBlock(layers));
            }
        }

        let out = vs / "out";
        let out_norm = resblock::group_norm(&out / 0, c.norm_groups, ch);
        let zero = nn::ConvConfig { padding: 1, ws_init: nn::Init::Const(0.0), bs_init: nn::Init::Const(0.0), ..Default::default() };
        let out_conv = nn::conv2d(&out / 2, c.channel_mult[0] * mc, c.out_channels, 3, zero);
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
        let emb = self.time_embed_2.forward(&self.time_embed_0.forward(&temb).silu());
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
        self.out_conv.forward(&resblock::norm_f32(&self.out_norm, &h).silu())
    }

    /// The weight the adaptive GAN weight differentiates against (reference §5.5):
    /// `output_blocks[-1][0].out_layers[-1].weight`.
    pub fn last_layer_weight(&self) -> &Tensor {
        match &self.output_blocks.last().expect("non-empty").0[0] {
            Layer::Res(r) => r.out_conv_weight(),
            _ => unreachable!("output blocks start with a ResBlock"),
        }
    }
}

/// Number of parameters the config produces (built on the meta-free CPU path, no data).
pub fn parameter_count(config: &UNetConfig) -> Result<(usize, i64)> {
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let _ = tch::no_grad(|| UNetModel::new(&vs.root(), config))?;
    let vars = vs.variables();
    Ok((vars.len(), vars.values().map(|t| t.numel() as i64).sum()))
}

#[cfg(test)]
mod tests;
