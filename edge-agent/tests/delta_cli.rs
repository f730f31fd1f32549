//! `edge-agent delta apply` as an operator runs it on a gateway with a side-loaded delta: the
//! real binary, tars built with the `tar` crate, the delta made with `fleet_delta::create`. Every
//! refusal exits with its documented code, says why, and leaves no file at the output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, data.as_slice())
            .expect("append");
    }
    b.into_inner().expect("finish tar")
}

/// A release: a start script and a version file that name `version`, and a library whose
/// bytes at `patch` are patched with the version (as a rebuilt binary would be).
fn release(version: &str, patch: usize) -> Vec<u8> {
    let mut lib: Vec<u8> = (0..150_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    lib[patch..patch + version.len()].copy_from_slice(version.as_bytes());
    tar_of(&[
        (
            "app/run.sh",
            format!("#!/bin/sh\nexec app --{version}\n").into_bytes(),
        ),
        ("app/lib.so", lib),
        (
            "app/VERSION",
            format!("{version}\n").repeat(40).into_bytes(),
        ),
    ])
}

struct Fixture {
    dir: tempfile::TempDir,
    old: PathBuf,
    new: Vec<u8>,
    delta: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = dir.path().join("old.tar");
        let new_path = dir.path().join("new-source.tar");
        std::fs::write(&old, release("v1", 1000)).expect("write old");
        let new = release("v2", 1000);
        std::fs::write(&new_path, &new).expect("write new");
        let delta = dir.path().join("v1-v2.delta");
        let mut f = std::fs::File::create(&delta).expect("create delta");
        fleet_delta::create(&old, &new_path, &mut f, &Default::default()).expect("create");
        Fixture {
            dir,
            old,
            new,
            delta,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Names in the directory other than the fixture's own files: what a run left behind.
    fn left_behind(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| {
                !["old.tar", "new-source.tar", "v1-v2.delta", "other.tar"].contains(&n.as_str())
            })
            .filter(|n| !n.starts_with("keep"))
            .collect()
    }
}

fn apply(old: &Path, delta: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edge-agent"))
        .args(["delta", "apply"])
        .arg(old)
        .arg(delta)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .expect("run edge-agent")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn delta_apply_rebuilds_the_new_tar_byte_for_byte_and_prints_its_digest() {
    let f = Fixture::new();
    let out = f.path("new.tar");
    let o = apply(&f.old, &f.delta, &out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        std::fs::read(&out).expect("output written") == f.new,
        "output differs"
    );
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&f.new))
    };
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&digest), "{stdout}");
    assert_eq!(f.left_behind(), vec!["new.tar".to_string()]);
}

#[test]
fn delta_apply_against_another_base_exits_3_names_the_base_and_writes_nothing() {
    let f = Fixture::new();
    let other = f.path("other.tar");
    std::fs::write(&other, release("v0", 5000)).expect("write other");
    let out = f.path("new.tar");
    let o = apply(&other, &f.delta, &out, &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let msg = stderr(&o);
    assert!(
        msg.contains("other.tar") && msg.contains("not the base"),
        "{msg}"
    );
    assert!(msg.contains("another base image"), "{msg}");
    assert!(!out.exists());
    assert!(f.left_behind().is_empty(), "{:?}", f.left_behind());
}

#[test]
fn delta_apply_of_a_truncated_or_garbled_delta_exits_4_and_writes_nothing() {
    let f = Fixture::new();
    let bytes = std::fs::read(&f.delta).expect("read delta");
    let out = f.path("new.tar");
    for (name, cut) in [
        ("keep-cut-header", bytes[..40].to_vec()),
        ("keep-cut-middle", bytes[..bytes.len() / 2].to_vec()),
        ("keep-cut-last-byte", bytes[..bytes.len() - 1].to_vec()),
        ("keep-not-a-delta", b"just some text, not a delta".to_vec()),
    ] {
        let d = f.path(name);
        std::fs::write(&d, cut).expect("write");
        let o = apply(&f.old, &d, &out, &[]);
        assert_eq!(o.status.code(), Some(4), "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains(name), "{name}: {}", stderr(&o));
        assert!(!out.exists(), "{name}");
        assert!(f.left_behind().is_empty(), "{name}: {:?}", f.left_behind());
    }
}

#[test]
fn delta_apply_exits_5_when_the_result_does_not_match_the_recorded_target_digest() {
    let f = Fixture::new();
    let mut bytes = std::fs::read(&f.delta).expect("read delta");
    // The target SHA-256 sits at bytes 57..89 of the header (docs/DELTA.md, "Format").
    bytes[60] ^= 0x01;
    let d = f.path("keep-wrong-digest");
    std::fs::write(&d, bytes).expect("write");
    let out = f.path("new.tar");
    let o = apply(&f.old, &d, &out, &[]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("does not match"), "{}", stderr(&o));
    assert!(!out.exists());
    assert!(f.left_behind().is_empty(), "{:?}", f.left_behind());
}

#[test]
fn delta_apply_keeps_an_existing_output_unless_forced() {
    let f = Fixture::new();
    let out = f.path("keep-existing.tar");
    std::fs::write(&out, b"precious").expect("write");
    let o = apply(&f.old, &f.delta, &out, &[]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("--force"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).expect("read"), b"precious");

    let o = apply(&f.old, &f.delta, &out, &["--force"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(std::fs::read(&out).expect("read") == f.new);
    assert!(f.left_behind().is_empty(), "{:?}", f.left_behind());
}
