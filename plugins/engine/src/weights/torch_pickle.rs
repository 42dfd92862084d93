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

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::Path;
use std::rc::Rc;

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------------
// Zip format
// ---------------------------------------------------------------------------------------------

fn read_zip<R: Read + Seek>(reader: R, input_len: u64) -> Result<Vec<(String, RawTensor)>> {
    let mut zip = zip::ZipArchive::new(reader).map_err(|e| PtError::Zip(e.to_string()))?;
    let pkl_name = zip
        .file_names()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| (n.matches('/').count(), n.len(), n.to_string()))
        .map(str::to_string)
        .ok_or_else(|| PtError::NotACheckpoint("zip archive without a data.pkl record".into()))?;
    let prefix = pkl_name[..pkl_name.len() - "data.pkl".len()].to_string();

    let big_endian = match read_zip_entry(&mut zip, &format!("{prefix}byteorder"), input_len)? {
        None => false,
        Some(b) if b.as_slice() == b"little" => false,
        Some(b) if b.as_slice() == b"big" => true,
        Some(b) => {
            return Err(PtError::Unsupported(format!(
                "unknown byte order {:?} in {prefix}byteorder",
                String::from_utf8_lossy(&b)
            )))
        }
    };
    let pkl = read_zip_entry(&mut zip, &pkl_name, input_len)?
        .ok_or_else(|| PtError::Zip(format!("cannot open {pkl_name}")))?;

    let mut arena = Arena::new(0);
    let (root, _) = run_pickle(&pkl, 0, &pkl_name, &mut arena, true)?;
    let specs = flatten(&arena, &root, pkl.len())?;
    materialise_all(
        specs,
        |key| {
            let name = format!("{prefix}data/{key}");
            match read_zip_entry(&mut zip, &name, input_len)? {
                Some(v) => Ok(Blob::Shared(Rc::new(v))),
                None => Err(PtError::Storage {
                    key: key.to_string(),
                    msg: format!("record {name} is missing from the archive"),
                }),
            }
        },
        output_budget(input_len),
        big_endian,
    )
}

/// Read one zip record, `None` if absent. Sizes are checked against the input size first.
fn read_zip_entry<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    input_len: u64,
) -> Result<Option<Vec<u8>>> {
    let entry = match zip.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(PtError::Zip(format!("{name}: {e}"))),
    };
    let size = entry.size();
    let limit = if entry.compression() == zip::CompressionMethod::Stored {
        input_len
    } else {
        // deflate cannot expand by more than ~1032x
        entry
            .compressed_size()
            .saturating_mul(1100)
            .saturating_add(1024)
    };
    if size > limit {
        return Err(PtError::Zip(format!(
            "{name} claims {size} bytes, more than the archive can hold"
        )));
    }
    let mut buf = Vec::with_capacity(size as usize);
    // one byte more than announced, so that the reader reaches its end and checks the CRC
    entry
        .take(size + 1)
        .read_to_end(&mut buf)
        .map_err(|e| PtError::Zip(format!("reading {name}: {e}")))?;
    if buf.len() as u64 != size {
        return Err(PtError::Zip(format!(
            "{name}: expected {size} bytes, got {}",
            buf.len()
        )));
    }
    Ok(Some(buf))
}

// ---------------------------------------------------------------------------------------------
// Legacy format
// ---------------------------------------------------------------------------------------------

/// `0x1950a86a20f9469cfc6c`, little-endian, as pickled with LONG1.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

struct LegacyFile<'a> {
    arena: Arena,
    root: Value,
    /// Storage key -> its raw bytes (in the file's byte order).
    records: HashMap<Rc<str>, &'a [u8]>,
    little_endian: bool,
}

fn parse_legacy(bytes: &[u8], nested: u32) -> Result<LegacyFile<'_>> {
    let mut arena = Arena::new(nested);
    let (magic, pos) = run_pickle(bytes, 0, "legacy header", &mut arena, false)
        .map_err(|e| PtError::NotACheckpoint(format!("the leading pickle is unreadable ({e})")))?;
    match &magic {
        Value::BigInt(b) if **b == LEGACY_MAGIC => {}
        _ => {
            return Err(PtError::NotACheckpoint(
                "the leading pickle is not the PyTorch magic number".into(),
            ))
        }
    }
    let (version, pos) = run_pickle(bytes, pos, "legacy protocol version", &mut arena, false)?;
    match version {
        Value::Int(LEGACY_PROTOCOL_VERSION) => {}
        other => {
            return Err(PtError::Unsupported(format!(
                "legacy protocol version {} (expected {LEGACY_PROTOCOL_VERSION})",
                other.describe()
            )))
        }
    }
    let (sys_info, pos) = run_pickle(bytes, pos, "legacy sys_info", &mut arena, false)?;
    let mut little_endian = true;
    if let Value::Dict(d) = sys_info {
        for (k, v) in &arena.dicts[d].items {
            if matches!(k, Value::Str(s) if &**s == "little_endian") {
                if let Value::Bool(b) = v {
                    little_endian = *b;
                }
            }
        }
    }
    let (root, pos) = run_pickle(bytes, pos, "legacy object pickle", &mut arena, true)?;
    let (keys, mut pos) = run_pickle(bytes, pos, "legacy storage key list", &mut arena, false)?;
    let keys: Vec<Value> = match keys {
        Value::List(i) | Value::Tuple(i) => arena.lists[i].clone(),
        other => {
            return Err(PtError::Malformed {
                record: "legacy storage key list".into(),
                offset: pos,
                msg: format!("expected a list of keys, found {}", other.describe()),
            })
        }
    };
    let mut records = HashMap::new();
    for key in keys {
        let key: Rc<str> = match key_text(&key) {
            Some(k) => k,
            None => {
                return Err(PtError::Malformed {
                    record: "legacy storage key list".into(),
                    offset: pos,
                    msg: format!("storage key is {}", key.describe()),
                })
            }
        };
        let dtype = *arena.storages.get(&key).ok_or_else(|| PtError::Storage {
            key: key.to_string(),
            msg: "listed in the storage key list but never referenced by the object pickle".into(),
        })?;
        let what = || format!("legacy storage record {key}");
        let avail = bytes.len() - pos;
        if avail < 8 {
            return Err(PtError::Truncated {
                what: what(),
                offset: pos,
                needed: (8 - avail) as u64,
            });
        }
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[pos..pos + 8]);
        let count = u64::from_le_bytes(n);
        pos += 8;
        let avail = (bytes.len() - pos) as u64;
        let nbytes = count.saturating_mul(dtype.element_size() as u64);
        if nbytes > avail {
            return Err(PtError::Truncated {
                what: what(),
                offset: pos,
                needed: nbytes - avail,
            });
        }
        let nbytes = nbytes as usize;
        records.insert(key, &bytes[pos..pos + nbytes]);
        pos += nbytes;
    }
    Ok(LegacyFile {
        arena,
        root,
        records,
        little_endian,
    })
}

fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, RawTensor)>> {
    let file = parse_legacy(bytes, 0)?;
    let specs = flatten(&file.arena, &file.root, bytes.len())?;
    let records = &file.records;
    materialise_all(
        specs,
        |key| {
            records
                .get(key)
                .map(|b| Blob::Borrowed(b))
                .ok_or_else(|| PtError::Storage {
                    key: key.to_string(),
                    msg: "no data record in the file (missing from the storage key list)".into(),
                })
        },
        output_budget(bytes.len() as u64),
        !file.little_endian,
    )
}

// ---------------------------------------------------------------------------------------------
// Values and the object arena
// ---------------------------------------------------------------------------------------------

/// A pickled value. Containers are indices into the [`Arena`], so shared references
/// and cycles behave like Python's and dropping never recurses.
#[derive(Clone, Debug)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer that does not fit i64: minimal little-endian two's complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    List(usize),
    Tuple(usize),
    Dict(usize),
    /// A class or function reference (module normalised to Python 3 names).
    Global(Rc<Global>),
    /// An instance of something we do not model; skipped when flattening.
    Object(Rc<str>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorSpec>),
}

impl Value {
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::BigInt(_) => "a big int".into(),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) => format!("str {:?}", truncate_chars(s, 40)),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::List(_) => "a list".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(g) => format!("global {}.{}", g.module, g.name),
            Value::Object(c) => format!("an instance of {c}"),
            Value::Storage(_) => "a storage".into(),
            Value::Tensor(_) => "a tensor".into(),
        }
    }
}

fn truncate_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[derive(Debug)]
struct Global {
    module: String,
    name: String,
}

#[derive(Debug)]
enum StorageData {
    /// Data lives in the file under this key (zip record `data/<key>` or legacy record).
    Key(Rc<str>),
    /// Data came with the pickle itself (`torch.storage._load_from_bytes`), little-endian.
    Inline(Rc<Vec<u8>>),
}

#[derive(Debug)]
struct StorageRef {
    dtype: DType,
    data: StorageData,
    /// Legacy storage views: byte range inside the underlying record.
    byte_offset: usize,
    byte_len: Option<usize>,
}

#[derive(Debug)]
struct TensorSpec {
    storage: Rc<StorageRef>,
    dtype: DType,
    /// In elements of `dtype`.
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

#[derive(Hash, PartialEq, Eq, Debug)]
enum DictKey {
    Str(Rc<str>),
    Int(i64),
}

/// An insertion-ordered dict; str/int/bool keys replace earlier equal keys like Python's.
#[derive(Default, Debug)]
struct Dict {
    items: Vec<(Value, Value)>,
    index: HashMap<DictKey, usize>,
}

impl Dict {
    fn insert(&mut self, k: Value, v: Value) {
        let dk = match &k {
            Value::Str(s) => Some(DictKey::Str(s.clone())),
            Value::Int(i) => Some(DictKey::Int(*i)),
            Value::Bool(b) => Some(DictKey::Int(i64::from(*b))),
            _ => None,
        };
        if let Some(dk) = dk {
            if let Some(&i) = self.index.get(&dk) {
                self.items[i].1 = v;
                return;
            }
            self.index.insert(dk, self.items.len());
        }
        self.items.push((k, v));
    }
}

/// The object arena of one checkpoint, shared by all its pickles: every list, tuple and dict
/// the pickles build (values refer to them by index), and the element type each storage key
/// was declared with.
struct Arena {
    lists: Vec<Vec<Value>>,
    dicts: Vec<Dict>,
    storages: HashMap<Rc<str>, DType>,
    /// How many `torch.storage._load_from_bytes` levels deep this file is.
    nested: u32,
}

const MAX_NESTED_LOADS: u32 = 2;
const MAX_CALL_DEPTH: u32 = 8;
const MAX_NAME_DEPTH: usize = 100;

impl Arena {
    fn new(nested: u32) -> Self {
        Arena {
            lists: Vec::new(),
            dicts: Vec::new(),
            storages: HashMap::new(),
            nested,
        }
    }

    fn new_list(&mut self, items: Vec<Value>) -> usize {
        self.lists.push(items);
        self.lists.len() - 1
    }

    fn new_dict(&mut self) -> usize {
        self.dicts.push(Dict::default());
        self.dicts.len() - 1
    }
}

/// Text form of a storage key or dict key.
fn key_text(v: &Value) -> Option<Rc<str>> {
    match v {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string().into()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The pickle interpreter
// ---------------------------------------------------------------------------------------------

/// Run one pickle starting at `start`; returns the value and the offset just past STOP.
fn run_pickle(
    data: &[u8],
    start: usize,
    record: &str,
    arena: &mut Arena,
    allow_persistent: bool,
) -> Result<(Value, usize)> {
    let vm = Vm {
        data,
        pos: start,
        record,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        arena,
        allow_persistent,
        call_depth: 0,
        copy_budget: (data.len() - start.min(data.len()))
            .saturating_mul(16)
            .saturating_add(1 << 16),
    };
    vm.run()
}

struct Vm<'d, 'h> {
    data: &'d [u8],
    pos: usize,
    record: &'d str,
    stack: Vec<Value>,
    /// Stack heights at each MARK (Python's metastack).
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    arena: &'h mut Arena,
    allow_persistent: bool,
    call_depth: u32,
    /// How many more values may be copied out of existing containers (call arguments,
    /// `list(x)`, `OrderedDict(x)`, …): bounds the work a small pickle can cause by reusing
    /// one large memoised container many times.
    copy_budget: usize,
}

impl<'d> Vm<'d, '_> {
    // --- errors ---

    fn malformed(&self, offset: usize, msg: impl Into<String>) -> PtError {
        PtError::Malformed {
            record: self.record.to_string(),
            offset,
            msg: msg.into(),
        }
    }

    fn charge(&mut self, at: usize, n: usize) -> Result<()> {
        if n > self.copy_budget {
            return Err(self.malformed(
                at,
                "containers are copied far more often than a checkpoint needs (corrupt?)",
            ));
        }
        self.copy_budget -= n;
        Ok(())
    }

    /// The items of list/tuple `i`, charged to the copy budget.
    fn list_items(&mut self, at: usize, i: usize) -> Result<Vec<Value>> {
        self.charge(at, self.arena.lists[i].len())?;
        Ok(self.arena.lists[i].clone())
    }

    // --- reading the opcode stream ---

    fn take(&mut self, n: usize) -> Result<&'d [u8]> {
        let avail = self.data.len() - self.pos;
        if n > avail {
            return Err(PtError::Truncated {
                what: format!("pickle {}", self.record),
                offset: self.pos,
                needed: (n - avail) as u64,
            });
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn take_len(&mut self, n: u64) -> Result<&'d [u8]> {
        let avail = (self.data.len() - self.pos) as u64;
        if n > avail {
            return Err(PtError::Truncated {
                what: format!("pickle {}", self.record),
                offset: self.pos,
                needed: n - avail,
            });
        }
        self.take(n as usize)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A text argument terminated by `\n` (protocol 0 opcodes, GLOBAL).
    fn line(&mut self) -> Result<&'d [u8]> {
        let rest = &self.data[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(PtError::Truncated {
                what: format!("pickle {} (unterminated text argument)", self.record),
                offset: self.pos,
                needed: 1,
            }),
        }
    }

    fn line_str(&mut self, at: usize) -> Result<&'d str> {
        let l = self.line()?;
        std::str::from_utf8(l).map_err(|_| self.malformed(at, "text argument is not UTF-8"))
    }

    // --- the stack ---

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, at: usize) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.malformed(at, "stack underflow"));
        }
        Ok(self.stack.pop().unwrap_or(Value::None))
    }

    fn pop_n(&mut self, n: usize, at: usize) -> Result<Vec<Value>> {
        if self.stack.len() < self.floor() + n {
            return Err(self.malformed(at, "stack underflow"));
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn pop_mark(&mut self, at: usize) -> Result<Vec<Value>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| self.malformed(at, "no MARK on the stack"))?;
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn top(&self, at: usize) -> Result<&Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.malformed(at, "stack underflow"));
        }
        self.stack
            .last()
            .ok_or_else(|| self.malformed(at, "stack underflow"))
    }

    fn push_list(&mut self, items: Vec<Value>) {
        let i = self.arena.new_list(items);
        self.stack.push(Value::List(i));
    }

    fn push_tuple(&mut self, items: Vec<Value>) {
        let i = self.arena.new_list(items);
        self.stack.push(Value::Tuple(i));
    }

    fn memoize(&mut self, key: u64, at: usize) -> Result<()> {
        let v = self.top(at)?.clone();
        self.memo.insert(key, v);
        Ok(())
    }

    fn memo_get(&mut self, key: u64, at: usize) -> Result<()> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| self.malformed(at, format!("memo key {key} is not defined")))?;
        self.stack.push(v);
        Ok(())
    }

    fn append(&mut self, at: usize, items: Vec<Value>) -> Result<()> {
        match self.top(at)? {
            Value::List(i) => {
                let i = *i;
                self.arena.lists[i].extend(items);
                Ok(())
            }
            // a list-like object we do not model: Python would call its append/extend
            Value::Object(_) => Ok(()),
            other => Err(self.malformed(at, format!("cannot append to {}", other.describe()))),
        }
    }

    fn set_items(&mut self, at: usize, flat: Vec<Value>) -> Result<()> {
        if flat.len() % 2 != 0 {
            return Err(self.malformed(at, "odd number of items for SETITEMS"));
        }
        match self.top(at)? {
            Value::Dict(d) => {
                let d = *d;
                let mut it = flat.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    self.arena.dicts[d].insert(k, v);
                }
                Ok(())
            }
            Value::Object(_) => Ok(()),
            other => Err(self.malformed(at, format!("cannot set items on {}", other.describe()))),
        }
    }

    fn push_long(&mut self, bytes: &[u8]) {
        self.stack.push(long_from_le(bytes));
    }

    fn global(module: &str, name: &str) -> Value {
        let module = match module {
            "__builtin__" => "builtins",
            "copy_reg" => "copyreg",
            m => m,
        };
        Value::Global(Rc::new(Global {
            module: module.to_string(),
            name: name.to_string(),
        }))
    }

    // --- the main loop ---

    fn run(mut self) -> Result<(Value, usize)> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                // PROTO
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(self.malformed(at, format!("pickle protocol {v} (> 5)")));
                    }
                }
                // FRAME: only a buffering hint
                0x95 => {
                    self.u64()?;
                }
                // STOP
                b'.' => {
                    let v = self.pop(at)?;
                    return Ok((v, self.pos));
                }
                // MARK
                b'(' => self.marks.push(self.stack.len()),
                // EMPTY_DICT
                b'}' => {
                    let d = self.arena.new_dict();
                    self.stack.push(Value::Dict(d));
                }
                // EMPTY_LIST, EMPTY_SET (sets are kept as lists)
                b']' | 0x8f => self.push_list(Vec::new()),
                // EMPTY_TUPLE
                b')' => self.push_tuple(Vec::new()),
                // TUPLE
                b't' => {
                    let items = self.pop_mark(at)?;
                    self.push_tuple(items);
                }
                // TUPLE1, TUPLE2, TUPLE3
                0x85..=0x87 => {
                    let items = self.pop_n(usize::from(op - 0x84), at)?;
                    self.push_tuple(items);
                }
                // LIST, FROZENSET
                b'l' | 0x91 => {
                    let items = self.pop_mark(at)?;
                    self.push_list(items);
                }
                // DICT
                b'd' => {
                    let items = self.pop_mark(at)?;
                    if items.len() % 2 != 0 {
                        return Err(self.malformed(at, "odd number of items for DICT"));
                    }
                    let d = self.arena.new_dict();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        self.arena.dicts[d].insert(k, v);
                    }
                    self.stack.push(Value::Dict(d));
                }
                // APPEND
                b'a' => {
                    let v = self.pop(at)?;
                    self.append(at, vec![v])?;
                }
                // APPENDS, ADDITEMS
                b'e' | 0x90 => {
                    let items = self.pop_mark(at)?;
                    self.append(at, items)?;
                }
                // SETITEM
                b's' => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    self.set_items(at, vec![k, v])?;
                }
                // SETITEMS
                b'u' => {
                    let items = self.pop_mark(at)?;
                    self.set_items(at, items)?;
                }
                // BININT, BININT1, BININT2
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(i64::from(v)));
                }
                // LONG1, LONG4
                0x8a => {
                    let n = self.u8()?;
                    let b = self.take(usize::from(n))?;
                    self.push_long(b);
                }
                0x8b => {
                    let n = self.u32()? as i32;
                    if n < 0 {
                        return Err(self.malformed(at, "negative LONG4 length"));
                    }
                    let b = self.take_len(n as u64)?;
                    self.push_long(b);
                }
                // INT, LONG (protocol 0 text)
                b'I' | b'L' => {
                    let s = self.line_str(at)?;
                    let v = match s {
                        "00" if op == b'I' => Value::Bool(false),
                        "01" if op == b'I' => Value::Bool(true),
                        _ => {
                            let t = s.strip_suffix('L').unwrap_or(s);
                            Value::Int(t.parse::<i64>().map_err(|_| {
                                self.malformed(at, format!("bad integer literal {s:?}"))
                            })?)
                        }
                    };
                    self.stack.push(v);
                }
                // FLOAT (text)
                b'F' => {
                    let s = self.line_str(at)?;
                    let v = s
                        .trim()
                        .parse::<f64>()
                        .map_err(|_| self.malformed(at, format!("bad float literal {s:?}")))?;
                    self.stack.push(Value::Float(v));
                }
                // BINFLOAT (big-endian)
                b'G' => {
                    let b = self.take(8)?;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    self.stack.push(Value::Float(f64::from_be_bytes(a)));
                }
                // NEWTRUE, NEWFALSE, NONE
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'N' => self.stack.push(Value::None),
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8; SHORT_BINSTRING, BINSTRING
                b'X' | 0x8c | 0x8d | b'U' | b'T' => {
                    let n = match op {
                        b'X' => u64::from(self.u32()?),
                        0x8c | b'U' => u64::from(self.u8()?),
                        b'T' => {
                            let n = self.u32()? as i32;
                            if n < 0 {
                                return Err(self.malformed(at, "negative BINSTRING length"));
                            }
                            n as u64
                        }
                        _ => self.u64()?,
                    };
                    let b = self.take_len(n)?;
                    let s: Rc<str> = String::from_utf8_lossy(b).into();
                    self.stack.push(Value::Str(s));
                }
                // SHORT_BINBYTES, BINBYTES, BINBYTES8, BYTEARRAY8
                b'C' | b'B' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => u64::from(self.u8()?),
                        b'B' => u64::from(self.u32()?),
                        _ => self.u64()?,
                    };
                    let b = self.take_len(n)?;
                    self.stack.push(Value::Bytes(b.into()));
                }
                // BINPUT, LONG_BINPUT, MEMOIZE, PUT
                b'q' => {
                    let k = self.u8()?;
                    self.memoize(u64::from(k), at)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memoize(u64::from(k), at)?;
                }
                0x94 => {
                    let k = self.memo.len() as u64;
                    self.memoize(k, at)?;
                }
                b'p' => {
                    let s = self.line_str(at)?;
                    let k = s
                        .parse::<u64>()
                        .map_err(|_| self.malformed(at, format!("bad memo key {s:?}")))?;
                    self.memoize(k, at)?;
                }
                // BINGET, LONG_BINGET, GET
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(u64::from(k), at)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(u64::from(k), at)?;
                }
                b'g' => {
                    let s = self.line_str(at)?;
                    let k = s
                        .parse::<u64>()
                        .map_err(|_| self.malformed(at, format!("bad memo key {s:?}")))?;
                    self.memo_get(k, at)?;
                }
                // GLOBAL
                b'c' => {
                    let module = self.line_str(at)?;
                    let name = self.line_str(at)?;
                    self.stack.push(Self::global(module, name));
                }
                // STACK_GLOBAL
                0x93 => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = Self::global(m, n);
                            self.stack.push(g);
                        }
                        _ => return Err(self.malformed(at, "STACK_GLOBAL needs two strings")),
                    }
                }
                // REDUCE
                b'R' => {
                    let args = self.pop(at)?;
                    let func = self.pop(at)?;
                    let v = self.call(at, func, args)?;
                    self.stack.push(v);
                }
                // NEWOBJ, NEWOBJ_EX
                0x81 | 0x92 => {
                    if op == 0x92 {
                        self.pop(at)?; // kwargs
                    }
                    let args = self.pop(at)?;
                    let cls = self.pop(at)?;
                    let v = self.new_object(at, cls, args)?;
                    self.stack.push(v);
                }
                // BUILD: set an object's state; irrelevant for everything we model
                // (e.g. the `_metadata` attribute of a state-dict OrderedDict)
                b'b' => {
                    self.pop(at)?;
                    self.top(at)?;
                }
                // BINPERSID
                b'Q' => {
                    let pid = self.pop(at)?;
                    let v = self.persistent_load(at, pid)?;
                    self.stack.push(v);
                }
                // POP
                b'0' => {
                    if self.stack.len() > self.floor() {
                        self.stack.pop();
                    } else if self.marks.pop().is_none() {
                        return Err(self.malformed(at, "POP on an empty stack"));
                    }
                }
                // POP_MARK
                b'1' => {
                    self.pop_mark(at)?;
                }
                // DUP
                b'2' => {
                    let v = self.top(at)?.clone();
                    self.stack.push(v);
                }
                _ => {
                    return Err(PtError::UnsupportedOpcode {
                        record: self.record.to_string(),
                        offset: at,
                        opcode: op,
                    })
                }
            }
        }
    }

    // --- persistent ids: storages ---

    fn persistent_load(&mut self, at: usize, pid: Value) -> Result<Value> {
        if !self.allow_persistent {
            return Err(self.malformed(at, "persistent id outside the object pickle"));
        }
        let items = match pid {
            Value::Tuple(i) | Value::List(i) => self.list_items(at, i)?,
            other => {
                return Err(self.malformed(
                    at,
                    format!("persistent id is {}, expected a tuple", other.describe()),
                ))
            }
        };
        let kind = items.first().and_then(key_text);
        match kind.as_deref() {
            // a whole nn.Module saved with its source: treated like any unknown object
            Some("module") => Ok(Value::Object("torch.nn.Module".into())),
            Some("storage") if items.len() >= 5 => {
                let dtype = match &items[1] {
                    Value::Global(g) if g.module == "torch" || g.module == "torch.cuda" => {
                        DType::from_storage_class(&g.name).ok_or_else(|| {
                            PtError::UnsupportedGlobal {
                                record: self.record.to_string(),
                                module: g.module.clone(),
                                name: g.name.clone(),
                            }
                        })?
                    }
                    Value::Global(g) => {
                        return Err(PtError::UnsupportedGlobal {
                            record: self.record.to_string(),
                            module: g.module.clone(),
                            name: g.name.clone(),
                        })
                    }
                    other => {
                        return Err(
                            self.malformed(at, format!("storage type is {}", other.describe()))
                        )
                    }
                };
                let key = key_text(&items[2]).ok_or_else(|| {
                    self.malformed(at, format!("storage key is {}", items[2].describe()))
                })?;
                self.arena.storages.entry(key.clone()).or_insert(dtype);
                let es = dtype.element_size();
                let (byte_offset, byte_len) = match items.get(5) {
                    None | Some(Value::None) => (0, None),
                    Some(Value::Tuple(i)) | Some(Value::List(i)) => {
                        // legacy storage view: (view_key, offset, size), in elements
                        let v = &self.arena.lists[*i];
                        let num = |x: Option<&Value>| match x {
                            Some(Value::Int(n)) if *n >= 0 => usize::try_from(*n).ok(),
                            _ => None,
                        };
                        match (num(v.get(1)), num(v.get(2))) {
                            (Some(o), Some(n)) => {
                                let bo = o.checked_mul(es);
                                let bl = n.checked_mul(es);
                                match (bo, bl) {
                                    (Some(bo), Some(bl)) => (bo, Some(bl)),
                                    _ => return Err(self.malformed(at, "storage view too large")),
                                }
                            }
                            _ => return Err(self.malformed(at, "bad storage view metadata")),
                        }
                    }
                    Some(other) => {
                        return Err(self.malformed(
                            at,
                            format!("storage view metadata is {}", other.describe()),
                        ))
                    }
                };
                Ok(Value::Storage(Rc::new(StorageRef {
                    dtype,
                    data: StorageData::Key(key),
                    byte_offset,
                    byte_len,
                })))
            }
            _ => Err(self.malformed(at, "unrecognised persistent id (expected ('storage', ...))")),
        }
    }

    // --- calling globals ---

    fn items_of(&mut self, at: usize, v: &Value, what: &str) -> Result<Vec<Value>> {
        match v {
            Value::Tuple(i) | Value::List(i) => self.list_items(at, *i),
            other => Err(self.malformed(
                at,
                format!("{what} must be a tuple, found {}", other.describe()),
            )),
        }
    }

    fn new_object(&mut self, at: usize, cls: Value, args: Value) -> Result<Value> {
        match &cls {
            Value::Global(g) => {
                let args = self.items_of(at, &args, "NEWOBJ arguments")?;
                match (g.module.as_str(), g.name.as_str()) {
                    ("collections", "OrderedDict")
                    | ("builtins", "dict")
                    | ("collections", "defaultdict")
                    | ("builtins", "set")
                    | ("builtins", "frozenset")
                    | ("builtins", "list")
                    | ("torch", "Size") => self.call_global(at, &g.clone(), args),
                    _ => Ok(Value::Object(format!("{}.{}", g.module, g.name).into())),
                }
            }
            other => Err(self.malformed(
                at,
                format!("NEWOBJ on {}, expected a class", other.describe()),
            )),
        }
    }

    fn call(&mut self, at: usize, func: Value, args: Value) -> Result<Value> {
        match &func {
            Value::Global(g) => {
                let args = self.items_of(at, &args, "REDUCE arguments")?;
                self.call_global(at, &g.clone(), args)
            }
            // calling something opaque (e.g. a method of an unknown object): opaque result
            Value::Object(c) => Ok(Value::Object(c.clone())),
            other => Err(self.malformed(at, format!("cannot call {}", other.describe()))),
        }
    }

    fn call_global(&mut self, at: usize, g: &Global, args: Vec<Value>) -> Result<Value> {
        let unsupported = || PtError::UnsupportedGlobal {
            record: self.record.to_string(),
            module: g.module.clone(),
            name: g.name.clone(),
        };
        match (g.module.as_str(), g.name.as_str()) {
            ("collections", "OrderedDict") | ("builtins", "dict") => {
                let d = self.arena.new_dict();
                match args.first() {
                    Some(Value::Dict(src)) => {
                        self.charge(at, self.arena.dicts[*src].items.len())?;
                        let items: Vec<_> = self.arena.dicts[*src].items.clone();
                        for (k, v) in items {
                            self.arena.dicts[d].insert(k, v);
                        }
                    }
                    Some(Value::List(src)) | Some(Value::Tuple(src)) => {
                        for pair in self.list_items(at, *src)? {
                            if let Value::Tuple(p) | Value::List(p) = pair {
                                if let [k, v] = &self.arena.lists[p][..] {
                                    let (k, v) = (k.clone(), v.clone());
                                    self.arena.dicts[d].insert(k, v);
                                }
                            }
                        }
                    }
                    _ => {}
                }
                Ok(Value::Dict(d))
            }
            ("collections", "defaultdict") => Ok(Value::Dict(self.arena.new_dict())),
            ("builtins", "set") | ("builtins", "frozenset") | ("builtins", "list") => {
                let items = match args.first() {
                    Some(Value::List(i)) | Some(Value::Tuple(i)) => self.list_items(at, *i)?,
                    _ => Vec::new(),
                };
                Ok(Value::List(self.arena.new_list(items)))
            }
            ("torch", "Size") | ("builtins", "tuple") => {
                let items = match args.first() {
                    Some(Value::List(i)) | Some(Value::Tuple(i)) => self.list_items(at, *i)?,
                    _ => Vec::new(),
                };
                Ok(Value::Tuple(self.arena.new_list(items)))
            }
            ("builtins", "bytes") | ("builtins", "bytearray") => match args.as_slice() {
                [] => Ok(Value::Bytes(Rc::from(Vec::new()))),
                [Value::Bytes(b)] => Ok(Value::Bytes(b.clone())),
                [Value::List(i)] => {
                    self.charge(at, self.arena.lists[*i].len())?;
                    let mut out = Vec::new();
                    for v in &self.arena.lists[*i] {
                        match v {
                            Value::Int(n) if (0..=255).contains(n) => out.push(*n as u8),
                            _ => return Err(self.malformed(at, "bytes() of a non-byte list")),
                        }
                    }
                    Ok(Value::Bytes(out.into()))
                }
                [Value::Str(s), Value::Str(enc)] => Ok(Value::Bytes(self.encode(at, s, enc)?)),
                _ => Ok(Value::Object("builtins.bytes".into())),
            },
            // how protocol 2 pickles `bytes` objects: _codecs.encode(str, "latin1")
            ("_codecs", "encode") => match args.as_slice() {
                [Value::Str(s), Value::Str(enc)] => Ok(Value::Bytes(self.encode(at, s, enc)?)),
                [Value::Str(s)] => Ok(Value::Bytes(self.encode(at, s, "utf-8")?)),
                _ => Err(self.malformed(at, "bad _codecs.encode arguments")),
            },
            ("torch._utils", "_rebuild_tensor") => self.rebuild_tensor(at, &args, 1),
            ("torch._utils", "_rebuild_tensor_v2") => self.rebuild_tensor(at, &args, 2),
            ("torch._utils", "_rebuild_tensor_v3") => self.rebuild_tensor(at, &args, 3),
            ("torch._utils", "_rebuild_parameter")
            | ("torch._utils", "_rebuild_parameter_with_state") => args
                .into_iter()
                .next()
                .ok_or_else(|| self.malformed(at, "_rebuild_parameter without data")),
            ("torch._tensor", "_rebuild_from_type_v2")
            | ("torch._utils", "_rebuild_from_type_v2")
            | ("torch._tensor", "_rebuild_from_type")
            | ("torch._utils", "_rebuild_from_type") => {
                // (func, new_type, args, state): the subclass type and state do not matter
                if args.len() < 3 {
                    return Err(self.malformed(at, "_rebuild_from_type needs (func, type, args)"));
                }
                if self.call_depth >= MAX_CALL_DEPTH {
                    return Err(self.malformed(at, "_rebuild_from_type nested too deeply"));
                }
                self.call_depth += 1;
                let r = self.call(at, args[0].clone(), args[2].clone());
                self.call_depth -= 1;
                r
            }
            ("torch.storage", "_load_from_bytes") => self.load_from_bytes(at, &args),
            (m, n) if (m == "torch" || m.starts_with("torch.")) && n.starts_with("_rebuild") => {
                // sparse, quantized, nested, meta, numpy-backed, wrapper-subclass tensors …
                Err(unsupported())
            }
            (m, n) => Ok(Value::Object(format!("{m}.{n}").into())),
        }
    }

    fn encode(&mut self, at: usize, s: &str, encoding: &str) -> Result<Rc<[u8]>> {
        self.charge(at, s.len())?;
        encode(s, encoding)
            .ok_or_else(|| self.malformed(at, format!("cannot encode a string with {encoding:?}")))
    }

    fn usize_of(&self, at: usize, v: &Value, what: &str) -> Result<usize> {
        match v {
            Value::Int(n) if *n >= 0 => {
                usize::try_from(*n).map_err(|_| self.malformed(at, format!("{what} {n} too large")))
            }
            other => Err(self.malformed(
                at,
                format!(
                    "{what} must be a non-negative int, found {}",
                    other.describe()
                ),
            )),
        }
    }

    fn usize_list(&mut self, at: usize, v: &Value, what: &str) -> Result<Vec<usize>> {
        let items = self.items_of(at, v, what)?;
        items.iter().map(|x| self.usize_of(at, x, what)).collect()
    }

    /// `_rebuild_tensor(storage, offset, size, stride)`, `_v2(…, requires_grad, hooks[,
    /// metadata])`, `_v3(…, requires_grad, hooks, dtype[, metadata])`.
    fn rebuild_tensor(&mut self, at: usize, args: &[Value], version: u8) -> Result<Value> {
        let need = match version {
            1 => 4,
            2 => 6,
            _ => 7,
        };
        if args.len() < need {
            return Err(self.malformed(
                at,
                format!("_rebuild_tensor_v{version} with {} arguments", args.len()),
            ));
        }
        let storage = match &args[0] {
            Value::Storage(s) => s.clone(),
            other => {
                return Err(self.malformed(
                    at,
                    format!(
                        "tensor storage argument is {}, not a storage",
                        other.describe()
                    ),
                ))
            }
        };
        let offset = self.usize_of(at, &args[1], "storage offset")?;
        let size = self.usize_list(at, &args[2], "tensor size")?;
        let stride = self.usize_list(at, &args[3], "tensor stride")?;
        if size.len() != stride.len() {
            return Err(self.malformed(at, "tensor size and stride differ in length"));
        }
        let dtype = if version == 3 {
            match &args[6] {
                Value::Global(g) if g.module == "torch" => DType::from_dtype_name(&g.name)
                    .ok_or_else(|| PtError::UnsupportedGlobal {
                        record: self.record.to_string(),
                        module: g.module.clone(),
                        name: g.name.clone(),
                    })?,
                other => {
                    return Err(self
                        .malformed(at, format!("tensor dtype argument is {}", other.describe())))
                }
            }
        } else {
            storage.dtype
        };
        let metadata = match version {
            2 => args.get(6),
            3 => args.get(7),
            _ => None,
        };
        if let Some(Value::Dict(d)) = metadata {
            for (k, v) in &self.arena.dicts[*d].items {
                if matches!(v, Value::Bool(true)) {
                    return Err(self.malformed(
                        at,
                        format!(
                            "tensor metadata {} is set (conjugate/negative views unsupported)",
                            k.describe()
                        ),
                    ));
                }
            }
        }
        Ok(Value::Tensor(Rc::new(TensorSpec {
            storage,
            dtype,
            offset,
            size,
            stride,
        })))
    }

    /// `torch.storage._load_from_bytes(b)`: `b` is itself a legacy `torch.save` of a storage.
    fn load_from_bytes(&mut self, at: usize, args: &[Value]) -> Result<Value> {
        let bytes = match args.first() {
            Some(Value::Bytes(b)) => b.clone(),
            _ => return Err(self.malformed(at, "_load_from_bytes needs a bytes argument")),
        };
        self.charge(at, bytes.len())?;
        if self.arena.nested >= MAX_NESTED_LOADS {
            return Err(self.malformed(at, "torch.storage._load_from_bytes nested too deeply"));
        }
        let inner = parse_legacy(&bytes, self.arena.nested + 1)
            .map_err(|e| self.malformed(at, format!("embedded storage (_load_from_bytes): {e}")))?;
        let storage = match &inner.root {
            Value::Storage(s) => s.clone(),
            other => {
                return Err(self.malformed(
                    at,
                    format!(
                        "_load_from_bytes payload is {}, not a storage",
                        other.describe()
                    ),
                ))
            }
        };
        let key = match &storage.data {
            StorageData::Key(k) => k.clone(),
            StorageData::Inline(_) => return Ok(Value::Storage(storage)),
        };
        let record = inner
            .records
            .get(&key)
            .ok_or_else(|| self.malformed(at, "_load_from_bytes payload has no data record"))?;
        let end = storage
            .byte_len
            .map_or(Some(record.len()), |l| storage.byte_offset.checked_add(l));
        let slice = match end {
            Some(end) if storage.byte_offset <= end && end <= record.len() => {
                &record[storage.byte_offset..end]
            }
            _ => return Err(self.malformed(at, "_load_from_bytes view outside its record")),
        };
        let mut data = slice.to_vec();
        if !inner.little_endian {
            swap_bytes(&mut data, storage.dtype.element_size());
        }
        Ok(Value::Storage(Rc::new(StorageRef {
            dtype: storage.dtype,
            data: StorageData::Inline(Rc::new(data)),
            byte_offset: 0,
            byte_len: None,
        })))
    }
}

/// Python `int.from_bytes(b, "little", signed=True)`, normalised.
fn long_from_le(bytes: &[u8]) -> Value {
    let Some(&last) = bytes.last() else {
        return Value::Int(0);
    };
    let neg = last & 0x80 != 0;
    let fill = if neg { 0xff } else { 0x00 };
    let mut n = bytes.len();
    while n > 1 && bytes[n - 1] == fill && ((bytes[n - 2] & 0x80 != 0) == neg) {
        n -= 1;
    }
    if n <= 8 {
        let mut a = [fill; 8];
        a[..n].copy_from_slice(&bytes[..n]);
        Value::Int(i64::from_le_bytes(a))
    } else {
        Value::BigInt(bytes[..n].into())
    }
}

fn encode(s: &str, encoding: &str) -> Option<Rc<[u8]>> {
    match encoding.to_ascii_lowercase().replace('_', "-").as_str() {
        "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" => s
            .chars()
            .map(|c| u8::try_from(u32::from(c)).ok())
            .collect::<Option<Vec<u8>>>()
            .map(Into::into),
        "utf-8" | "utf8" | "ascii" => Some(s.as_bytes().into()),
        _ => None,
    }
}

fn swap_bytes(data: &mut [u8], element_size: usize) {
    if element_size > 1 {
        for c in data.chunks_exact_mut(element_size) {
            c.reverse();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Flattening and materialisation
// ---------------------------------------------------------------------------------------------

struct Flattener<'h> {
    arena: &'h Arena,
    out: Vec<(String, Rc<TensorSpec>)>,
    visits: usize,
    max_visits: usize,
}

/// Collect `(dotted name, tensor)` pairs in pickle order. The number of visited nodes is
/// bounded by the pickle size (plus slack), so heavily shared sub-structures cannot blow up.
fn flatten(arena: &Arena, root: &Value, pickle_len: usize) -> Result<Vec<(String, Rc<TensorSpec>)>> {
    let mut f = Flattener {
        arena,
        out: Vec::new(),
        visits: 0,
        max_visits: pickle_len.saturating_mul(4).saturating_add(1024),
    };
    let mut name = String::new();
    f.walk(root, &mut name, 0)?;
    Ok(f.out)
}

impl Flattener<'_> {
    fn walk(&mut self, v: &Value, name: &mut String, depth: usize) -> Result<()> {
        self.visits += 1;
        if self.visits > self.max_visits {
            return Err(PtError::Malformed {
                record: "object tree".into(),
                offset: 0,
                msg: "too many shared references to walk".into(),
            });
        }
        if depth > MAX_NAME_DEPTH {
            return Err(PtError::Malformed {
                record: "object tree".into(),
                offset: 0,
                msg: format!("containers nested deeper than {MAX_NAME_DEPTH} levels at {name:?}"),
            });
        }
        let arena = self.arena;
        match v {
            Value::Tensor(t) => self.out.push((name.clone(), t.clone())),
            Value::Dict(d) => {
                for (k, val) in &arena.dicts[*d].items {
                    let len = name.len();
                    push_component(name, &dict_key_name(arena, k));
                    self.walk(val, name, depth + 1)?;
                    name.truncate(len);
                }
            }
            Value::List(l) | Value::Tuple(l) => {
                for (i, val) in arena.lists[*l].iter().enumerate() {
                    let len = name.len();
                    push_component(name, &i.to_string());
                    self.walk(val, name, depth + 1)?;
                    name.truncate(len);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

fn push_component(name: &mut String, part: &str) {
    if !name.is_empty() {
        name.push('.');
    }
    name.push_str(part);
}

/// Python-ish `str(key)`.
fn dict_key_name(arena: &Arena, k: &Value) -> String {
    match k {
        Value::Str(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::None => "None".into(),
        Value::Float(f) => format!("{f:?}"),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Tuple(i) => {
            let parts: Vec<String> = arena.lists[*i]
                .iter()
                .map(|x| match x {
                    Value::Tuple(_) | Value::List(_) | Value::Dict(_) => x.describe(),
                    other => dict_key_name(arena, other),
                })
                .collect();
            format!("({})", parts.join(", "))
        }
        other => other.describe(),
    }
}

/// Storage bytes: borrowed from an in-memory file or owned (read from a zip record).
#[derive(Clone)]
enum Blob<'a> {
    Borrowed(&'a [u8]),
    Shared(Rc<Vec<u8>>),
}

impl Blob<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Blob::Borrowed(b) => b,
            Blob::Shared(v) => v,
        }
    }
}

/// Materialise every tensor; each storage record is fetched once and released after its
/// last user.
fn materialise_all<'a, F>(
    specs: Vec<(String, Rc<TensorSpec>)>,
    mut fetch: F,
    budget: u64,
    big_endian: bool,
) -> Result<Vec<(String, RawTensor)>>
where
    F: FnMut(&str) -> Result<Blob<'a>>,
{
    let mut uses: HashMap<Rc<str>, usize> = HashMap::new();
    for (_, s) in &specs {
        if let StorageData::Key(k) = &s.storage.data {
            *uses.entry(k.clone()).or_insert(0) += 1;
        }
    }
    let mut cache: HashMap<Rc<str>, Blob<'a>> = HashMap::new();
    let mut total: u64 = 0;
    let mut out = Vec::with_capacity(specs.len());
    for (name, spec) in specs {
        let blob = match &spec.storage.data {
            StorageData::Inline(v) => Blob::Shared(v.clone()),
            StorageData::Key(k) => {
                let blob = match cache.get(k) {
                    Some(b) => b.clone(),
                    None => {
                        let b = fetch(k)?;
                        cache.insert(k.clone(), b.clone());
                        b
                    }
                };
                if let Some(n) = uses.get_mut(k) {
                    *n -= 1;
                    if *n == 0 {
                        cache.remove(k);
                    }
                }
                blob
            }
        };
        let mut t = materialise(&name, &spec, blob.bytes(), budget, &mut total)?;
        // the zip path is little-endian already unless the archive said otherwise
        if big_endian && !matches!(spec.storage.data, StorageData::Inline(_)) {
            swap_bytes(&mut t.data, t.dtype.element_size());
        }
        out.push((name, t));
    }
    Ok(out)
}

fn materialise(
    name: &str,
    spec: &TensorSpec,
    storage: &[u8],
    budget: u64,
    total: &mut u64,
) -> Result<RawTensor> {
    let err = |msg: String| PtError::Tensor {
        name: name.to_string(),
        msg,
    };
    let es = spec.dtype.element_size();
    let sref = &spec.storage;
    let avail = storage.len().checked_sub(sref.byte_offset).ok_or_else(|| {
        err(format!(
            "storage view starts at byte {} of a {}-byte record",
            sref.byte_offset,
            storage.len()
        ))
    })?;
    let len = match sref.byte_len {
        Some(l) if l <= avail => l,
        Some(l) => {
            return Err(err(format!(
                "storage view of {l} bytes exceeds its {avail}-byte record"
            )))
        }
        None => avail,
    };
    let base = &storage[sref.byte_offset..sref.byte_offset + len];
    let n_storage = base.len() / es;

    let numel = spec
        .size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("size {:?} overflows", spec.size)))?;
    let shape = spec.size.clone();
    if numel == 0 {
        return Ok(RawTensor {
            dtype: spec.dtype,
            shape,
            data: Vec::new(),
        });
    }
    let nbytes = numel
        .checked_mul(es)
        .ok_or_else(|| err(format!("size {:?} overflows", spec.size)))?;
    *total = total.saturating_add(nbytes as u64);
    if *total > budget {
        return Err(err(format!(
            "materialised tensors would exceed {budget} bytes, far more than the file holds"
        )));
    }
    // the last element the view touches must lie inside the storage
    let mut last = spec.offset;
    for (&d, &s) in spec.size.iter().zip(&spec.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| last.checked_add(x))
            .ok_or_else(|| err("view extent overflows".into()))?;
    }
    if last >= n_storage {
        return Err(err(format!(
            "view (offset {}, size {:?}, stride {:?}) reaches element {last} but its storage \
             holds {n_storage} elements of {}",
            spec.offset, spec.size, spec.stride, spec.dtype
        )));
    }

    let mut data = Vec::with_capacity(nbytes);
    let nd = spec.size.len();
    let mut expected = 1usize;
    let mut contiguous = true;
    for d in (0..nd).rev() {
        if spec.size[d] != 1 && spec.stride[d] != expected {
            contiguous = false;
            break;
        }
        expected *= spec.size[d];
    }
    if contiguous {
        data.extend_from_slice(&base[spec.offset * es..(spec.offset + numel) * es]);
    } else {
        // copy the innermost dimension as one run when it is dense
        let (run, outer) = if spec.stride[nd - 1] == 1 {
            (spec.size[nd - 1], nd - 1)
        } else {
            (1, nd)
        };
        let mut idx = vec![0usize; outer];
        'copy: loop {
            let mut off = spec.offset;
            for d in 0..outer {
                off += idx[d] * spec.stride[d];
            }
            data.extend_from_slice(&base[off * es..(off + run) * es]);
            let mut d = outer;
            loop {
                if d == 0 {
                    break 'copy;
                }
                d -= 1;
                idx[d] += 1;
                if idx[d] < spec.size[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
    debug_assert_eq!(data.len(), nbytes);
    Ok(RawTensor {
        dtype: spec.dtype,
        shape,
        data,
    })
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/pt");

    const ALL: [&str; 9] = [
        "state_dict",
        "state_dict_legacy",
        "state_dict_proto4",
        "ema_nested",
        "train_ckpt",
        "dtypes",
        "dtypes_legacy",
        "views",
        "views_legacy",
    ];

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(FIXTURES).join(format!("{name}.pt"))
    }

    fn fixture_bytes(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).unwrap()
    }

    fn dtype_from_name(s: &str) -> DType {
        [
            DType::F16,
            DType::BF16,
            DType::F32,
            DType::F64,
            DType::I8,
            DType::U8,
            DType::I16,
            DType::I32,
            DType::I64,
            DType::Bool,
        ]
        .into_iter()
        .find(|d| d.name() == s)
        .unwrap_or_else(|| panic!("unknown dtype {s}"))
    }

    /// Compare a read file with its `<name>.expected.json`.
    fn check_against_expected(name: &str, got: &[(String, RawTensor)]) {
        let json_path = Path::new(FIXTURES).join(format!("{name}.expected.json"));
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
        let expected = expected.as_object().unwrap();
        let mut got_names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        got_names.sort_unstable();
        let mut want_names: Vec<&str> = expected.keys().map(String::as_str).collect();
        want_names.sort_unstable();
        assert_eq!(got_names, want_names, "{name}: tensor names");
        for (tname, t) in got {
            let e = &expected[tname.as_str()];
            let dtype = dtype_from_name(e["dtype"].as_str().unwrap());
            assert_eq!(t.dtype, dtype, "{name}/{tname}: dtype");
            let shape: Vec<usize> = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(t.shape, shape, "{name}/{tname}: shape");
            assert_eq!(
                t.data.len(),
                t.numel() * dtype.element_size(),
                "{name}/{tname}"
            );
            let want: Vec<f64> = e["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert_eq!(want.len(), t.numel(), "{name}/{tname}: numel");
            let got_f32 = t.to_f32_vec();
            for (i, (g, w)) in got_f32.iter().zip(&want).enumerate() {
                assert_eq!(*g, *w as f32, "{name}/{tname}[{i}]");
            }
            // exact checks for the types f32 cannot hold exactly
            match t.dtype {
                DType::F64 => {
                    for (i, c) in t.data.chunks_exact(8).enumerate() {
                        let v = f64::from_le_bytes(c.try_into().unwrap());
                        assert_eq!(v, want[i], "{name}/{tname}[{i}] (f64)");
                    }
                }
                DType::I64 => {
                    for (i, c) in t.data.chunks_exact(8).enumerate() {
                        let v = i64::from_le_bytes(c.try_into().unwrap());
                        assert_eq!(v as f64, want[i], "{name}/{tname}[{i}] (i64)");
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn every_fixture_matches_its_expected_json() {
        for name in ALL {
            let got = read_pt_tensors(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            check_against_expected(name, &got);
            // the in-memory entry point agrees with the file one
            let again = read_pt_tensors_from_bytes(&fixture_bytes(name)).unwrap();
            assert_eq!(got, again, "{name}: path vs bytes");
        }
    }

    #[test]
    fn state_dict_order_and_formats_agree() {
        let zip = read_pt_tensors(&fixture("state_dict")).unwrap();
        let names: Vec<&str> = zip.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "conv.weight",
                "conv.bias",
                "norm.weight",
                "norm.bias",
                "out.1.weight",
                "out.1.bias"
            ]
        );
        assert_eq!(zip[0].1.shape, [4, 3, 3, 3]);
        assert_eq!(zip[0].1.dtype, DType::F32);
        let legacy = read_pt_tensors(&fixture("state_dict_legacy")).unwrap();
        let proto4 = read_pt_tensors(&fixture("state_dict_proto4")).unwrap();
        assert_eq!(zip, legacy);
        assert_eq!(zip, proto4);
    }

    #[test]
    fn nested_ema_and_training_checkpoint_names() {
        let ema = read_pt_tensors(&fixture("ema_nested")).unwrap();
        let names: Vec<&str> = ema.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names[0], "implicit_func_ema.initted");
        assert_eq!(names[1], "implicit_func_ema.step");
        assert!(names.contains(&"implicit_func_ema.ema_model.out.1.weight"));
        assert!(names.contains(&"implicit_func_ema.online_model.conv.weight"));
        assert_eq!(ema[0].1.dtype, DType::Bool);
        assert_eq!(ema[0].1.shape, Vec::<usize>::new());
        assert_eq!(ema[1].1.dtype, DType::I64);
        assert_eq!(ema[1].1.to_f32_vec(), [1234.0]);

        let ckpt = read_pt_tensors(&fixture("train_ckpt")).unwrap();
        let names: Vec<&str> = ckpt.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"implicit_func.conv.weight"));
        assert!(names.contains(&"opt_d.state.0.exp_avg"));
        assert!(names.contains(&"opt_d.state.5.exp_avg_sq"));
        // ints, floats, strings, None, the Namespace, the device and param_groups are skipped
        assert!(!names.iter().any(|n| n.starts_with("step")
            || n.starts_with("scaler")
            || n.starts_with("args")
            || n.starts_with("note")
            || n.starts_with("ints")
            || n.starts_with("device")
            || n.contains("param_groups")));
    }

    #[test]
    fn views_and_shared_storages() {
        for name in ["views", "views_legacy"] {
            let got = read_pt_tensors(&fixture(name)).unwrap();
            let get = |n: &str| &got.iter().find(|(k, _)| k == n).unwrap().1;
            let base = get("base").to_f32_vec();
            assert_eq!(base, (0..24).map(|i| i as f32).collect::<Vec<_>>());
            assert_eq!(get("offset_view").shape, [3, 4]);
            assert_eq!(
                get("offset_view").to_f32_vec(),
                (5..17).map(|i| i as f32).collect::<Vec<_>>()
            );
            assert_eq!(
                get("strided_view").to_f32_vec(),
                [6., 8., 10., 12., 14., 16., 18., 20., 22.]
            );
            assert_eq!(get("expanded").to_f32_vec(), [1., 2., 1., 2., 1., 2.]);
            assert_eq!(get("param").to_f32_vec(), [0.25, -0.5]);
            assert_eq!(get("list.0").dtype, DType::I64);
            assert_eq!(get("list.3.0").to_f32_vec(), [4.0]);
            let t = get("transposed");
            assert_eq!(t.shape, [5, 3]);
            let h = get("half_t");
            assert_eq!(h.dtype, DType::F16);
            for (a, b) in t.to_f32_vec().iter().zip(h.to_f32_vec()) {
                assert!((a - b).abs() <= a.abs() * 1e-3 + 1e-4);
            }
        }
    }

    /// Manual check on a real checkpoint:
    /// `DAVI_PT_FILE=/path/x.pt cargo test -p davi-engine --lib torch_pickle -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn reads_file_named_by_env() {
        let Ok(path) = std::env::var("DAVI_PT_FILE") else {
            return;
        };
        let t0 = std::time::Instant::now();
        let got = read_pt_tensors(Path::new(&path)).unwrap();
        let bytes: usize = got.iter().map(|(_, t)| t.data.len()).sum();
        println!("{} tensors, {bytes} bytes in {:?}", got.len(), t0.elapsed());
        for (n, t) in got.iter().take(5) {
            println!("  {n}: {} {:?}", t.dtype, t.shape);
        }
    }

    #[test]
    fn half_conversions() {
        assert_eq!(f16_bits_to_f32(0x3c00), 1.0);
        assert_eq!(f16_bits_to_f32(0xc000), -2.0);
        assert_eq!(f16_bits_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_bits_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_bits_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert!(f16_bits_to_f32(0x7c00).is_infinite());
        assert!(f16_bits_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn truncated_files_are_errors() {
        for name in [
            "state_dict",
            "state_dict_legacy",
            "train_ckpt",
            "views_legacy",
        ] {
            let bytes = fixture_bytes(name);
            for cut in [1, 7, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
                let r = read_pt_tensors_from_bytes(&bytes[..cut]);
                assert!(r.is_err(), "{name} cut at {cut} read fine");
            }
            // also through the file entry point, with a copy written at test time
            let dir = std::env::temp_dir().join(format!("davi-pt-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join(format!("{name}.truncated.pt"));
            std::fs::File::create(&path)
                .unwrap()
                .write_all(&bytes[..bytes.len() / 2])
                .unwrap();
            let err = read_pt_tensors(&path).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("truncated"), "{name}: {msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn legacy_truncated_inside_a_storage_record() {
        let bytes = fixture_bytes("state_dict_legacy");
        let err = read_pt_tensors_from_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, PtError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains("storage record"), "{err}");
    }

    /// A small deterministic generator (xorshift) for the robustness tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_bytes_are_errors() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for len in [0usize, 1, 2, 3, 10, 100, 1000, 5000] {
            for prefix in [&b""[..], b"\x80\x02", b"PK\x03\x04"] {
                let mut buf = prefix.to_vec();
                while buf.len() < len.max(prefix.len()) {
                    buf.push(rng.next() as u8);
                }
                let r = read_pt_tensors_from_bytes(&buf);
                assert!(r.is_err(), "random input of {} bytes read fine", buf.len());
            }
        }
        let e = read_pt_tensors_from_bytes(b"hello world").unwrap_err();
        assert!(e.to_string().contains("not a PyTorch checkpoint"), "{e}");
    }

    #[test]
    fn corrupted_length_fields_do_not_allocate() {
        // BINUNICODE8 announcing 2^60 bytes
        let mut p = vec![0x80, 0x02, 0x8d];
        p.extend_from_slice(&(1u64 << 60).to_le_bytes());
        p.extend_from_slice(b"abc.");
        let mut arena = Arena::new(0);
        let e = run_pickle(&p, 0, "t", &mut arena, false).unwrap_err();
        assert!(matches!(e, PtError::Truncated { .. }), "{e}");
        // LONG4 announcing 2^31-1 bytes
        let p = [0x80, 0x02, 0x8b, 0xff, 0xff, 0xff, 0x7f, 0x00, b'.'];
        let e = run_pickle(&p, 0, "t", &mut arena, false).unwrap_err();
        assert!(matches!(e, PtError::Truncated { .. }), "{e}");
        // unsupported opcode is reported with its value
        let p = [0x80, 0x02, b'i', b'.'];
        let e = run_pickle(&p, 0, "t", &mut arena, false).unwrap_err();
        assert!(
            e.to_string().contains("unsupported pickle opcode 0x69"),
            "{e}"
        );
        // a legacy storage record whose element count is huge
        let bytes = fixture_bytes("views_legacy");
        let file = parse_legacy(&bytes, 0).unwrap();
        let first = file
            .records
            .values()
            .map(|r| r.as_ptr() as usize)
            .min()
            .unwrap();
        let count_at = first - bytes.as_ptr() as usize - 8;
        let mut bad = bytes.clone();
        bad[count_at..count_at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let e = read_pt_tensors_from_bytes(&bad).unwrap_err();
        assert!(matches!(e, PtError::Truncated { .. }), "{e}");
    }

    #[test]
    fn tensor_from_an_unknown_rebuild_function_is_an_error() {
        // _rebuild_sparse_tensor is a torch tensor rebuilder we do not support
        let p = b"\x80\x02ctorch._utils\n_rebuild_sparse_tensor\n)R.";
        let mut arena = Arena::new(0);
        let e = run_pickle(p, 0, "t", &mut arena, true).unwrap_err();
        assert!(
            e.to_string()
                .contains("unsupported global torch._utils._rebuild_sparse_tensor"),
            "{e}"
        );
        // while an unknown non-torch class is just opaque
        let p = b"\x80\x02cargparse\nNamespace\n)\x81}b.";
        let (v, _) = run_pickle(p, 0, "t", &mut arena, true).unwrap();
        assert!(matches!(v, Value::Object(_)));
        // and a tensor whose storage argument is opaque is an error
        let p = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(cfoo\nBar\n)RK\x00K\x01\x85K\x01\x85\x89NtR.";
        let e = run_pickle(p, 0, "t", &mut arena, true).unwrap_err();
        assert!(e.to_string().contains("not a storage"), "{e}");
    }

    #[test]
    fn reusing_a_large_container_is_bounded() {
        // a 1000-item tuple, memoised, then list(t) 100k times: must stop early
        let mut p = vec![0x80, 0x02, b'('];
        p.extend(std::iter::repeat(b'N').take(1000));
        p.extend_from_slice(b"tq\x00c__builtin__\nlist\nq\x01");
        for _ in 0..100_000 {
            p.extend_from_slice(b"h\x01h\x00\x85R0");
        }
        p.extend_from_slice(b"N.");
        let mut arena = Arena::new(0);
        let e = run_pickle(&p, 0, "t", &mut arena, false).unwrap_err();
        assert!(e.to_string().contains("copied far more often"), "{e}");
        // the values held are bounded by a small multiple of the input (not 1000 x 100k)
        let held: usize = arena.lists.iter().map(Vec::len).sum();
        assert!(
            held <= 16 * p.len() + (1 << 16) + 1000,
            "{held} values held"
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        // 100k nested 1-tuples: building and dropping must not recurse
        let mut p = vec![0x80, 0x02, b')'];
        p.extend(std::iter::repeat(0x85).take(100_000));
        p.push(b'.');
        let mut arena = Arena::new(0);
        let (v, _) = run_pickle(&p, 0, "t", &mut arena, false).unwrap();
        assert!(flatten(&arena, &v, p.len()).is_err());
        drop(arena);
        // a self-containing list: cycles are fine, flattening stops
        let p = b"\x80\x02]q\x00h\x00a.";
        let mut arena = Arena::new(0);
        let (v, _) = run_pickle(p, 0, "t", &mut arena, false).unwrap();
        assert!(flatten(&arena, &v, p.len()).is_err());
    }

    #[test]
    fn mutated_legacy_files_never_panic() {
        for name in ["views_legacy", "state_dict_legacy"] {
            let bytes = fixture_bytes(name);
            let mut rng = Rng(42);
            for i in 0..bytes.len() {
                for delta in [0x01u8, 0x80, (rng.next() as u8) | 1] {
                    let mut m = bytes.clone();
                    m[i] ^= delta;
                    let _ = read_pt_tensors_from_bytes(&m);
                }
            }
        }
    }

    #[test]
    fn mutated_zip_containers_never_panic() {
        // damage to the zip structure itself (headers, central directory, CRCs)
        let bytes = fixture_bytes("state_dict");
        let original = read_pt_tensors_from_bytes(&bytes).unwrap();
        let mut rng = Rng(99);
        for i in 0..bytes.len() {
            for delta in [0x01u8, (rng.next() as u8) | 1] {
                let mut m = bytes.clone();
                m[i] ^= delta;
                if let Ok(t) = read_pt_tensors_from_bytes(&m) {
                    // only bytes nobody checks (timestamps, padding, …) may change silently;
                    // damaged data or pickle records fail their CRC
                    assert_eq!(t, original, "mutation at {i}");
                }
            }
        }
    }

    /// Rebuild a zip checkpoint with one record replaced.
    fn rezip(original: &[u8], replace: &str, contents: &[u8]) -> Vec<u8> {
        let mut src = zip::ZipArchive::new(Cursor::new(original)).unwrap();
        let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for i in 0..src.len() {
            let mut f = src.by_index(i).unwrap();
            let name = f.name().to_string();
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            out.start_file(name.as_str(), opts).unwrap();
            if name == replace {
                out.write_all(contents).unwrap();
            } else {
                out.write_all(&data).unwrap();
            }
        }
        out.finish().unwrap().into_inner()
    }

    #[test]
    fn mutated_zip_pickles_never_panic() {
        for name in ["views", "train_ckpt"] {
            let bytes = fixture_bytes(name);
            let pkl_name = format!("{name}/data.pkl");
            let mut pkl = Vec::new();
            zip::ZipArchive::new(Cursor::new(&bytes[..]))
                .unwrap()
                .by_name(&pkl_name)
                .unwrap()
                .read_to_end(&mut pkl)
                .unwrap();
            // sanity: an unmodified rebuild reads identically
            let same = rezip(&bytes, &pkl_name, &pkl);
            assert_eq!(
                read_pt_tensors_from_bytes(&same).unwrap(),
                read_pt_tensors_from_bytes(&bytes).unwrap()
            );
            let mut rng = Rng(7);
            let step = if pkl.len() > 2000 { 5 } else { 1 };
            for i in (0..pkl.len()).step_by(step) {
                for delta in [0x01u8, (rng.next() as u8) | 1] {
                    let mut m = pkl.clone();
                    m[i] ^= delta;
                    let _ = read_pt_tensors_from_bytes(&rezip(&bytes, &pkl_name, &m));
                }
            }
            // a storage record that is too short for its tensor
            let short = rezip(&bytes, &format!("{name}/data/0"), &[0u8; 2]);
            let e = read_pt_tensors_from_bytes(&short).unwrap_err();
            assert!(matches!(e, PtError::Tensor { .. }), "{e}");
        }
    }

    #[test]
    fn archive_prefix_and_missing_records() {
        // the prefix folder name does not matter
        let bytes = fixture_bytes("state_dict");
        let mut src = zip::ZipArchive::new(Cursor::new(&bytes[..])).unwrap();
        let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let opts =
            zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let mut dropped = false;
        let mut out2 = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for i in 0..src.len() {
            let mut f = src.by_index(i).unwrap();
            let name = f.name().replacen("state_dict/", "archive/", 1);
            let mut data = Vec::new();
            f.read_to_end(&mut data).unwrap();
            out.start_file(name.as_str(), opts).unwrap();
            out.write_all(&data).unwrap();
            if name == "archive/data/0" {
                dropped = true;
                continue;
            }
            out2.start_file(name.as_str(), opts).unwrap();
            out2.write_all(&data).unwrap();
        }
        assert!(dropped);
        let renamed = out.finish().unwrap().into_inner();
        assert_eq!(
            read_pt_tensors_from_bytes(&renamed).unwrap(),
            read_pt_tensors_from_bytes(&bytes).unwrap()
        );
        let missing = out2.finish().unwrap().into_inner();
        let e = read_pt_tensors_from_bytes(&missing).unwrap_err();
        assert!(e.to_string().contains("archive/data/0"), "{e}");
    }

    #[test]
    fn embedded_storage_from_bytes() {
        // a pickled storage as plain `pickle` writes it:
        // torch.storage._load_from_bytes(<legacy torch.save of the storage>)
        let inner = {
            let mut p = Vec::new();
            // magic, protocol version, sys_info
            p.extend_from_slice(b"\x80\x02\x8a\x0a");
            p.extend_from_slice(&LEGACY_MAGIC);
            p.push(b'.');
            p.extend_from_slice(b"\x80\x02M\xe9\x03.");
            p.extend_from_slice(b"\x80\x02}X\x0d\x00\x00\x00little_endian\x88s.");
            // the storage itself
            p.extend_from_slice(
                b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00k\
                  X\x03\x00\x00\x00cpuK\x02NtQ.",
            );
            p.extend_from_slice(b"\x80\x02]X\x01\x00\x00\x00ka.");
            p.extend_from_slice(&2u64.to_le_bytes());
            p.extend_from_slice(&1.5f32.to_le_bytes());
            p.extend_from_slice(&(-2.0f32).to_le_bytes());
            p
        };
        let mut outer =
            b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(ctorch.storage\n_load_from_bytes\nC"
                .to_vec();
        outer.push(inner.len() as u8);
        outer.extend_from_slice(&inner);
        outer.extend_from_slice(b"\x85RK\x00K\x02\x85K\x01\x85\x89NtR.");
        let mut arena = Arena::new(0);
        let (v, _) = run_pickle(&outer, 0, "t", &mut arena, true).unwrap();
        let specs = flatten(&arena, &v, outer.len()).unwrap();
        let got = materialise_all(specs, |_| unreachable!(), 1 << 20, false).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "");
        assert_eq!(got[0].1.to_f32_vec(), [1.5, -2.0]);
    }
}
