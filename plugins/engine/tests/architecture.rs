//! `docs/ARCHITECTURE.md` cannot go stale silently:
//!
//! - every `.rs` file under the `src/` folder of every workspace member (the `members` of the
//!   root `Cargo.toml`) is mentioned as `src/<path>` in that crate's section of the document
//!   (the section whose heading starts with "### `<crate dir>/`");
//! - every subcommand of the `davi` CLI (`enum Cmd` in `host-example/cli/src/main.rs`) is
//!   named in backticks;
//! - the engine's crate documentation (`plugins/engine/src/lib.rs`) links every module the
//!   crate declares (a `#[cfg(test)]` module, which rustdoc cannot link, is named in
//!   backticks instead).
//!
//! Plain file reading: no libtorch call, so it runs in milliseconds. When it fails, add the
//! missing line to `docs/ARCHITECTURE.md` (or to the crate documentation) rather than
//! loosening the check.
use std::fs;
use std::path::{Path, PathBuf};

/// The workspace root (this crate is `plugins/engine`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn architecture() -> String {
    read(&root().join("docs/ARCHITECTURE.md"))
}

/// The workspace members listed in the root `Cargo.toml` (`members = [ "a", "b/c", … ]`).
fn members() -> Vec<String> {
    let toml = read(&root().join("Cargo.toml"));
    let start = toml
        .find("members")
        .expect("the root Cargo.toml lists workspace members");
    let open = start + toml[start..].find('[').expect("members = [");
    let close = open + toml[open..].find(']').expect("members = [ … ]");
    let members: Vec<String> = toml[open + 1..close]
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect();
    assert!(
        !members.is_empty(),
        "no workspace members found in Cargo.toml"
    );
    members
}

/// Every `.rs` file under `dir`, as a `/`-separated path relative to `base`, sorted.
fn rust_files(dir: &Path, base: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("cannot list {}: {e}", d.display()))
        {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(base).expect("below the crate folder");
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    out
}

/// The part of the document about the crate in `dir`: from its "### `dir/`" heading to the
/// next heading of level 2 or 3.
fn section(doc: &str, dir: &str) -> Option<String> {
    let heading = format!("### `{dir}/`");
    let mut lines = doc.lines().skip_while(|l| !l.starts_with(&heading));
    let first = lines.next()?;
    let rest = lines.take_while(|l| !(l.starts_with("## ") || l.starts_with("### ")));
    Some(
        std::iter::once(first)
            .chain(rest)
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[test]
fn every_source_file_of_every_crate_is_in_architecture_md() {
    let doc = architecture();
    let mut missing = Vec::new();
    for member in members() {
        let crate_dir = root().join(&member);
        let src = crate_dir.join("src");
        if !src.is_dir() {
            continue;
        }
        let Some(text) = section(&doc, &member) else {
            missing.push(format!("a section headed \"### `{member}/`\""));
            continue;
        };
        for file in rust_files(&src, &crate_dir) {
            if !text.contains(&file) {
                missing.push(format!("`{file}` in the section of `{member}/`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md does not mention:\n  {}",
        missing.join("\n  ")
    );
}

/// `TrainPrior` → `train-prior` (clap's default subcommand names).
fn kebab(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The variants of `enum Cmd` in the CLI's `main.rs`: lines indented by exactly four spaces
/// that start with an upper-case letter.
fn cli_subcommands() -> Vec<String> {
    let main = read(&root().join("host-example/cli/src/main.rs"));
    let start = main.find("enum Cmd {").expect("the CLI defines `enum Cmd`");
    let body = &main[start..];
    let end = body.find("\n}").expect("`enum Cmd` ends with a `}` line");
    let names: Vec<String> = body[..end]
        .lines()
        .skip(1)
        .filter_map(|l| {
            let rest = l.strip_prefix("    ")?;
            if !rest.starts_with(|c: char| c.is_ascii_uppercase()) {
                return None;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            Some(kebab(&name))
        })
        .collect();
    assert!(
        names.len() >= 5,
        "found too few subcommands in `enum Cmd`: {names:?}"
    );
    names
}

#[test]
fn every_cli_subcommand_is_in_architecture_md() {
    let doc = architecture();
    let text =
        section(&doc, "host-example/cli").expect("a section headed \"### `host-example/cli/`\"");
    let missing: Vec<String> = cli_subcommands()
        .into_iter()
        .filter(|c| !text.contains(&format!("`{c}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md does not name the `davi` subcommands {missing:?}"
    );
}

#[test]
fn the_engine_crate_documentation_links_every_module() {
    let lib = read(&root().join("plugins/engine/src/lib.rs"));
    let docs: String = lib
        .lines()
        .filter(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join("\n");
    // (module name, declared under `#[cfg(test)]`)
    let mut modules: Vec<(String, bool)> = Vec::new();
    let mut test_only = false;
    for l in lib.lines().map(str::trim) {
        let rest = l
            .strip_prefix("pub mod ")
            .or_else(|| l.strip_prefix("mod "));
        if let Some(name) = rest.and_then(|r| r.strip_suffix(';')) {
            modules.push((name.trim().to_string(), test_only));
        }
        test_only = l == "#[cfg(test)]";
    }
    assert!(
        modules.len() >= 10,
        "found too few modules in lib.rs: {modules:?}"
    );
    let missing: Vec<&String> = modules
        .iter()
        .filter(|(m, test_only)| {
            let named = if *test_only {
                format!("`{m}`")
            } else {
                format!("[`{m}`]")
            };
            !docs.contains(&named)
        })
        .map(|(m, _)| m)
        .collect();
    assert!(
        missing.is_empty(),
        "plugins/engine/src/lib.rs's `//!` documentation does not link {missing:?}"
    );
}

#[test]
fn section_stops_at_the_next_heading() {
    let doc = "# t\n### `a/`: x\n- `src/one.rs`\n### `a/b/`: y\n- `src/two.rs`\n## end\n";
    let a = section(doc, "a").unwrap();
    assert!(a.contains("src/one.rs") && !a.contains("src/two.rs"));
    let b = section(doc, "a/b").unwrap();
    assert!(b.contains("src/two.rs") && !b.contains("end"));
    assert!(section(doc, "c").is_none());
    assert_eq!(kebab("TrainPrior"), "train-prior");
}
