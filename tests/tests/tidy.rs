//! Repository rules, checked by an ordinary test:
//! - a source file (any `*.rs` under a `src/` directory; integration tests under `tests/` are
//!   exempt) has at most 600 lines, unless one of its first lines says why it needs more:
//!   `// tidy: long-file — <reason>`;
//! - every crate in the workspace inherits the workspace's lints and `rust-version`.

use std::path::{Path, PathBuf};

/// The most lines a source file may have without a written reason.
const MAX_LINES: usize = 600;
/// How many lines at the top of a file are searched for the marker.
const MARKER_WITHIN: usize = 5;
/// The marker, followed by `—` (or `-`) and the reason.
const MARKER: &str = "// tidy: long-file";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace root")
        .to_path_buf()
}

/// Every `*.rs` file below `dir` that lies under a `src/` directory, skipping build output and
/// hidden directories.
fn source_files(dir: &Path, in_src: bool, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let file_type = entry
            .file_type()
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
        if file_type.is_dir() {
            if name == "target" || name.starts_with('.') {
                continue;
            }
            source_files(&path, in_src || name == "src", out);
        } else if file_type.is_file() && in_src && name.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The reason a file gives for being long, if its first lines carry the marker with one.
fn long_file_reason(text: &str) -> Option<&str> {
    text.lines().take(MARKER_WITHIN).find_map(|line| {
        let rest = line.trim().strip_prefix(MARKER)?;
        let reason = rest.trim_start().strip_prefix(['—', '-'])?.trim();
        (!reason.is_empty()).then_some(reason)
    })
}

/// The files over the limit without a reason, as `path: N lines`.
fn long_files_without_reason(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    source_files(root, false, &mut files);
    assert!(
        files.len() > 10,
        "found only {} source files under {}: the walk is broken",
        files.len(),
        root.display()
    );
    let mut bad = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let lines = text.lines().count();
        if lines > MAX_LINES && long_file_reason(&text).is_none() {
            let shown = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .display()
                .to_string();
            bad.push(format!("{shown}: {lines} lines"));
        }
    }
    bad.sort();
    bad
}

#[test]
fn source_files_stay_under_600_lines_unless_they_say_why() {
    let bad = long_files_without_reason(&workspace_root());
    assert!(
        bad.is_empty(),
        "source files over {MAX_LINES} lines: split them, or put `{MARKER} — <reason>` in their \
         first {MARKER_WITHIN} lines:\n  {}",
        bad.join("\n  ")
    );
}

#[test]
fn the_marker_needs_a_reason() {
    assert_eq!(
        long_file_reason("//! Docs.\n// tidy: long-file — one table of cases\nfn f() {}\n"),
        Some("one table of cases")
    );
    assert_eq!(
        long_file_reason("// tidy: long-file - generated\n"),
        Some("generated")
    );
    assert_eq!(long_file_reason("// tidy: long-file\n"), None);
    assert_eq!(long_file_reason("// tidy: long-file —   \n"), None);
    assert_eq!(
        long_file_reason("1\n2\n3\n4\n5\n// tidy: long-file — too far down\n"),
        None
    );
}

#[test]
fn every_crate_inherits_the_workspace_lints_and_rust_version() {
    let root = workspace_root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("read Cargo.toml");
    let members = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("members = ["))
        .expect("a one-line `members = [...]` in Cargo.toml");
    let members: Vec<&str> = members
        .trim_end_matches(']')
        .split(',')
        .map(|m| m.trim().trim_matches('"'))
        .filter(|m| !m.is_empty())
        .collect();
    assert!(members.len() >= 4, "members: {members:?}");
    let mut bad = Vec::new();
    for m in members {
        let text = std::fs::read_to_string(root.join(m).join("Cargo.toml"))
            .unwrap_or_else(|e| panic!("read {m}/Cargo.toml: {e}"));
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        if !lines.contains(&"rust-version.workspace = true") {
            bad.push(format!("{m}: no `rust-version.workspace = true`"));
        }
        let lints = lines
            .iter()
            .position(|l| *l == "[lints]")
            .and_then(|i| lines.get(i + 1));
        if lints != Some(&"workspace = true") {
            bad.push(format!("{m}: no `[lints]` with `workspace = true`"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
