//! Helpers shared by the fuzz targets (docs/fuzzing.md): the micro model they restore with,
//! a byte reader for structured inputs, and the check every C API status goes through.
use davi_engine::weights::model_file;
use davi_engine::weights::{LoadedModel, ModelMeta};
use davi_sdk::{DaviStatus, OperatorSpec};
use std::collections::BTreeMap;
use tch::{Device, Tensor};

/// A model file of [`ModelMeta::micro_generator`] with random weights (fixed `seed`), every
/// layer perturbed so that the output depends on the input (the official initialisation
/// zeroes the last convolutions). `window`: `restore_window` (inpainting/colorization through
/// context windows) instead of tiles.
pub fn micro_model_bytes(operator: Option<OperatorSpec>, window: Option<i64>, seed: i64) -> Vec<u8> {
    let mut meta = ModelMeta::micro_generator(operator);
    meta.restore_window = window;
    let m = LoadedModel::random(meta.clone(), Device::Cpu, seed).expect("micro model");
    tch::no_grad(|| {
        for (_, mut v) in m.vs.variables() {
            let r = v.randn_like() * 0.02;
            v.copy_(&(&v + r));
        }
    });
    let vars: BTreeMap<String, Tensor> = m.vs.variables().into_iter().collect();
    let tensors: Vec<(String, Tensor)> = vars.into_iter().collect();
    model_file::to_bytes(&meta, &tensors).expect("serialise micro model")
}

/// A status from the C API: anything but `DAVI_STATUS_PANIC` is fine. The panic boundary is a
/// last resort; an input that reaches it is a bug, so the fuzzer must stop and keep it.
pub fn no_panic(status: DaviStatus, call: &str) -> DaviStatus {
    if status == DaviStatus::Panic {
        eprintln!("{call} returned DAVI_STATUS_PANIC: a panic reached the C boundary");
        std::process::abort();
    }
    status
}

/// Reads fields of a structured fuzz input front to back; past the end every read is zero.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }
    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }
    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
    pub fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.array())
    }
    /// A length-prefixed (one byte) slice.
    pub fn short_bytes(&mut self) -> &'a [u8] {
        let n = self.u8() as usize;
        self.bytes(n)
    }
    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let n = self.data.len();
        self.bytes(n)
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
