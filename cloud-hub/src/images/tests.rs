//! Import tests: digests, layer formats, whiteouts, and what is refused.

use super::*;

fn budget() -> Budget {
    Budget::unlimited_time(Limits::default())
}

fn layer(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, d) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(d.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(12345);
        if p.ends_with('/') {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
        }
        h.set_cksum();
        b.append_data(&mut h, p, *d).expect("append");
    }
    b.into_inner().expect("tar")
}

fn write_tree(root: &Path) {
    std::fs::create_dir_all(root.join("app/lib")).expect("mkdir");
    std::fs::write(root.join("app/run.sh"), b"#!/bin/sh\n").expect("write");
    std::fs::write(root.join("app/lib/data"), b"data").expect("write");
    use std::os::unix::fs::PermissionsExt;
    for p in ["app", "app/lib"] {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    for p in ["app/run.sh", "app/lib/data"] {
        std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
}

#[test]
fn the_same_tree_twice_gives_the_same_digest() {
    let a = tempfile::tempdir().expect("tmp");
    let b = tempfile::tempdir().expect("tmp");
    write_tree(a.path());
    write_tree(b.path());
    let blobs = tempfile::tempdir().expect("tmp");
    let ia = import(blobs.path(), &ImportSource::Dir(a.path().into()), &budget()).expect("import");
    let ib = import(blobs.path(), &ImportSource::Dir(b.path().into()), &budget()).expect("import");
    assert_eq!(ia, ib);
    std::fs::write(b.path().join("app/lib/data"), b"datb").expect("write");
    let ic = import(blobs.path(), &ImportSource::Dir(b.path().into()), &budget()).expect("import");
    assert_ne!(ia.digest, ic.digest);
}

#[test]
fn docker_save_and_oci_layout_give_the_directory_digest() {
    let dir = tempfile::tempdir().expect("tmp");
    write_tree(&dir.path().join("tree"));
    let blobs = dir.path().join("blobs");
    let want = import(
        &blobs,
        &ImportSource::Dir(dir.path().join("tree")),
        &budget(),
    )
    .expect("dir");
    // Two layers: the second adds run.sh and removes a file the first had.
    let l1 = layer(&[
        ("app/", b""),
        ("app/lib/", b""),
        ("app/lib/data", b"data"),
        ("app/old", b"gone"),
    ]);
    let l2 = layer(&[("app/run.sh", b"#!/bin/sh\n"), ("app/.wh.old", b"")]);
    // docker save
    let mut b = tar::Builder::new(Vec::new());
    let manifest =
        br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#;
    let cfg = image_config(&[&l1, &l2]);
    for (p, d) in [
        ("manifest.json", &manifest[..]),
        ("c.json", &cfg[..]),
        ("l1/layer.tar", &l1[..]),
        ("l2/layer.tar", &l2[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(d.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, p, d).expect("append");
    }
    let docker = dir.path().join("docker.tar");
    std::fs::write(&docker, b.into_inner().expect("tar")).expect("write");
    let got = import(&blobs, &ImportSource::DockerSave(docker), &budget()).expect("docker");
    assert_eq!(got.digest, want.digest);
    // OCI layout directory, second layer gzipped.
    let oci = dir.path().join("oci");
    std::fs::create_dir_all(oci.join("blobs/sha256")).expect("mkdir");
    let put = |data: &[u8]| {
        let hex = hex::encode(Sha256::digest(data));
        std::fs::write(oci.join("blobs/sha256").join(&hex), data).expect("write");
        format!("sha256:{hex}")
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &l2).expect("gz");
    let l2gz = gz.finish().expect("gz");
    let cfg = image_config(&[&l1, &l2]);
    let parts = [
        (put(&cfg), cfg.len()),
        (put(&l1), l1.len()),
        (put(&l2gz), l2gz.len()),
    ];
    write_index(&oci, &parts, put);
    let got = import(&blobs, &ImportSource::OciLayout(oci), &budget()).expect("oci");
    assert_eq!(got.digest, want.digest);
}

#[test]
fn opaque_whiteouts_empty_a_directory() {
    let mut t = Tree::new();
    apply_layer(
        &mut t,
        &layer(&[("d/", b""), ("d/a", b"1"), ("d/b", b"2"), ("e", b"3")])[..],
        &budget(),
    )
    .expect("l1");
    apply_layer(
        &mut t,
        &layer(&[("d/.wh..wh..opq", b""), ("d/c", b"4")])[..],
        &budget(),
    )
    .expect("l2");
    let keys: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["d", "d/c", "e"]);
}

#[test]
fn escaping_and_special_layer_entries_are_refused() {
    let mut t = Tree::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_size(0);
    h.set_cksum();
    b.append_data(&mut h, "dev/null", std::io::empty())
        .expect("append");
    assert!(apply_layer(&mut t, &b.into_inner().expect("tar")[..], &budget()).is_err());
    let mut raw = tar::Header::new_gnu();
    raw.as_old_mut().name[..9].copy_from_slice(b"../escape");
    raw.set_size(1);
    raw.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&raw, &b"x"[..]).expect("append");
    assert!(apply_layer(&mut t, &b.into_inner().expect("tar")[..], &budget()).is_err());
}

/// A tar of `(path, kind, link target)` entries with no content.
fn links_tar(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, kind, to) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_size(0);
        h.set_mode(0o755);
        if !to.is_empty() {
            h.set_link_name(to).expect("link name");
        }
        h.set_cksum();
        b.append_data(&mut h, p, std::io::empty()).expect("append");
    }
    b.into_inner().expect("tar")
}

fn import_tar(bytes: &[u8], budget: &Budget) -> anyhow::Result<ImageInfo> {
    let dir = tempfile::tempdir().expect("tmp");
    let src = dir.path().join("in.tar");
    std::fs::write(&src, bytes).expect("write");
    import(&dir.path().join("blobs"), &ImportSource::Tar(src), budget)
}

#[test]
fn images_agents_would_refuse_are_refused_at_import() {
    use tar::EntryType as T;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("absolute link", links_tar(&[("l", T::Symlink, "/etc")])),
        ("escaping link", links_tar(&[("l", T::Symlink, "../../..")])),
        (
            "chain of links each inside, together the root's parent",
            links_tar(&[
                ("d/", T::Directory, ""),
                ("d/up", T::Symlink, ".."),
                ("top", T::Symlink, "d/up/.."),
            ]),
        ),
        (
            "link to a link to '.', then up",
            links_tar(&[("a", T::Symlink, "."), ("b", T::Symlink, "a/..")]),
        ),
        (
            "link loop",
            links_tar(&[("a", T::Symlink, "b"), ("b", T::Symlink, "a")]),
        ),
        (
            "entry through a link",
            links_tar(&[("l", T::Symlink, "."), ("l/x", T::Directory, "")]),
        ),
    ];
    for (name, bytes) in cases {
        let r = import_tar(&bytes, &budget());
        assert!(r.is_err(), "{name}: accepted as {r:?}");
    }
    // Links that stay inside, also through other links, are fine.
    let ok = links_tar(&[
        ("bin/", T::Directory, ""),
        ("bin/busybox", T::Regular, ""),
        ("bin/sh", T::Symlink, "busybox"),
        ("usr/", T::Directory, ""),
        ("usr/bin", T::Symlink, "../bin"),
        ("sh", T::Symlink, "usr/bin/sh"),
    ]);
    import_tar(&ok, &budget()).expect("links inside the root");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, data).expect("gz");
    gz.finish().expect("gz")
}

/// An OCI layout directory whose one layer is `layer` (stored as given).
fn oci_with_layer(dir: &Path, layer: &[u8]) -> PathBuf {
    let oci = dir.join("oci");
    std::fs::create_dir_all(oci.join("blobs/sha256")).expect("mkdir");
    let put = |data: &[u8]| {
        let hex = hex::encode(Sha256::digest(data));
        std::fs::write(oci.join("blobs/sha256").join(&hex), data).expect("write");
        format!("sha256:{hex}")
    };
    let cfg = image_config(&[]);
    let blobs = [(put(&cfg), cfg.len()), (put(layer), layer.len())];
    write_index(&oci, &blobs, put);
    oci
}

/// An image configuration for `layers` (uncompressed), as a build writes it.
fn image_config(layers: &[&[u8]]) -> Vec<u8> {
    let ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", hex::encode(Sha256::digest(l))))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .expect("json")
}

/// Writes the manifest of `blobs` (the config first, then the layers) and an index naming it.
fn write_index(oci: &Path, blobs: &[(String, usize)], put: impl Fn(&[u8]) -> String) {
    let desc = |(d, n): &(String, usize), media: &str| serde_json::json!({"mediaType": media, "digest": d, "size": n});
    let layers: Vec<_> = blobs[1..]
        .iter()
        .map(|b| desc(b, "application/vnd.oci.image.layer.v1.tar"))
        .collect();
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": desc(&blobs[0], "application/vnd.oci.image.config.v1+json"),
        "layers": layers,
    }))
    .expect("json");
    let dm = (put(&m), m.len());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [desc(&dm, "application/vnd.oci.image.manifest.v1+json")],
    });
    std::fs::write(oci.join("index.json"), index.to_string()).expect("write");
}

#[test]
fn a_gzip_bomb_stops_at_the_expanded_size_limit() {
    // 64 MiB of zeros in one file compresses to about 64 KiB.
    let big = layer(&[("zeros", &vec![0u8; 64 << 20][..])]);
    let bomb = gzip(&big);
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    let dir = tempfile::tempdir().expect("tmp");
    let oci = oci_with_layer(dir.path(), &bomb);
    let small = Limits {
        max_bytes: 8 << 20,
        max_entries: 100,
    };
    let err = import(
        &dir.path().join("blobs"),
        &ImportSource::OciLayout(oci.clone()),
        &Budget::unlimited_time(small),
    )
    .expect_err("a bomb past the limit");
    assert!(format!("{err:#}").contains("expands past"), "{err:#}");
    assert!(
        !dir.path().join("blobs").exists()
            || std::fs::read_dir(dir.path().join("blobs"))
                .expect("ls")
                .next()
                .is_none()
    );
    // Within the limit the same layer imports.
    import(
        &dir.path().join("blobs"),
        &ImportSource::OciLayout(oci),
        &budget(),
    )
    .expect("within the limit");
}

#[test]
fn too_many_entries_are_refused() {
    let names: Vec<String> = (0..50).map(|i| format!("f{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 49,
    };
    let err = import_tar(&layer(&entries), &Budget::unlimited_time(limits))
        .expect_err("past the entry limit");
    assert!(
        format!("{err:#}").contains("more than 49 entries"),
        "{err:#}"
    );
    import_tar(&layer(&entries[..49]), &Budget::unlimited_time(limits)).expect("at the limit");
}

#[test]
fn a_cancelled_import_stops_and_stores_nothing() {
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let budget = Budget::new(Limits::default(), cancel);
    let err = import_tar(&layer(&[("a", b"1")]), &budget).expect_err("cancelled");
    assert!(format!("{err:#}").contains("cancelled"), "{err:#}");
}

#[test]
fn replacing_a_directory_removes_only_what_was_below_it() {
    let mut t = Tree::new();
    let l1 = layer(&[
        ("d/", b""),
        ("d/a", b"1"),
        ("d/sub/", b""),
        ("d/sub/b", b"2"),
        ("d-sibling", b"3"),
        ("d0", b"4"),
    ]);
    apply_layer(&mut t, &l1[..], &budget()).expect("l1");
    apply_layer(&mut t, &layer(&[("d", b"now a file")])[..], &budget()).expect("l2");
    let keys: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["d", "d-sibling", "d0"]);
    apply_layer(&mut t, &layer(&[(".wh.d", b"")])[..], &budget()).expect("l3");
    let keys: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["d-sibling", "d0"]);
}

#[test]
fn a_directory_streamed_as_a_tar_is_the_tree_written_whole() {
    let dir = tempfile::tempdir().expect("tmp");
    write_tree(dir.path());
    std::os::unix::fs::symlink("run.sh", dir.path().join("app/link")).expect("symlink");
    let whole = deterministic_tar(&tree_from_dir(dir.path()).expect("tree")).expect("tar");
    let streamed = write_dir_tar(dir.path(), Vec::new()).expect("streamed");
    assert_eq!(whole, streamed);
}

#[test]
fn large_files_kept_in_the_spool_give_the_digest_of_the_tree_in_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let root = dir.path().join("tree");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(root.join("big"), &big).expect("write");
    std::fs::write(root.join("small"), b"s").expect("write");
    use std::os::unix::fs::PermissionsExt;
    for f in ["big", "small"] {
        std::fs::set_permissions(root.join(f), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
    }
    let want =
        store_tree(&dir.path().join("a"), &tree_from_dir(&root).expect("tree")).expect("dir");
    let tar = layer(&[("big", &big[..]), ("small", b"s"), ("again", &big[..])]);
    let mut t = Tree::new();
    let b = budget().spool_in(dir.path().to_path_buf());
    apply_layer(&mut t, &tar[..], &b).expect("layer");
    assert!(matches!(
        t["big"],
        Node::File {
            data: Content::Spooled { .. },
            ..
        }
    ));
    t.remove("again");
    let got = store_spooled(&dir.path().join("b"), &t, &b.spool).expect("spooled");
    assert_eq!(got, want);
}
