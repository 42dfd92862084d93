//! Pickled values and the object arena they live in: containers are indices into the
//! [`Arena`], so shared references and cycles behave like Python's and dropping never
//! recurses. Also the limits every reader of the arena respects.
use super::DType;
use std::collections::HashMap;
use std::rc::Rc;

/// A pickled value. Containers are indices into the [`Arena`], so shared references
/// and cycles behave like Python's and dropping never recurses.
#[derive(Clone, Debug)]
pub(super) enum Value {
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
    pub(super) fn describe(&self) -> String {
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

pub(super) fn truncate_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

#[derive(Debug)]
pub(super) struct Global {
    pub(super) module: String,
    pub(super) name: String,
}

#[derive(Debug)]
pub(super) enum StorageData {
    /// Data lives in the file under this key (zip record `data/<key>` or legacy record).
    Key(Rc<str>),
    /// Data came with the pickle itself (`torch.storage._load_from_bytes`), little-endian.
    Inline(Rc<Vec<u8>>),
}

#[derive(Debug)]
pub(super) struct StorageRef {
    pub(super) dtype: DType,
    pub(super) data: StorageData,
    /// Legacy storage views: byte range inside the underlying record.
    pub(super) byte_offset: usize,
    pub(super) byte_len: Option<usize>,
}

#[derive(Debug)]
pub(super) struct TensorSpec {
    pub(super) storage: Rc<StorageRef>,
    pub(super) dtype: DType,
    /// In elements of `dtype`.
    pub(super) offset: usize,
    pub(super) size: Vec<usize>,
    pub(super) stride: Vec<usize>,
}

#[derive(Hash, PartialEq, Eq, Debug)]
pub(super) enum DictKey {
    Str(Rc<str>),
    Int(i64),
}

/// An insertion-ordered dict; str/int/bool keys replace earlier equal keys like Python's.
#[derive(Default, Debug)]
pub(super) struct Dict {
    pub(super) items: Vec<(Value, Value)>,
    pub(super) index: HashMap<DictKey, usize>,
}

impl Dict {
    pub(super) fn insert(&mut self, k: Value, v: Value) {
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
pub(super) struct Arena {
    pub(super) lists: Vec<Vec<Value>>,
    pub(super) dicts: Vec<Dict>,
    pub(super) storages: HashMap<Rc<str>, DType>,
    /// How many `torch.storage._load_from_bytes` levels deep this file is.
    pub(super) nested: u32,
}

pub(super) const MAX_NESTED_LOADS: u32 = 2;
pub(super) const MAX_CALL_DEPTH: u32 = 8;
pub(super) const MAX_NAME_DEPTH: usize = 100;

impl Arena {
    pub(super) fn new(nested: u32) -> Self {
        Arena {
            lists: Vec::new(),
            dicts: Vec::new(),
            storages: HashMap::new(),
            nested,
        }
    }

    pub(super) fn new_list(&mut self, items: Vec<Value>) -> usize {
        self.lists.push(items);
        self.lists.len() - 1
    }

    pub(super) fn new_dict(&mut self) -> usize {
        self.dicts.push(Dict::default());
        self.dicts.len() - 1
    }
}

/// Text form of a storage key or dict key.
pub(super) fn key_text(v: &Value) -> Option<Rc<str>> {
    match v {
        Value::Str(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string().into()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into()),
        _ => None,
    }
}
