//! The loader against real shared libraries: a correct hand-written plugin loads and runs, and
//! each broken fixture is refused with the reason that matches its one fault.
use davi_sdk::loader::{LoadError, LoadedPlugin, PluginOrigin, PluginRegistry};
use davi_sdk::plugin::{DaviPluginApi, DAVI_PLUGIN_ABI_MAJOR};
use davi_sdk::{DaviStatus, OperatorKind, PlanarImage, PluginOptions};
use davi_test_plugins::{fixture, fixture_dir};

fn refuse(fault: &str) -> LoadError {
    match LoadedPlugin::open(&fixture(fault)) {
        Ok(p) => panic!("fixture {fault} was accepted: {:?}", p.describe()),
        Err(e) => e,
    }
}

#[test]
fn a_correct_hand_written_plugin_loads_and_restores() {
    let p = LoadedPlugin::open(&fixture("ok")).unwrap();
    let d = p.describe();
    assert_eq!(
        (d.id.as_str(), d.version.as_str(), d.abi_major),
        ("fixture", "0.0.1", DAVI_PLUGIN_ABI_MAJOR)
    );
    assert_eq!(d.kinds(), [OperatorKind::Denoising]);
    assert_eq!(p.origin(), &PluginOrigin::File(fixture("ok")));
    let mut inst = p.new_instance(&PluginOptions::default()).unwrap();
    let input = PlanarImage::from_vec(2, 1, 3, vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6]).unwrap();
    let out = inst
        .restore("kind = \"denoising\"", &input, |_| true)
        .unwrap();
    assert_eq!(out, input);
    // Loading the same file twice maps it once (dlopen refcount) and stays usable.
    assert!(LoadedPlugin::open(&fixture("ok")).is_ok());
}

#[test]
fn a_wrong_abi_major_is_refused_before_the_table_is_read() {
    let e = refuse("major");
    match &e {
        LoadError::AbiMismatch {
            plugin_major: 2,
            host_major: 1,
            ..
        } => {}
        other => panic!("wrong reason: {other}"),
    }
    assert_eq!(e.status(), DaviStatus::AbiMismatch);
    assert!(e.to_string().contains("ABI 2.0"), "{e}");
}

#[test]
fn a_truncated_table_is_refused() {
    let e = refuse("truncated");
    match &e {
        LoadError::TruncatedTable { got, need, .. } => {
            assert!(got < need);
            assert_eq!(*need, DaviPluginApi::V1_SIZE);
        }
        other => panic!("wrong reason: {other}"),
    }
    assert!(e.to_string().contains("truncated table"), "{e}");
}

#[test]
fn a_library_without_the_entry_symbol_is_refused() {
    let e = refuse("no_entry");
    assert!(matches!(e, LoadError::MissingEntry(_)), "{e}");
    assert!(e.to_string().contains("davi_plugin_entry"), "{e}");
}

#[test]
fn a_null_table_and_a_null_function_are_refused() {
    assert!(matches!(refuse("null_table"), LoadError::NullTable { .. }));
    let e = refuse("null_fn");
    assert!(matches!(e, LoadError::InvalidTable(_)), "{e}");
    assert!(e.to_string().contains("restore"), "{e}");
}

#[test]
fn a_scan_keeps_the_good_plugin_and_names_every_refusal() {
    let dir = std::env::temp_dir().join(format!("davi-test-plugins-scan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(dir.join("libnotes.so"), "# not a library\n").unwrap();
    std::fs::write(dir.join("README"), "ignored").unwrap();
    let reg = PluginRegistry::scan(&dir).unwrap();
    let ids: Vec<&str> = reg.plugins().iter().map(|p| p.id()).collect();
    assert_eq!(ids, ["fixture"]);
    let mut reasons: Vec<String> = reg.refused().iter().map(|r| r.to_string()).collect();
    reasons.sort();
    assert_eq!(reasons.len(), 6, "{reasons:#?}");
    let expect = [
        ("libdavi_fixture_major.so", "wrong ABI"),
        ("libdavi_fixture_no_entry.so", "missing entry symbol"),
        ("libdavi_fixture_null_fn.so", "function `restore` is NULL"),
        ("libdavi_fixture_null_table.so", "returned NULL"),
        ("libdavi_fixture_truncated.so", "truncated table"),
        ("libnotes.so", "a text file"),
    ];
    for (reason, (file, why)) in reasons.iter().zip(expect) {
        assert!(
            reason.contains(file) && reason.contains(why),
            "{reason} should name {file}: {why}"
        );
    }
    assert_eq!(
        reg.pick(OperatorKind::Denoising, None).unwrap().id(),
        "fixture"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
