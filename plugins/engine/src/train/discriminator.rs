//! The PatchGAN discriminator of DAVI's GAN term (docs/algorithm.md §5.4; the taming-transformers
//! `NLayerDiscriminator` with intermediate features): kernel 4, padding 2, LeakyReLU 0.2,
//! BatchNorm after every inner conv, always in training mode (batch statistics), real and
//! fake batches through separate forward calls. Conv weights ~ N(0, 0.02), BN weights
//! ~ N(1, 0.02), BN biases 0. Names follow the official `discriminator_2d.model{0..4}`.
use tch::{nn, nn::ModuleT, Kind, Tensor};

#[derive(Debug)]
pub struct Discriminator {
    convs: Vec<nn::Conv2D>,
    norms: Vec<Option<nn::BatchNorm>>,
}

impl Discriminator {
    /// `ndf` 64, 3 layers in the official setting.
    pub fn new(vs: &nn::Path, in_channels: i64, ndf: i64, n_layers: usize) -> Self {
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let conv = |p: nn::Path, i: i64, o: i64, stride: i64| {
            nn::conv2d(
                p,
                i,
                o,
                4,
                nn::ConvConfig {
                    stride,
                    padding: 2,
                    ws_init: init,
                    bs_init: crate::unet::resblock::torch_default(i * 16),
                    ..Default::default()
                },
            )
        };
        let bn = |p: nn::Path, c: i64| {
            nn::batch_norm2d(
                p,
                c,
                nn::BatchNormConfig {
                    ws_init: nn::Init::Randn {
                        mean: 1.0,
                        stdev: 0.02,
                    },
                    bs_init: nn::Init::Const(0.0),
                    ..Default::default()
                },
            )
        };
        let root = vs / "discriminator_2d";
        let mut convs = vec![conv(&root / "model0" / 0, in_channels, ndf, 2)];
        let mut norms = vec![None];
        let mut mult = 1;
        for n in 1..=n_layers {
            let prev = mult;
            mult = (1 << n).min(8);
            let stride = if n == n_layers { 1 } else { 2 };
            let p = &root / format!("model{n}");
            convs.push(conv(&p / 0, ndf * prev, ndf * mult, stride));
            norms.push(Some(bn(&p / 1, ndf * mult)));
        }
        convs.push(conv(
            &root / format!("model{}", n_layers + 1) / 0,
            ndf * mult,
            1,
            1,
        ));
        norms.push(None);
        Discriminator { convs, norms }
    }

    /// Patch logits and the outputs of every stage (the last stage's output is the logits).
    pub fn forward(&self, x: &Tensor) -> (Tensor, Vec<Tensor>) {
        let mut feats = Vec::with_capacity(self.convs.len());
        let mut h = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (c, n)) in self.convs.iter().zip(&self.norms).enumerate() {
            h = h.apply(c);
            if let Some(bn) = n {
                h = bn.forward_t(&h, true);
            }
            if i != last {
                // LeakyReLU(0.2): max(h, 0.2·h)
                h = h.maximum(&(&h * 0.2));
            }
            feats.push(h.shallow_clone());
        }
        (h, feats)
    }

    /// Hinge loss of the discriminator: `0.5·(mean relu(1 − D(x)) + mean relu(1 + D(x̂)))`.
    pub fn hinge_loss(&self, real: &Tensor, fake: &Tensor) -> Tensor {
        let (lr, _) = self.forward(&real.detach());
        let (lf, _) = self.forward(&fake.detach());
        ((-lr + 1.0).relu().mean(Kind::Float) + (lf + 1.0).relu().mean(Kind::Float)) * 0.5
    }

    /// Generator loss: `−mean D(x̂) + Σ_{i<4} mean|F_i(x̂) − sg F_i(x)|` (L1 feature matching
    /// over every stage but the logits).
    pub fn generator_loss(&self, real: &Tensor, fake: &Tensor) -> Tensor {
        let (lf, ff) = self.forward(fake);
        let (_, fr) = self.forward(&real.detach());
        let n = ff.len() - 1;
        let mut fm = Tensor::zeros([], (Kind::Float, fake.device()));
        for i in 0..n {
            fm += (&ff[i] - fr[i].detach()).abs().mean(Kind::Float);
        }
        -lf.mean(Kind::Float) + fm
    }
}
