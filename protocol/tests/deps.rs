//! Invariant: `protocol` is sans-IO. This fails if the crate's normal dependency tree gains an
//! async runtime, a database, an HTTP stack or an MQTT client.

use std::process::Command;

const FORBIDDEN: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "mio",
    "rusqlite",
    "libsqlite3-sys",
    "sqlx",
    "diesel",
    "reqwest",
    "hyper",
    "axum",
    "ureq",
    "rumqttc",
    "rumqttd",
    "paho-mqtt",
];

#[test]
fn protocol_has_no_io_dependencies() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "protocol",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"protocol"),
        "unexpected cargo tree output:\n{tree}"
    );
    assert!(
        names.contains(&"ed25519-dalek"),
        "tree looks incomplete:\n{tree}"
    );
    let bad: Vec<&&str> = FORBIDDEN.iter().filter(|f| names.contains(f)).collect();
    assert!(
        bad.is_empty(),
        "protocol must stay sans-IO, but depends on {bad:?}; move that code to cloud-hub or edge-agent"
    );
}
