//! API tokens through `fleetctl` against the real hub: `--help` never shows the token, a CI token
//! scoped to some actions and groups does the pipeline's work and nothing else, revoked and
//! expired tokens are refused with a clear error, and every refusal changes nothing.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// Runs fleetctl against `hub` with `token`; returns (success, stdout, stderr).
async fn fleetctl(hub: &Hub, token: &str, args: &[&str]) -> (bool, String, String) {
    fleetctl_async(hub, token, args).await
}

/// Makes an API token with fleetctl as the admin; returns the secret.
async fn api_token(hub: &Hub, extra: &[&str]) -> String {
    let mut args = vec!["tokens", "api"];
    args.extend_from_slice(extra);
    let (ok, out, err) = fleetctl(hub, &hub.token, &args).await;
    assert!(ok, "{err}");
    let secret = out.trim().to_string();
    assert!(secret.starts_with("fleet_"), "{out}");
    secret
}

async fn count(hub: &Hub, path: &str) -> usize {
    let v = hub.admin(Method::GET, path, None).await;
    v.as_array().map(Vec::len).unwrap_or(0)
}

#[tokio::test]
async fn help_never_prints_the_token_taken_from_the_environment() {
    for args in [
        &["--help"][..],
        &["devices", "--help"],
        &["tokens", "api", "--help"],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .args(args)
            .env("FLEET_TOKEN", "fleet_the_secret_from_the_environment")
            .output()
            .await
            .expect("run fleetctl");
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("FLEET_TOKEN"), "{args:?}: {text}");
        assert!(
            !text.contains("fleet_the_secret_from_the_environment"),
            "{args:?} printed the token: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ci_token_imports_releases_and_deploys_to_its_group_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    for (g, site) in [("north", "n"), ("south", "s")] {
        hub.admin(
            Method::PUT,
            &format!("/api/v1/groups/{g}"),
            Some(json!({"selector": format!("site={site}")})),
        )
        .await;
    }
    let ci = api_token(
        &hub,
        &[
            "--name",
            "ci",
            "--role",
            "operator",
            "--allow",
            "image.import",
            "--allow",
            "release.create",
            "--allow",
            "deployment.create",
            "--group",
            "north",
        ],
    )
    .await;
    // The pipeline: build (a directory) → import → release → deploy to its group.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).expect("mkdir");
    std::fs::write(tree.join("run.sh"), "#!/bin/sh\nexec sleep 100\n").expect("write");
    let tree_arg = tree.display().to_string();
    let import = ["--json", "images", "import", &tree_arg, "--name", "app"];
    let (ok, out, err) = fleetctl(&hub, &ci, &import).await;
    assert!(ok, "{err}");
    let img: Value = serde_json::from_str(&out).expect("json");
    let digest = img["digest"].as_str().expect("digest");
    let rel = dir.path().join("release.toml");
    std::fs::write(&rel, format!("name = \"app\"\nversion = \"1\"\n[[workloads]]\nname = \"svc\"\nimage = \"{digest}\"\ncommand = [\"./run.sh\"]\n")).expect("write");
    let (ok, _, err) = fleetctl(
        &hub,
        &ci,
        &["releases", "create", rel.to_str().expect("utf8")],
    )
    .await;
    assert!(ok, "{err}");
    let deploy = |target: &'static [&'static str]| {
        let mut a = vec!["deployments", "create", "--release", "1"];
        a.extend_from_slice(target);
        a
    };
    let (ok, _, err) = fleetctl(&hub, &ci, &deploy(&["--group", "north"])).await;
    assert!(ok, "{err}");
    assert_eq!(count(&hub, "/api/v1/deployments").await, 1);

    // Outside its scope: a clear 403, nothing changed.
    let refusals: [(Vec<&str>, &str); 6] = [
        (
            deploy(&["--group", "south"]),
            "may act only on the groups north, not south",
        ),
        (deploy(&["--selector", "site=n"]), "not a selector"),
        (deploy(&["--device", "gw-1"]), "not a device list"),
        (
            vec!["groups", "put", "north", "--selector", "site=x"],
            "may not group.put",
        ),
        (vec!["tokens", "enroll"], "may not enroll_token.create"),
        (
            vec!["tokens", "api", "--name", "x", "--role", "viewer"],
            "token.create needs the admin role",
        ),
    ];
    for (args, why) in &refusals {
        let (ok, _, err) = fleetctl(&hub, &ci, args).await;
        assert!(!ok, "{args:?} was allowed");
        assert!(err.contains("403") && err.contains(why), "{args:?}: {err}");
    }
    assert_eq!(count(&hub, "/api/v1/deployments").await, 1);
    let groups = hub.admin(Method::GET, "/api/v1/groups", None).await;
    assert_eq!(groups[0]["selector"], json!({"site": "n"}), "{groups}");
    // Reads stay open to its role.
    let (ok, _, err) = fleetctl(&hub, &ci, &["devices", "list"]).await;
    assert!(ok, "{err}");
    // Every refusal is in the audit log under the token's name.
    let audit = hub
        .admin(Method::GET, "/api/v1/audit?limit=1000", None)
        .await;
    let denied = audit
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e["actor"] == "ci" && e["outcome"].as_str().unwrap_or("").starts_with("denied"))
        .count();
    assert!(denied >= 4, "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_tokens_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    let ops = api_token(&hub, &["--name", "ops", "--role", "operator"]).await;
    let brief = api_token(
        &hub,
        &["--name", "brief", "--role", "operator", "--ttl", "1"],
    )
    .await;
    let (ok, _, err) = fleetctl(&hub, &ops, &["groups", "put", "a", "--member", "x"]).await;
    assert!(ok, "{err}");

    let (ok, out, err) = fleetctl(&hub, &hub.token, &["--json", "tokens", "list"]).await;
    assert!(ok, "{err}");
    let list: Value = serde_json::from_str(&out).expect("json");
    let id = |name: &str| {
        list.as_array()
            .expect("list")
            .iter()
            .find(|t| t["name"] == name)
            .and_then(|t| t["id"].as_u64())
            .expect("listed")
    };
    assert!(!out.contains(&ops) && !out.contains("hash"), "{out}");
    assert!(list.to_string().contains("\"expires_at\""), "{out}");
    // Only hashes are stored.
    let db = std::fs::read(hub.dir.join("hub.db")).expect("db");
    let db = String::from_utf8_lossy(&db);
    assert!(!db.contains(&ops[6..]) && !db.contains(&hub.token[6..]));

    let (ok, _, err) = fleetctl(
        &hub,
        &hub.token,
        &["tokens", "revoke", &id("ops").to_string()],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = fleetctl(&hub, &ops, &["groups", "put", "a", "--member", "y"]).await;
    assert!(!ok);
    assert!(
        err.contains("401") && err.contains("ops") && err.contains("was revoked"),
        "{err}"
    );
    let (ok, _, err) = fleetctl(&hub, &ops, &["devices", "list"]).await;
    assert!(!ok && err.contains("was revoked"), "{err}");
    let groups = hub.admin(Method::GET, "/api/v1/groups", None).await;
    assert_eq!(groups[0]["members"], json!(["x"]), "{groups}");
    // Revoking twice, or the last admin, is a clear error.
    let (ok, _, err) = fleetctl(
        &hub,
        &hub.token,
        &["tokens", "revoke", &id("ops").to_string()],
    )
    .await;
    assert!(!ok && err.contains("already revoked"), "{err}");
    let (ok, _, err) = fleetctl(
        &hub,
        &hub.token,
        &["tokens", "revoke", &id("admin").to_string()],
    )
    .await;
    assert!(!ok && err.contains("last live admin token"), "{err}");
    let (ok, _, _) = fleetctl(&hub, &hub.token, &["devices", "list"]).await;
    assert!(ok, "the admin token still works");

    // The one-second token expires.
    let err = eventually_async(10, "the short token expires", || async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (ok, _, err) = fleetctl(&hub, &brief, &["devices", "list"]).await;
        (!ok).then_some(err)
    })
    .await;
    assert!(
        err.contains("401") && err.contains("brief") && err.contains("expired"),
        "{err}"
    );
    let (ok, _, err) = fleetctl(&hub, &brief, &["groups", "put", "a", "--member", "z"]).await;
    assert!(!ok && err.contains("expired"), "{err}");
    let groups = hub.admin(Method::GET, "/api/v1/groups", None).await;
    assert_eq!(groups[0]["members"], json!(["x"]), "{groups}");
}

#[tokio::test]
async fn a_group_scoped_token_stages_and_commands_rollouts_only_in_its_groups() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(dir.path()).await;
    for (g, site) in [("north", "n"), ("south", "s")] {
        hub.admin(
            Method::PUT,
            &format!("/api/v1/groups/{g}"),
            Some(json!({"selector": format!("site={site}")})),
        )
        .await;
    }
    let (release, _) = hub.release("app", "1").await;
    let ci = api_token(
        &hub,
        &[
            "--name",
            "ci",
            "--role",
            "operator",
            "--allow",
            "rollout.create",
            "--allow",
            "rollout.command",
            "--group",
            "north",
        ],
    )
    .await;
    // The admin stages one to the other group.
    let (status, theirs) = hub
        .call(
            Method::POST,
            "/api/v1/rollouts",
            Some(&hub.token),
            Some(json!({"release": release, "group": "south", "preset": "all"})),
        )
        .await;
    assert_eq!(status, 201, "{theirs}");
    let before = count(&hub, "/api/v1/rollouts").await;
    for (body, why) in [
        (
            json!({"release": release, "group": "south", "preset": "all"}),
            "may act only on the groups north, not south",
        ),
        (
            json!({"release": release, "selector": "site=n", "preset": "all"}),
            "not a selector",
        ),
    ] {
        let (status, v) = hub
            .call(Method::POST, "/api/v1/rollouts", Some(&ci), Some(body))
            .await;
        assert_eq!(status, 403, "{v}");
        assert!(v["error"].as_str().unwrap_or("").contains(why), "{v}");
    }
    assert_eq!(
        count(&hub, "/api/v1/rollouts").await,
        before,
        "nothing staged"
    );
    let id = theirs["id"].as_u64().expect("id");
    let (status, v) = hub
        .call(
            Method::POST,
            &format!("/api/v1/rollouts/{id}/pause"),
            Some(&ci),
            None,
        )
        .await;
    assert_eq!(status, 403, "{v}");
    // In its own group it works.
    let (status, v) = hub
        .call(
            Method::POST,
            "/api/v1/rollouts",
            Some(&ci),
            Some(json!({"release": release, "group": "north", "preset": "all"})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
}
