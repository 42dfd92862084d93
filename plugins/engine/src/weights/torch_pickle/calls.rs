//! What the pickle's globals do when called: the fixed table of known callables
//! (`collections.OrderedDict`, `torch._utils._rebuild_tensor*`, storages, `torch.Size`,
//! `_codecs.encode`, nested `torch.storage._load_from_bytes`, …), persistent ids (storages)
//! and tensor rebuilding. Everything else is an opaque value.
use super::arena::{
    key_text, Global, StorageData, StorageRef, TensorSpec, Value, MAX_CALL_DEPTH, MAX_NESTED_LOADS,
};
use super::legacy_file::parse_legacy;
use super::materialise::swap_bytes;
use super::vm::Vm;
use super::{DType, PtError, Result};
use std::rc::Rc;

impl<'d> Vm<'d, '_> {
    // --- persistent ids: storages ---

    pub(super) fn persistent_load(&mut self, at: usize, pid: Value) -> Result<Value> {
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

    pub(super) fn items_of(&mut self, at: usize, v: &Value, what: &str) -> Result<Vec<Value>> {
        match v {
            Value::Tuple(i) | Value::List(i) => self.list_items(at, *i),
            other => Err(self.malformed(
                at,
                format!("{what} must be a tuple, found {}", other.describe()),
            )),
        }
    }

    pub(super) fn new_object(&mut self, at: usize, cls: Value, args: Value) -> Result<Value> {
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

    pub(super) fn call(&mut self, at: usize, func: Value, args: Value) -> Result<Value> {
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

    pub(super) fn call_global(&mut self, at: usize, g: &Global, args: Vec<Value>) -> Result<Value> {
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

    pub(super) fn encode(&mut self, at: usize, s: &str, encoding: &str) -> Result<Rc<[u8]>> {
        self.charge(at, s.len())?;
        encode(s, encoding)
            .ok_or_else(|| self.malformed(at, format!("cannot encode a string with {encoding:?}")))
    }

    pub(super) fn usize_of(&self, at: usize, v: &Value, what: &str) -> Result<usize> {
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

    pub(super) fn usize_list(&mut self, at: usize, v: &Value, what: &str) -> Result<Vec<usize>> {
        let items = self.items_of(at, v, what)?;
        items.iter().map(|x| self.usize_of(at, x, what)).collect()
    }

    /// `_rebuild_tensor(storage, offset, size, stride)`, `_v2(…, requires_grad, hooks[,
    /// metadata])`, `_v3(…, requires_grad, hooks, dtype[, metadata])`.
    pub(super) fn rebuild_tensor(
        &mut self,
        at: usize,
        args: &[Value],
        version: u8,
    ) -> Result<Value> {
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
    pub(super) fn load_from_bytes(&mut self, at: usize, args: &[Value]) -> Result<Value> {
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

pub(super) fn encode(s: &str, encoding: &str) -> Option<Rc<[u8]>> {
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
