//! The legacy container (`_use_new_zipfile_serialization=False`, PyTorch < 1.6): consecutive
//! pickles (magic number, protocol version, `sys_info`, the object pickle, the storage keys),
//! then each storage's element count and raw elements.
use super::arena::{key_text, Arena, Value};
use super::materialise::{flatten, materialise_all, Blob};
use super::vm::run_pickle;
use super::{output_budget, PtError, RawTensor, Result};
use std::collections::HashMap;
use std::rc::Rc;

/// `0x1950a86a20f9469cfc6c`, little-endian, as pickled with LONG1.
pub(super) const LEGACY_MAGIC: [u8; 10] =
    [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
pub(super) const LEGACY_PROTOCOL_VERSION: i64 = 1001;

pub(super) struct LegacyFile<'a> {
    pub(super) arena: Arena,
    pub(super) root: Value,
    /// Storage key -> its raw bytes (in the file's byte order).
    pub(super) records: HashMap<Rc<str>, &'a [u8]>,
    pub(super) little_endian: bool,
}

pub(super) fn parse_legacy(bytes: &[u8], nested: u32) -> Result<LegacyFile<'_>> {
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

pub(super) fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, RawTensor)>> {
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
