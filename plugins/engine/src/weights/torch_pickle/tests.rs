//! Tests of the `.pt` reader on PyTorch-written fixtures and hostile inputs.
use super::arena::{Arena, Value};
use super::legacy_file::{parse_legacy, LEGACY_MAGIC};
use super::materialise::{flatten, materialise_all};
use super::vm::run_pickle;
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
/// Without the variable it fails (it is opt-in, so an unset variable is a mistake, not a pass).
#[test]
#[ignore = "needs DAVI_PT_FILE=<a .pt checkpoint>"]
fn reads_file_named_by_env() {
    let path = std::env::var("DAVI_PT_FILE")
        .expect("set DAVI_PT_FILE to the .pt checkpoint this opt-in test should read");
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
        File::create(&path)
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
    let p =
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(cfoo\nBar\n)RK\x00K\x01\x85K\x01\x85\x89NtR.";
    let e = run_pickle(p, 0, "t", &mut arena, true).unwrap_err();
    assert!(e.to_string().contains("not a storage"), "{e}");
}

#[test]
fn reusing_a_large_container_is_bounded() {
    // a 1000-item tuple, memoised, then list(t) 100k times: must stop early
    let mut p = vec![0x80, 0x02, b'('];
    p.extend(std::iter::repeat_n(b'N', 1000));
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
    p.extend(std::iter::repeat_n(0x85, 100_000));
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
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(ctorch.storage\n_load_from_bytes\nC".to_vec();
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
