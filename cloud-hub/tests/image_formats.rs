//! Images as people build them, through `fleetctl images import` against a real hub: what is
//! given is detected and said, a `--format` that does not match is refused, the image's own
//! configuration is kept and used by a release that names only the image, multi-architecture
//! indexes give the platform asked for, gzip and zstd layers, and digests are checked. The
//! `docker save` archives and OCI layouts are written here with the `tar` crate.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

fn fleetctl(hub: &Hub, args: &[&str]) -> (bool, String, String) {
    fleetctl_as(hub, &hub.token, args)
}

/// `fleetctl --json images import PATH ARGS…`, off the async runtime.
async fn import(hub: &Hub, path: &Path, args: &[&str]) -> (bool, String, String) {
    let h = hub.clone_handle();
    let mut a: Vec<String> = ["--json", "images", "import"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(path.display().to_string());
    a.extend(args.iter().map(|s| s.to_string()));
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        fleetctl(&h, &a)
    })
    .await
    .expect("join")
}

fn json_of(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A tar of `entries` (a name ending in `/` is a directory).
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, d) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(d.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        if p.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
        }
        h.set_cksum();
        b.append_data(&mut h, p, *d).expect("append");
    }
    b.into_inner().expect("tar")
}

fn sha(d: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(d)))
}

fn gzip(d: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, d).expect("gz");
    gz.finish().expect("gz")
}

/// The root file system of the test image, as a layer.
fn rootfs_layer(script: &str) -> Vec<u8> {
    tar_of(&[("app/", b""), ("app/run.sh", script.as_bytes())])
}

/// The same root file system as a directory.
fn rootfs_dir(at: &Path, script: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(at.join("app")).expect("mkdir");
    std::fs::write(at.join("app/run.sh"), script).expect("write");
    std::fs::set_permissions(at.join("app"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::set_permissions(
        at.join("app/run.sh"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
}

/// An image configuration as `docker build` writes it.
fn config(arch: &str, diff_ids: &[String]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/sh", "app/run.sh"],
            "Cmd": ["--serve"],
            "Env": ["PATH=/bin", "MODE=image"],
            "WorkingDir": "/app",
            "User": "1000:1000",
            "ExposedPorts": {"8080/tcp": {}}
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .expect("json")
}

/// A `docker save` archive (the classic layout: `manifest.json`, a config, `*/layer.tar`).
fn docker_save(layer: &[u8], diff_id: &str) -> Vec<u8> {
    let cfg = config("amd64", &[diff_id.to_string()]);
    let manifest =
        json!([{"Config": "cfg.json", "RepoTags": ["app:1"], "Layers": ["abc/layer.tar"]}]);
    let manifest = serde_json::to_vec(&manifest).expect("json");
    tar_of(&[
        ("abc/", b""),
        ("abc/layer.tar", layer),
        ("cfg.json", &cfg),
        ("manifest.json", &manifest),
    ])
}

/// An OCI image layout being written: blobs by digest and a top-level index.
#[derive(Default)]
struct Layout {
    blobs: Vec<(String, Vec<u8>)>,
}

impl Layout {
    fn blob(&mut self, media: &str, data: Vec<u8>) -> Value {
        let d = sha(&data);
        let desc = json!({"mediaType": media, "digest": d, "size": data.len()});
        self.blobs.push((d, data));
        desc
    }

    /// An image of one layer (`media` says its compression) for `arch`; its descriptor.
    fn image(&mut self, arch: &str, layer: &[u8], media: &str, stored: Vec<u8>) -> Value {
        let cfg = config(arch, &[sha(layer)]);
        let cfg = self.blob("application/vnd.oci.image.config.v1+json", cfg);
        let l = self.blob(media, stored);
        let m = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": cfg,
            "layers": [l],
        });
        let m = serde_json::to_vec(&m).expect("json");
        let mut desc = self.blob("application/vnd.oci.image.manifest.v1+json", m);
        desc["platform"] = json!({"architecture": arch, "os": "linux"});
        desc
    }

    fn index(manifests: Vec<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        }))
        .expect("json")
    }

    fn write_dir(&self, at: &Path, index: &[u8]) {
        std::fs::create_dir_all(at.join("blobs/sha256")).expect("mkdir");
        std::fs::write(at.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
        std::fs::write(at.join("index.json"), index).expect("write");
        for (d, data) in &self.blobs {
            let hex = d.trim_start_matches("sha256:");
            std::fs::write(at.join("blobs/sha256").join(hex), data).expect("write");
        }
    }

    fn to_tar(&self, index: &[u8]) -> Vec<u8> {
        let names: Vec<(String, &[u8])> = self
            .blobs
            .iter()
            .map(|(d, data)| {
                let hex = d.trim_start_matches("sha256:");
                (format!("blobs/sha256/{hex}"), &data[..])
            })
            .collect();
        let mut entries: Vec<(&str, &[u8])> = vec![
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            ("index.json", index),
            ("blobs/", b""),
            ("blobs/sha256/", b""),
        ];
        entries.extend(names.iter().map(|(n, d)| (n.as_str(), *d)));
        tar_of(&entries)
    }
}

/// Every stored blob file under the hub's data directory.
fn stored_blobs(hub: &Hub) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![hub.dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".tar.zst") {
                out.push(p);
            }
        }
    }
    out
}

async fn image_count(hub: &Hub) -> usize {
    let v = hub
        .admin(reqwest::Method::GET, "/api/v1/images", None)
        .await;
    v.as_array().expect("list").len()
}

const SCRIPT: &str = "#!/bin/sh\necho hello\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleetctl_detects_each_kind_of_image_and_says_what_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let tree = dir.path().join("tree");
    rootfs_dir(&tree, SCRIPT);
    let layer = rootfs_layer(SCRIPT);
    let plain = dir.path().join("rootfs.tar");
    std::fs::write(&plain, &layer).expect("write");
    let docker = dir.path().join("docker.tar");
    std::fs::write(&docker, docker_save(&layer, &sha(&layer))).expect("write");
    let mut l = Layout::default();
    let m = l.image(
        "amd64",
        &layer,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        gzip(&layer),
    );
    let index = Layout::index(vec![m]);
    let oci_dir = dir.path().join("oci");
    l.write_dir(&oci_dir, &index);
    let oci_tar = dir.path().join("oci.tar");
    std::fs::write(&oci_tar, l.to_tar(&index)).expect("write");

    let (ok, out, err) = import(&hub, &tree, &["--name", "dir", "--arch", "x86_64"]).await;
    assert!(ok, "{err}");
    assert!(err.contains("a directory tree"), "{err}");
    let want = json_of(&out)["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    for (path, what, fmt, arch) in [
        (&plain, "a plain tar of a root file system", "tar", "x86_64"),
        (&docker, "a docker save archive", "docker", "x86_64"),
        (&oci_dir, "an OCI image layout", "oci", "x86_64"),
        (&oci_tar, "an OCI image layout", "oci", "x86_64"),
    ] {
        let (ok, out, err) = import(&hub, path, &["--name", fmt]).await;
        assert!(ok, "{}: {err}", path.display());
        assert!(err.contains(what), "{}: {err}", path.display());
        let v = json_of(&out);
        assert_eq!(v["digest"], want.as_str(), "{}: {v}", path.display());
        assert_eq!(v["format"], fmt, "{v}");
        assert_eq!(v["arch"], arch, "{v}");
        if fmt != "tar" {
            let c = &v["config"];
            assert_eq!(c["entrypoint"], json!(["/bin/sh", "app/run.sh"]), "{v}");
            assert_eq!(c["cmd"], json!(["--serve"]), "{v}");
            assert_eq!(c["env"], json!(["PATH=/bin", "MODE=image"]), "{v}");
            assert_eq!(c["working_dir"], "/app", "{v}");
            assert_eq!(c["user"], "1000:1000", "{v}");
        }
    }
    // A matching --format is taken, on a directory layout too.
    let (ok, _, err) = import(&hub, &oci_dir, &["--name", "o", "--format", "oci"]).await;
    assert!(ok, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_that_does_not_match_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let tree = dir.path().join("tree");
    rootfs_dir(&tree, SCRIPT);
    let layer = rootfs_layer(SCRIPT);
    let docker = dir.path().join("docker.tar");
    std::fs::write(&docker, docker_save(&layer, &sha(&layer))).expect("write");
    let not_tar = dir.path().join("notes.txt");
    std::fs::write(&not_tar, vec![b'x'; 4096]).expect("write");
    for (path, format, says) in [
        (&docker, "tar", "it is a docker save archive"),
        (&tree, "oci", "it is a directory tree"),
        (&tree, "docker", "it is a directory tree"),
        (&not_tar, "tar", "is not a tar archive"),
    ] {
        let (ok, _, err) = import(&hub, path, &["--name", "x", "--format", format]).await;
        assert!(!ok, "{} as {format} was taken", path.display());
        assert!(err.contains(says), "{}: {err}", path.display());
    }
    // The hub checks too: a docker save archive posted as a plain tar.
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/images?name=x&format=tar&arch=x86_64",
            hub.http
        ))
        .bearer_auth(&hub.token)
        .body(std::fs::read(&docker).expect("read"))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    let text = resp.text().await.expect("body");
    assert!(text.contains("does not match"), "{text}");
    assert_eq!(image_count(&hub).await, 0);
    assert!(stored_blobs(&hub).is_empty(), "{:?}", stored_blobs(&hub));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_multi_arch_index_gives_the_platform_asked_for() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let arm = rootfs_layer("#!/bin/sh\necho arm\n");
    let amd = rootfs_layer("#!/bin/sh\necho amd\n");
    let mut l = Layout::default();
    // arm64 layer zstd-compressed, amd64 gzip; an attestation-like entry for no platform.
    let zst = zstd::encode_all(&arm[..], 3).expect("zstd");
    let m_arm = l.image(
        "arm64",
        &arm,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        zst,
    );
    let m_amd = l.image(
        "amd64",
        &amd,
        "application/vnd.oci.image.layer.v1.tar+gzip",
        gzip(&amd),
    );
    let mut att = l.blob("application/vnd.oci.image.manifest.v1+json", b"{}".to_vec());
    att["platform"] = json!({"architecture": "unknown", "os": "unknown"});
    let nested = Layout::index(vec![m_amd, m_arm, att]);
    let inner = l.blob("application/vnd.oci.image.index.v1+json", nested);
    let oci = dir.path().join("multi.tar");
    std::fs::write(&oci, l.to_tar(&Layout::index(vec![inner]))).expect("write");

    let (ok, _, err) = import(&hub, &oci, &["--name", "m"]).await;
    assert!(
        !ok,
        "an index of two platforms was taken without one chosen"
    );
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64") && err.contains("--platform"),
        "{err}"
    );
    let (ok, out, err) = import(&hub, &oci, &["--name", "m", "--platform", "linux/arm64"]).await;
    assert!(ok, "{err}");
    let v = json_of(&out);
    assert_eq!(v["arch"], "aarch64", "{v}");
    let (ok, out2, err) = import(&hub, &oci, &["--name", "m", "--arch", "amd64"]).await;
    assert!(ok, "{err}");
    let v2 = json_of(&out2);
    assert_eq!(v2["arch"], "x86_64", "{v2}");
    assert_ne!(v["digest"], v2["digest"]);
    // The arm64 image is the arm content: the same as that tree imported as a plain tar.
    let plain = dir.path().join("arm.tar");
    std::fs::write(&plain, &arm).expect("write");
    let (ok, out3, err) = import(&hub, &plain, &["--name", "p", "--arch", "arm64"]).await;
    assert!(ok, "{err}");
    assert_eq!(json_of(&out3)["digest"], v["digest"]);
    // The API takes the OCI platform names too.
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/images?name=api&arch=linux/arm64",
            hub.http
        ))
        .bearer_auth(&hub.token)
        .body(std::fs::read(&oci).expect("read"))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 201);
    let v4: Value = resp.json().await.expect("json");
    assert_eq!(v4["digest"], v["digest"], "{v4}");
    assert_eq!(v4["format"], "oci", "{v4}");
    let (ok, _, err) = import(&hub, &oci, &["--name", "m", "--platform", "linux/riscv64"]).await;
    assert!(!ok);
    assert!(err.contains("no riscv64 platform"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_that_does_not_match_its_digest_stores_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let layer = rootfs_layer(SCRIPT);
    let other = rootfs_layer("#!/bin/sh\necho tampered\n");
    // OCI: the blob file of the layer holds other bytes than its name says.
    let mut l = Layout::default();
    let m = l.image(
        "amd64",
        &layer,
        "application/vnd.oci.image.layer.v1.tar",
        layer.clone(),
    );
    let ld = sha(&layer);
    for (d, data) in &mut l.blobs {
        if *d == ld {
            *data = other.clone();
        }
    }
    let oci = dir.path().join("bad-oci.tar");
    std::fs::write(&oci, l.to_tar(&Layout::index(vec![m]))).expect("write");
    let (ok, _, err) = import(&hub, &oci, &["--name", "bad"]).await;
    assert!(!ok);
    assert!(err.contains("does not match its digest"), "{err}");
    // docker save: a layer whose content is not the configuration's diff_id.
    let docker = dir.path().join("bad-docker.tar");
    std::fs::write(&docker, docker_save(&other, &sha(&layer))).expect("write");
    let (ok, _, err) = import(&hub, &docker, &["--name", "bad"]).await;
    assert!(!ok);
    assert!(err.contains("the configuration says"), "{err}");
    assert_eq!(image_count(&hub).await, 0);
    assert!(stored_blobs(&hub).is_empty(), "{:?}", stored_blobs(&hub));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_names_only_the_image_runs_its_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let layer = rootfs_layer(SCRIPT);
    let docker = dir.path().join("docker.tar");
    std::fs::write(&docker, docker_save(&layer, &sha(&layer))).expect("write");
    let (ok, out, err) = import(&hub, &docker, &["--name", "app"]).await;
    assert!(ok, "{err}");
    let digest = json_of(&out)["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let rel = dir.path().join("release.toml");
    std::fs::write(
        &rel,
        format!(
            "name = \"app\"\nversion = \"1\"\n[[workloads]]\nname = \"svc\"\nimage = \"{digest}\"\n\
             [workloads.env]\nMODE = \"release\"\n"
        ),
    )
    .expect("write");
    let h = hub.clone_handle();
    let r = rel.display().to_string();
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || fleetctl(&h, &["--json", "releases", "create", &r]))
            .await
            .expect("join");
    assert!(ok, "{err}");
    let w = &json_of(&out)["workloads"][0];
    assert_eq!(
        w["command"],
        json!(["/bin/sh", "app/run.sh", "--serve"]),
        "{w}"
    );
    assert_eq!(w["env"]["PATH"], "/bin", "{w}");
    assert_eq!(w["env"]["MODE"], "release", "the release's env wins: {w}");
    // An image with no configuration (a plain directory) still needs a command.
    let tree = dir.path().join("tree");
    rootfs_dir(&tree, "#!/bin/sh\necho bare\n");
    let (ok, out, err) = import(&hub, &tree, &["--name", "bare", "--arch", "x86_64"]).await;
    assert!(ok, "{err}");
    let bare = json_of(&out)["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let (status, v) = hub
        .call(
            reqwest::Method::POST,
            "/api/v1/releases",
            Some(&hub.token),
            Some(
                json!({"name": "b", "version": "1", "workloads": [{"name": "svc", "image": bare}]}),
            ),
        )
        .await;
    assert_eq!(status, 400, "{v}");
}
