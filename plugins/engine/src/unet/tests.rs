use super::*;
use tch::{Device, Kind};

fn shapes(config: &UNetConfig) -> std::collections::BTreeMap<String, Vec<i64>> {
    let vs = nn::VarStore::new(Device::Cpu);
    tch::no_grad(|| UNetModel::new(&vs.root(), config)).unwrap();
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.size()))
        .collect()
}

#[test]
fn ffhq_preset_matches_official_counts_and_names() {
    let _rng = crate::test_rng::seeded(0);
    let (n, p) = parameter_count(&UNetConfig::ffhq256()).unwrap();
    assert_eq!((n, p), (362, 93_563_910));
    let s = shapes(&UNetConfig::ffhq256());
    let expect: &[(&str, &[i64])] = &[
        ("time_embed.0.weight", &[512, 128]),
        ("time_embed.2.weight", &[512, 512]),
        ("input_blocks.0.0.weight", &[128, 3, 3, 3]),
        ("input_blocks.2.0.in_layers.2.weight", &[128, 128, 3, 3]),
        ("input_blocks.5.0.skip_connection.weight", &[256, 128, 1, 1]),
        ("input_blocks.9.1.qkv.weight", &[1536, 512, 1]),
        ("input_blocks.9.1.proj_out.weight", &[512, 512, 1]),
        ("middle_block.1.norm.weight", &[512]),
        ("middle_block.2.emb_layers.1.weight", &[1024, 512]),
        ("output_blocks.0.0.in_layers.0.weight", &[1024]),
        ("output_blocks.1.1.in_layers.2.weight", &[512, 512, 3, 3]),
        ("output_blocks.3.2.out_layers.3.weight", &[512, 512, 3, 3]),
        ("output_blocks.3.1.qkv.bias", &[1536]),
        (
            "output_blocks.7.0.skip_connection.weight",
            &[256, 384, 1, 1],
        ),
        ("output_blocks.11.0.out_layers.3.weight", &[128, 128, 3, 3]),
        ("out.0.weight", &[128]),
        ("out.2.weight", &[6, 128, 3, 3]),
    ];
    for (k, shape) in expect {
        assert_eq!(s.get(*k).map(|v| v.as_slice()), Some(*shape), "{k}");
    }
    assert!(!s.contains_key("label_emb.weight"));
    assert!(!s.keys().any(|k| k.starts_with("output_blocks.12")));
}

#[test]
fn imagenet_preset_matches_official_counts_and_names() {
    let (n, p) = parameter_count(&UNetConfig::imagenet256()).unwrap();
    assert_eq!((n, p), (566, 552_814_086));
    // Listed, not built (2.2 GB of f32); the list equals what is built (test below).
    let s: std::collections::BTreeMap<_, _> = UNetConfig::imagenet256()
        .parameter_shapes()
        .unwrap()
        .into_iter()
        .collect();
    for (k, shape) in [
        ("input_blocks.10.1.qkv.weight", vec![1536, 512, 1]),
        ("input_blocks.13.1.qkv.weight", vec![3072, 1024, 1]),
        (
            "output_blocks.5.2.in_layers.2.weight",
            vec![1024, 1024, 3, 3],
        ),
        (
            "output_blocks.11.1.in_layers.2.weight",
            vec![512, 512, 3, 3],
        ),
        (
            "output_blocks.17.0.out_layers.3.weight",
            vec![256, 256, 3, 3],
        ),
        ("out.2.weight", vec![6, 256, 3, 3]),
    ] {
        assert_eq!(s.get(k), Some(&shape), "{k}");
    }
}

pub fn tiny() -> UNetConfig {
    UNetConfig {
        image_size: 32,
        model_channels: 32,
        num_res_blocks: 1,
        attention_resolutions: vec![8],
        channel_mult: vec![1, 2, 2],
        num_head_channels: 16,
        norm_groups: 8,
        ..UNetConfig::ffhq256()
    }
}

/// The shape list model files are checked against before a network is built is exactly what
/// the constructor creates, name for name, under every layout switch of the config.
#[test]
fn parameter_shapes_equal_the_built_variables() {
    let _rng = crate::test_rng::seeded(0);
    let configs = [
        UNetConfig::ffhq256(),
        tiny(),
        UNetConfig {
            resblock_updown: false,
            ..tiny()
        },
        UNetConfig {
            resblock_updown: false,
            conv_resample: false,
            ..tiny()
        },
        UNetConfig {
            in_channels: 1,
            out_channels: 1,
            use_scale_shift_norm: false,
            num_res_blocks: 2,
            num_head_channels: -1,
            num_heads: 2,
            attention_resolutions: vec![32, 16, 8],
            ..tiny()
        },
        UNetConfig {
            attention_resolutions: vec![],
            channel_mult: vec![2],
            ..tiny()
        },
    ];
    for c in configs {
        let listed = c.parameter_shapes().unwrap();
        let by_name: std::collections::BTreeMap<_, _> = listed.iter().cloned().collect();
        assert_eq!(by_name.len(), listed.len(), "a name listed twice for {c:?}");
        assert_eq!(by_name, shapes(&c), "{c:?}");
    }
    let mut bad = tiny();
    bad.norm_groups = 7;
    assert!(
        bad.parameter_shapes().is_err(),
        "an unbuildable config has no shape list"
    );
}

#[test]
fn forward_shape_any_size_and_deterministic() {
    let _rng = crate::test_rng::seeded(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = UNetModel::new(&vs.root(), &tiny()).unwrap();
    // make the zero-initialised layers non-zero so every path contributes
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let r = v.randn_like() * 0.05;
            v.copy_(&(&v + r));
        }
    });
    let x = Tensor::randn([2, 3, 24, 40], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0i64, 999]);
    let y = tch::no_grad(|| net.forward(&x, &t));
    assert_eq!(y.size(), vec![2, 6, 24, 40]);
    let y2 = tch::no_grad(|| net.forward(&x, &t));
    assert_eq!((y - y2).abs().max().double_value(&[]), 0.0);
}

#[test]
fn timestep_embedding_is_cos_then_sin() {
    let e = embedding::timestep_embedding(&Tensor::from_slice(&[3i64]), 8);
    // k = 0 frequency is 1: cos(3) first, sin(3) at index half
    assert!((e.double_value(&[0, 0]) - 3f64.cos()).abs() < 1e-6);
    assert!((e.double_value(&[0, 4]) - 3f64.sin()).abs() < 1e-6);
    // k = 1: freq = 10000^(-1/4) = 0.1
    assert!((e.double_value(&[0, 1]) - (0.3f64).cos()).abs() < 1e-6);
}

#[test]
fn bad_configs_are_refused() {
    let _rng = crate::test_rng::seeded(0);
    let mut c = tiny();
    c.norm_groups = 7;
    assert!(UNetModel::new(&nn::VarStore::new(Device::Cpu).root(), &c).is_err());
    assert!(UNetConfig::preset("nope").is_err());
}

/// `forward_flops` against an independent count: PyTorch's `FlopCounterMode` over the
/// separate ADM implementation in `scripts/bench_pytorch.py`, run on the shipped photo models'
/// configuration (it counts the same operations: convolutions, matrix products, the two
/// attention products; 2 per multiply-add).
#[test]
fn forward_flops_match_an_independent_count() {
    let photo = UNetConfig {
        num_head_channels: 32,
        norm_groups: 32,
        ..tiny()
    };
    assert_eq!(photo.forward_flops(64, 64), 2_471_174_144.0);
    assert_eq!(photo.forward_flops(96, 96), 11_496_603_648.0 / 2.0);
    assert_eq!(photo.forward_flops(64, 48), 1_840_914_432.0);
    // FFHQ-256 at its size: ≈ 388 GFLOP (docs/performance.md).
    let f = UNetConfig::ffhq256().forward_flops(256, 256);
    assert!((f / 1e9 - 388.0).abs() < 5.0, "{f}");
}
