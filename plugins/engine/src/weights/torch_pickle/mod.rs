//! A pure-Rust reader for PyTorch `.pt` checkpoint files (`torch.save` output).
//!
//! # Why
//!
//! tch's own loader only understands a flat `{name: tensor}` mapping. It cannot read the
//! `OrderedDict` that every `module.state_dict()` save produces, nor nested containers such
//! as DAVI's `{deg}_ema.pt` (`{"implicit_func_ema": {"initted", "step", "online_model.<k>",
//! "ema_model.<k>"}}`) or full training checkpoints (`{"step": int, "implicit_func": {...},
//! "opt_d": <optimizer state>, ...}`). This module reads all of those without Python and
//! without libtorch, and hands back plain bytes ([`RawTensor`]) so that it can be tested and
//! reused independently of tch.
//!
//! # What
//!
//! [`read_pt_tensors`] / [`read_pt_tensors_from_bytes`] return every tensor in the file, in
//! the order the pickle stores them, with nested containers flattened into dotted names:
//! dictionary entries contribute their key (`str`, `int`, `bool`, …, rendered as text),
//! list/tuple items their index (`"opt_d.state.0.exp_avg"`, `"list.3.0"`). A tensor at the
//! very top of the file gets the empty name. Non-tensor leaves (numbers, strings, `None`,
//! lists of non-tensors, optimizer `param_groups`) and instances of classes this reader does
//! not know (argparse `Namespace`, `torch.device`, numpy scalars, …) are skipped. Views are
//! materialised: every [`RawTensor`] owns contiguous, row-major, little-endian data that
//! honours the saved size / stride / storage offset (transposed weights, slices, tensors
//! sharing one storage, expanded tensors with stride 0).
//!
//! Two container formats are understood:
//!
//! 1. **Zip** (PyTorch >= 1.6 default): `<prefix>/data.pkl` holds the object pickle,
//!    `<prefix>/data/<key>` the raw storage bytes, `<prefix>/byteorder` the byte order
//!    (little when absent). The prefix folder (`archive/`, the file stem, …) is found by
//!    looking for a record named `data.pkl`.
//! 2. **Legacy** (`_use_new_zipfile_serialization=False`, and files from PyTorch < 1.6):
//!    consecutive pickles — the magic number `0x1950a86a20f9469cfc6c`, protocol version
//!    1001, a `sys_info` dict (with `little_endian`), the object pickle, the list of storage
//!    keys — followed, for each key in that order, by an 8-byte little-endian element count
//!    and the raw elements.
//!
//! The pickle interpreter is deliberately small and safe: it never imports or executes
//! anything. Globals are resolved to a fixed table (`collections.OrderedDict`,
//! `torch._utils._rebuild_tensor{,_v2,_v3}`, `torch._utils._rebuild_parameter{,_with_state}`,
//! `torch._tensor._rebuild_from_type_v2`, `torch.<Type>Storage`, `torch.Size`,
//! `torch.storage._load_from_bytes`, `_codecs.encode`, `builtins.set`/`bytes`/…); any other
//! global becomes an opaque value that is skipped, unless a tensor depends on it (then the
//! read fails with an error naming the global). Containers live in an arena (indices, not
//! pointers), so reference cycles and deep nesting can neither leak nor overflow the stack
//! on drop; every length field is checked against the bytes actually present, and the total
//! size of the materialised tensors is bounded by a small multiple of the input size, so a
//! corrupted file yields an error rather than a huge allocation or a panic.
//!
//! Not supported (each gives a clear error): TorchScript-only archives without tensors in
//! `data.pkl` yield no tensors; tar-format checkpoints from PyTorch < 0.4; sparse, quantized,
//! nested, complex, float8 and unsigned-16/32/64 tensors; conjugate/negative view bits;
//! out-of-band pickle buffers.
//!
//! # Layout
//!
//! This file holds the public types and the entry points; the rest is split by concern:
//! `zip_file.rs` and `legacy_file.rs` (the two containers), `arena.rs` (pickled values and
//! the arena holding their containers), `vm.rs` (the pickle interpreter: reading, stack, memo,
//! the opcode loop), `calls.rs` (what the known globals do, persistent ids, tensor rebuilds),
//! `materialise.rs` (flattening into dotted names and materialising views), `tests.rs`.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

mod arena;
mod calls;
mod legacy_file;
mod materialise;
#[cfg(test)]
mod tests;
mod vm;
mod zip_file;

use legacy_file::read_legacy;
use zip_file::read_zip;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    I8,
    U8,
    I16,
    I32,
    I64,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn element_size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// The PyTorch name without the `torch.` prefix (`"float32"`, `"bfloat16"`, `"bool"`, …).
    pub fn name(self) -> &'static str {
        match self {
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::Bool => "bool",
        }
    }

    /// `torch.FloatStorage` & co. (also `torch.cuda.*Storage` from GPU-saved legacy files).
    fn from_storage_class(name: &str) -> Option<DType> {
        Some(match name {
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "CharStorage" => DType::I8,
            "ByteStorage" | "UntypedStorage" => DType::U8,
            "ShortStorage" => DType::I16,
            "IntStorage" => DType::I32,
            "LongStorage" => DType::I64,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    /// `torch.float32` & co., as pickled by `_rebuild_tensor_v3`.
    fn from_dtype_name(name: &str) -> Option<DType> {
        Some(match name {
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::BF16,
            "float32" | "float" => DType::F32,
            "float64" | "double" => DType::F64,
            "int8" => DType::I8,
            "uint8" => DType::U8,
            "int16" | "short" => DType::I16,
            "int32" | "int" => DType::I32,
            "int64" | "long" => DType::I64,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A tensor read from a checkpoint: contiguous row-major elements, little-endian.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// `numel() * dtype.element_size()` bytes, contiguous row-major, little-endian.
    pub data: Vec<u8>,
}

impl RawTensor {
    /// Number of elements (1 for a 0-d tensor).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// All elements converted to `f32` (integers and bools by value, f64 rounded).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let es = self.dtype.element_size();
        self.data
            .chunks_exact(es)
            .map(|c| match self.dtype {
                DType::F16 => f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]])),
                DType::BF16 => f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16),
                DType::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                DType::F64 => {
                    f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                }
                DType::I8 => f32::from(c[0] as i8),
                DType::U8 => f32::from(c[0]),
                DType::I16 => f32::from(i16::from_le_bytes([c[0], c[1]])),
                DType::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32,
                DType::I64 => {
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                }
                DType::Bool => {
                    if c[0] != 0 {
                        1.0
                    } else {
                        0.0
                    }
                }
            })
            .collect()
    }
}

/// IEEE 754 binary16 -> binary32 (exact).
fn f16_bits_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            // subnormal: man * 2^-24, exactly representable in f32
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// Errors from reading a `.pt` file. Offsets are byte offsets inside the named pickle.
#[derive(Debug, thiserror::Error)]
pub enum PtError {
    /// Wraps any other error with the file it came from ([`read_pt_tensors`] only).
    #[error("{path}: {source}")]
    File {
        path: String,
        #[source]
        source: Box<PtError>,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a PyTorch checkpoint: {0}")]
    NotACheckpoint(String),
    #[error("truncated {what}: {needed} more bytes needed at offset {offset}")]
    Truncated {
        what: String,
        offset: usize,
        needed: u64,
    },
    #[error("unsupported pickle opcode 0x{opcode:02x} at offset {offset} in {record}")]
    UnsupportedOpcode {
        record: String,
        offset: usize,
        opcode: u8,
    },
    #[error("unsupported global {module}.{name} in {record}")]
    UnsupportedGlobal {
        record: String,
        module: String,
        name: String,
    },
    #[error("malformed pickle {record} at offset {offset}: {msg}")]
    Malformed {
        record: String,
        offset: usize,
        msg: String,
    },
    #[error("corrupt or truncated zip archive: {0}")]
    Zip(String),
    #[error("storage {key}: {msg}")]
    Storage { key: String, msg: String },
    #[error("tensor {name:?}: {msg}")]
    Tensor { name: String, msg: String },
    #[error("unsupported checkpoint: {0}")]
    Unsupported(String),
}

impl PtError {
    /// The underlying error, looking through [`PtError::File`].
    pub fn root_cause(&self) -> &PtError {
        match self {
            PtError::File { source, .. } => source.root_cause(),
            other => other,
        }
    }
}

type Result<T> = std::result::Result<T, PtError>;

/// Read every tensor in the file, flattening nested dicts into dotted names
/// (`"implicit_func_ema.ema_model.out.2.weight"`).
///
/// Non-tensor leaves (ints, floats, strings, lists of non-tensors, optimizer `param_groups`,
/// `None`, unknown objects) are skipped; tensors inside lists/tuples get their index as a name
/// component. Zip checkpoints are read record by record (the whole file is not loaded);
/// legacy ones are read into memory. Errors are wrapped in [`PtError::File`].
pub fn read_pt_tensors(path: &Path) -> std::result::Result<Vec<(String, RawTensor)>, PtError> {
    let wrap = |e: PtError| PtError::File {
        path: path.display().to_string(),
        source: Box::new(e),
    };
    let mut file = File::open(path).map_err(|e| wrap(e.into()))?;
    let len = file.metadata().map_err(|e| wrap(e.into()))?.len();
    let mut head = Vec::with_capacity(4);
    (&mut file)
        .take(4)
        .read_to_end(&mut head)
        .map_err(|e| wrap(e.into()))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| wrap(e.into()))?;
    if is_zip(&head) {
        read_zip(BufReader::new(file), len).map_err(wrap)
    } else {
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.read_to_end(&mut bytes).map_err(|e| wrap(e.into()))?;
        read_pt_tensors_from_bytes(&bytes).map_err(wrap)
    }
}

/// [`read_pt_tensors`] on a checkpoint already in memory.
pub fn read_pt_tensors_from_bytes(
    bytes: &[u8],
) -> std::result::Result<Vec<(String, RawTensor)>, PtError> {
    if bytes.is_empty() {
        return Err(PtError::NotACheckpoint("empty input".into()));
    }
    if is_zip(bytes) {
        return read_zip(Cursor::new(bytes), bytes.len() as u64);
    }
    if bytes[0] == 0x80 {
        return read_legacy(bytes);
    }
    if bytes.len() >= 262 && &bytes[257..262] == b"ustar" {
        return Err(PtError::Unsupported(
            "tar-format checkpoint (PyTorch < 0.4); re-save it with a recent PyTorch".into(),
        ));
    }
    let n = bytes.len().min(8);
    Err(PtError::NotACheckpoint(format!(
        "neither a zip archive nor a legacy pickle stream (starts with {:02x?})",
        &bytes[..n]
    )))
}

fn is_zip(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06")
}

/// Materialised tensors may total at most this many bytes: a few times the input (tensors
/// sharing or broadcasting one storage are materialised separately) plus some slack.
fn output_budget(input_len: u64) -> u64 {
    input_len.saturating_mul(4).saturating_add(16 << 20)
}
