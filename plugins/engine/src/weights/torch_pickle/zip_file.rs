//! The zip container (PyTorch >= 1.6 default): `<prefix>/data.pkl` holds the object pickle,
//! `<prefix>/data/<key>` the raw storage bytes, `<prefix>/byteorder` the byte order.
use super::arena::Arena;
use super::materialise::{flatten, materialise_all, Blob};
use super::vm::run_pickle;
use super::{output_budget, PtError, RawTensor, Result};
use std::io::{Read, Seek};
use std::rc::Rc;

pub(super) fn read_zip<R: Read + Seek>(
    reader: R,
    input_len: u64,
) -> Result<Vec<(String, RawTensor)>> {
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
pub(super) fn read_zip_entry<R: Read + Seek>(
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
