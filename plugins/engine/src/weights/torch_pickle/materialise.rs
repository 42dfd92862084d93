//! From the pickle's object graph to named tensors: flattening nested containers into dotted
//! names, then materialising each tensor view (size, stride, offset) into contiguous,
//! little-endian bytes within a byte budget.
use super::arena::{Arena, StorageData, TensorSpec, Value, MAX_NAME_DEPTH};
use super::{PtError, RawTensor, Result};
use std::collections::HashMap;
use std::rc::Rc;

pub(super) struct Flattener<'h> {
    pub(super) arena: &'h Arena,
    pub(super) out: Vec<(String, Rc<TensorSpec>)>,
    pub(super) visits: usize,
    pub(super) max_visits: usize,
}

/// Collect `(dotted name, tensor)` pairs in pickle order. The number of visited nodes is
/// bounded by the pickle size (plus slack), so heavily shared sub-structures cannot blow up.
pub(super) fn flatten(
    arena: &Arena,
    root: &Value,
    pickle_len: usize,
) -> Result<Vec<(String, Rc<TensorSpec>)>> {
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
    pub(super) fn walk(&mut self, v: &Value, name: &mut String, depth: usize) -> Result<()> {
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

pub(super) fn push_component(name: &mut String, part: &str) {
    if !name.is_empty() {
        name.push('.');
    }
    name.push_str(part);
}

/// Python-ish `str(key)`.
pub(super) fn dict_key_name(arena: &Arena, k: &Value) -> String {
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
pub(super) enum Blob<'a> {
    Borrowed(&'a [u8]),
    Shared(Rc<Vec<u8>>),
}

impl Blob<'_> {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Blob::Borrowed(b) => b,
            Blob::Shared(v) => v,
        }
    }
}

/// Materialise every tensor; each storage record is fetched once and released after its
/// last user.
pub(super) fn materialise_all<'a, F>(
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

pub(super) fn materialise(
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
            for (i, stride) in idx.iter().zip(&spec.stride) {
                off += i * stride;
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

pub(super) fn swap_bytes(data: &mut [u8], element_size: usize) {
    if element_size > 1 {
        for c in data.chunks_exact_mut(element_size) {
            c.reverse();
        }
    }
}
