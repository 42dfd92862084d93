//! The committed seeds of the `model_file` fuzz target (fuzz/corpus/model_file, docs/fuzzing.md)
//! are model files this build loads, in the two forms the target reads: a whole file, or only
//! its safetensors header with the data section laid out as zeros by the harness.
//!
//! `DAVI_WRITE_FUZZ_SEEDS=1 cargo test -p davi-engine --locked --test fuzz_corpus` writes them
//! anew (after a change of the model format or of `ModelMeta::micro_generator`).
use davi_engine::weights::model_file::{self, ModelMeta};
use davi_engine::weights::LoadedModel;
use davi_sdk::OperatorSpec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/model_file")
}

fn model_bytes(meta: ModelMeta, seed: i64) -> Vec<u8> {
    let m = LoadedModel::random(meta.clone(), Device::Cpu, seed).unwrap();
    let vars: BTreeMap<String, Tensor> = m.vs.variables().into_iter().collect();
    let tensors: Vec<(String, Tensor)> = vars.into_iter().collect();
    model_file::to_bytes(&meta, &tensors).unwrap()
}

/// The safetensors header of a model file (its JSON text).
fn header(file: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    file[8..8 + n].to_vec()
}

/// What the fuzz target makes of a header-only input: the header and zeroed data up to the
/// largest `data_offsets` end (fuzz/fuzz_targets/model_file.rs, `from_header`).
fn from_header(header: &[u8]) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(header).unwrap();
    let end = v
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, t)| t["data_offsets"][1].as_u64().unwrap())
        .max()
        .unwrap_or(0) as usize;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.resize(8 + header.len() + end, 0);
    file
}

fn spec(task: &str) -> Option<OperatorSpec> {
    Some(OperatorSpec::for_task(task).unwrap())
}

/// The seeds: (file name, mode byte, model file). Mode bit 0: header only; bit 1: through the
/// C API; bit 2: a gray test image.
fn seeds() -> Vec<(&'static str, u8, Vec<u8>)> {
    let micro = ModelMeta::micro_generator;
    let with = |mut m: ModelMeta, tile: Option<i64>, window: Option<i64>| {
        m.restore_tile = tile;
        m.restore_window = window;
        m
    };
    vec![
        ("whole-micro-any", 0, model_bytes(micro(None), 1)),
        (
            "whole-micro-denoise-capi",
            2,
            model_bytes(micro(spec("denoise")), 2),
        ),
        (
            "header-micro-sr4-tile8",
            1,
            model_bytes(with(micro(spec("sr4")), Some(8), None), 3),
        ),
        (
            "header-micro-inpaint-window-gray",
            5,
            model_bytes(with(micro(spec("inpaint")), None, Some(16)), 4),
        ),
        (
            "header-micro-colorize-capi",
            3,
            model_bytes(micro(spec("colorize")), 5),
        ),
        (
            "header-tiny-deblur",
            1,
            model_bytes(ModelMeta::tiny_generator(spec("deblur")), 6),
        ),
    ]
}

#[test]
fn model_file_seeds_load() {
    let dir = corpus_dir();
    if std::env::var_os("DAVI_WRITE_FUZZ_SEEDS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, mode, file) in seeds() {
            let mut seed = vec![mode];
            seed.extend_from_slice(&if mode & 1 == 0 { file } else { header(&file) });
            std::fs::write(dir.join(name), seed).unwrap();
        }
    }
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let seed = std::fs::read(&path).unwrap();
        let (mode, payload) = seed.split_first().unwrap();
        let file = if mode & 1 == 0 {
            payload.to_vec()
        } else {
            from_header(payload)
        };
        if let Err(e) = model_file::load_bytes(&file, Device::Cpu) {
            panic!("{}: {e}", path.display());
        }
        n += 1;
    }
    assert!(
        n >= 6,
        "expected the committed model_file seeds in {}, found {n}",
        dir.display()
    );
}
