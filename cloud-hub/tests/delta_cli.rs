//! `fleetctl delta create` and `inspect` as a user runs them: real tars, the real binary, no
//! hub; the delta it writes is checked by applying it with the library.

use std::path::Path;
use std::process::{Command, Output};

/// A tar of `files` (path, contents), built with the `tar` crate.
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

/// An old and a new release: one file edited, one added, one removed.
fn two_releases(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let lib: Vec<u8> = (0..200_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut lib2 = lib.clone();
    lib2[1000..1010].copy_from_slice(b"version 2!");
    let old = tar_of(&[
        ("app/run.sh", b"#!/bin/sh\nexec app --v1\n".to_vec()),
        ("app/lib.so", lib),
        ("app/old.txt", b"gone in v2\n".repeat(50)),
    ]);
    let new = tar_of(&[
        ("app/run.sh", b"#!/bin/sh\nexec app --v2\n".to_vec()),
        ("app/lib.so", lib2),
        ("app/new.txt", b"new in v2\n".repeat(80)),
    ]);
    let (o, n) = (dir.join("old.tar"), dir.join("new.tar"));
    std::fs::write(&o, old).expect("write old");
    std::fs::write(&n, new).expect("write new");
    (o, n)
}

/// Runs fleetctl with no hub reachable and a token file that does not exist: `delta` must need
/// neither.
fn fleetctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .env("FLEET_HUB_URL", "http://127.0.0.1:9")
        .env("FLEET_TOKEN", "@/nonexistent/fleet-token")
        .args(args)
        .output()
        .expect("run fleetctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn fleetctl_delta_create_writes_a_delta_that_rebuilds_the_new_tar_without_a_hub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = two_releases(dir.path());
    let d = dir.path().join("v1-v2.delta");
    let out = fleetctl(&[
        "delta",
        "create",
        old.to_str().expect("utf-8"),
        new.to_str().expect("utf-8"),
        "-o",
        d.to_str().expect("utf-8"),
    ]);
    assert!(
        out.status.success(),
        "fleetctl failed: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let delta_size = std::fs::metadata(&d).expect("delta written").len();
    assert!(
        stdout.contains(&format!("delta size   {delta_size}")),
        "{stdout}"
    );
    assert!(stdout.contains("ratio"), "{stdout}");
    let new_bytes = std::fs::read(&new).expect("read new");
    assert!(
        delta_size < new_bytes.len() as u64 / 10,
        "delta {delta_size} bytes"
    );
    // Nothing but the delta is left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");

    let mut base = std::fs::File::open(&old).expect("open old");
    let delta = std::fs::File::open(&d).expect("open delta");
    let mut rebuilt = Vec::new();
    let applied = fleet_delta::apply(&mut base, delta, &mut rebuilt, &Default::default())
        .expect("the delta applies to its base");
    assert!(rebuilt == new_bytes, "rebuilt image differs from new.tar");

    let out = fleetctl(&["--json", "delta", "inspect", d.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "inspect failed: {}",
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    assert_eq!(v["format_version"], 2);
    assert_eq!(v["target_size"], new_bytes.len() as u64);
    assert_eq!(v["target_sha256"], hex::encode(applied.target_sha256));
    assert_eq!(v["base_sha256"], hex::encode(applied.base_sha256));
    assert_eq!(v["base_size"], std::fs::metadata(&old).expect("old").len());
}

#[test]
fn fleetctl_delta_create_refuses_to_overwrite_unless_forced_and_reports_bad_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = two_releases(dir.path());
    let d = dir.path().join("d");
    std::fs::write(&d, b"keep me").expect("write");
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "delta".to_string(),
            "create".into(),
            old.display().to_string(),
            new.display().to_string(),
            "-o".into(),
            d.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| fleetctl(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(args(&[]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read(&d).expect("read"), b"keep me");

    let out = run(args(&["--force"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(&std::fs::read(&d).expect("read")[..8], b"FLTDELTA");

    // A missing input names the file and leaves nothing behind.
    let missing = dir.path().join("missing.tar");
    let out2 = dir.path().join("d2");
    let out = fleetctl(&[
        "delta",
        "create",
        missing.to_str().expect("utf-8"),
        new.to_str().expect("utf-8"),
        "-o",
        out2.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("missing.tar"),
        "{}",
        text(&out.stderr)
    );
    assert!(!out2.exists());
    let stray: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "temporary files left: {stray:?}");

    // inspect on something that is not a delta says so.
    let out = fleetctl(&["delta", "inspect", old.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a fleet delta"),
        "{}",
        text(&out.stderr)
    );
}
