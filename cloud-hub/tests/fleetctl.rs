//! `fleetctl` against the real hub: the operator's path from an image directory to a deployment,
//! table and JSON output, and clear errors.

mod common;

use common::*;

fn fleetctl(hub: &Hub, args: &[&str]) -> (bool, String, String) {
    fleetctl_as(hub, &hub.token, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_imports_releases_and_deploys_with_fleetctl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let t = hub
        .enroll_token(serde_json::json!({"site": "north"}), 3600)
        .await;
    hub.enroll(&t, "gw-cli", 7).await.expect("enroll");
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("app")).expect("mkdir");
    std::fs::write(tree.join("app/run.sh"), "#!/bin/sh\nexec sleep 100\n").expect("write");
    let h = hub.clone_handle();
    let tree2 = tree.clone();
    let (ok, out, err) = tokio::task::spawn_blocking(move || {
        fleetctl(
            &h,
            &[
                "--json",
                "images",
                "import",
                tree2.to_str().expect("utf8"),
                "--name",
                "app",
            ],
        )
    })
    .await
    .expect("join");
    assert!(ok, "{err}");
    assert!(err.contains("100%"), "no progress shown: {err}");
    let img: serde_json::Value = serde_json::from_str(&out).expect("json");
    let digest = img["digest"].as_str().expect("digest").to_string();
    let rel = dir.path().join("release.toml");
    std::fs::write(&rel, format!("name = \"app\"\nversion = \"1\"\n[[workloads]]\nname = \"svc\"\nimage = \"{digest}\"\ncommand = [\"app/run.sh\"]\n")).expect("write");
    let h = hub.clone_handle();
    let run = move |args: Vec<String>| {
        let h = h.clone_handle();
        move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            fleetctl(&h, &a)
        }
    };
    let (ok, out, err) = tokio::task::spawn_blocking(run(vec![
        "releases".into(),
        "create".into(),
        rel.display().to_string(),
    ]))
    .await
    .expect("join");
    assert!(ok, "{err}");
    assert!(out.contains("\"id\": 1"), "{out}");
    let (ok, _, err) = tokio::task::spawn_blocking(run(vec![
        "groups".into(),
        "put".into(),
        "north".into(),
        "--selector".into(),
        "site=north".into(),
    ]))
    .await
    .expect("join");
    assert!(ok, "{err}");
    let (ok, out, err) = tokio::task::spawn_blocking(run(vec![
        "deployments".into(),
        "create".into(),
        "--release".into(),
        "1".into(),
        "--group".into(),
        "north".into(),
    ]))
    .await
    .expect("join");
    assert!(ok, "{err}");
    assert!(
        out.contains("\"marked\": 1"),
        "the deployment marked gw-cli for the publisher: {out}"
    );
    let (ok, out, _) = tokio::task::spawn_blocking(run(vec!["devices".into(), "list".into()]))
        .await
        .expect("join");
    assert!(ok);
    let header = out.lines().next().unwrap_or("");
    assert!(
        header.starts_with("ID") && header.contains("DESIRED"),
        "{out}"
    );
    assert!(
        out.lines().nth(1).unwrap_or("").starts_with("gw-cli"),
        "{out}"
    );
    // A bad request: clear error, non-zero exit.
    let (ok, _, err) = tokio::task::spawn_blocking(run(vec![
        "deployments".into(),
        "create".into(),
        "--release".into(),
        "99".into(),
        "--group".into(),
        "north".into(),
    ]))
    .await
    .expect("join");
    assert!(!ok);
    assert!(err.contains("unknown release 99"), "{err}");
    let (ok, out, _) = tokio::task::spawn_blocking(run(vec!["audit".into(), "verify".into()]))
        .await
        .expect("join");
    assert!(ok && out.contains("\"ok\": true"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sets_and_clears_maintenance_windows_with_fleetctl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let t = hub
        .enroll_token(serde_json::json!({"site": "north"}), 3600)
        .await;
    hub.enroll(&t, "gw-win", 8).await.expect("enroll");
    let run = |args: &'static [&'static str]| {
        let h = hub.clone_handle();
        tokio::task::spawn_blocking(move || fleetctl(&h, args))
    };
    let (ok, _, err) = run(&["groups", "put", "north", "--selector", "site=north"])
        .await
        .expect("join");
    assert!(ok, "{err}");
    let (ok, out, err) = run(&[
        "groups",
        "maintenance",
        "north",
        "--cron",
        "0 0 3 * * *",
        "--duration",
        "3600",
    ])
    .await
    .expect("join");
    assert!(ok, "{err}");
    assert!(out.contains("0 0 3 * * *"), "{out}");
    let (ok, _, err) = run(&[
        "devices",
        "maintenance",
        "gw-win",
        "--cron",
        "0 30 1 * * *",
        "--duration",
        "600",
    ])
    .await
    .expect("join");
    assert!(ok, "{err}");
    let (ok, out, _) = run(&["devices", "show", "gw-win", "--field", "maintenance.cron"])
        .await
        .expect("join");
    assert!(ok);
    assert_eq!(out.trim(), "0 30 1 * * *");
    // A bad cron expression: clear error, non-zero exit, nothing changed.
    let (ok, _, err) = run(&[
        "devices",
        "maintenance",
        "gw-win",
        "--cron",
        "not cron",
        "--duration",
        "600",
    ])
    .await
    .expect("join");
    assert!(!ok);
    assert!(err.contains("400"), "{err}");
    let (_, out, _) = run(&["devices", "show", "gw-win", "--field", "maintenance.cron"])
        .await
        .expect("join");
    assert_eq!(out.trim(), "0 30 1 * * *");
    // Clearing.
    let (ok, _, err) = run(&["devices", "maintenance", "gw-win", "--clear"])
        .await
        .expect("join");
    assert!(ok, "{err}");
    let (_, out, _) = run(&["devices", "show", "gw-win", "--field", "maintenance"])
        .await
        .expect("join");
    assert_eq!(out.trim(), "");
    let (ok, _, err) = run(&["groups", "maintenance", "north", "--clear"])
        .await
        .expect("join");
    assert!(ok, "{err}");
    let (_, out, _) = run(&["groups", "list", "--json"]).await.expect("join");
    assert!(out.contains("\"maintenance\": null"), "{out}");
}
