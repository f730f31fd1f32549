//! `fleetctl`: the operator CLI. Every command drives the hub's HTTP API (`/api/v1`); `keys`
//! works on a key directory directly, since the root key never touches the hub.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

/// Operate a fleet through the hub's API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Hub base URL.
    #[arg(
        long,
        global = true,
        env = "FLEET_HUB_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    hub: String,
    /// API bearer token (or a file holding it with @path).
    #[arg(long, global = true, env = "FLEET_TOKEN")]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Print only this field of a JSON answer (dot path, e.g. `digest` or `status.convergence`).
    #[arg(long, global = true)]
    field: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Devices.
    #[command(subcommand)]
    Devices(Devices),
    /// Groups (static lists and label selectors).
    #[command(subcommand)]
    Groups(Groups),
    /// Images.
    #[command(subcommand)]
    Images(Images),
    /// Releases.
    #[command(subcommand)]
    Releases(Releases),
    /// Deployments.
    #[command(subcommand)]
    Deployments(Deployments),
    /// API and enrollment tokens.
    #[command(subcommand)]
    Tokens(Tokens),
    /// A device's events, newest first.
    Events {
        /// Device id.
        device: String,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(Audit),
    /// Root and online keys (works on the key directory, not through the hub).
    #[command(subcommand)]
    Keys(Keys),
    /// Make the running hub load a new online key and trust document (after `keys rotate`,
    /// `recover` or `rotate-root`), publish the trust and re-sign every device's state.
    ReloadTrust,
}

#[derive(Subcommand)]
enum Devices {
    /// List devices.
    List,
    /// Show one device.
    Show { id: String },
    /// Replace a device's labels (key=value ...).
    Label { id: String, labels: Vec<String> },
    /// Wait until at least N devices report converged on the revision the hub holds for them.
    Wait {
        /// How many devices.
        #[arg(long)]
        converged: usize,
        /// Give up after this many seconds (exit status 1).
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
enum Groups {
    /// List groups.
    List,
    /// Create or replace a group.
    Put {
        name: String,
        /// Label selector, k=v,k2=v2.
        #[arg(long)]
        selector: Option<String>,
        /// Explicit member (repeatable).
        #[arg(long = "member")]
        members: Vec<String>,
    },
}

#[derive(Subcommand)]
enum Images {
    /// List images.
    List,
    /// Import a directory, tar, docker save archive or OCI layout.
    Import {
        path: PathBuf,
        /// Image name.
        #[arg(long)]
        name: String,
        /// Architecture (default: this machine's).
        #[arg(long)]
        arch: Option<String>,
        /// dir, tar, docker or oci (default: dir for directories, tar otherwise).
        #[arg(long)]
        format: Option<String>,
    },
}

#[derive(Subcommand)]
enum Releases {
    /// List releases.
    List,
    /// Create a release from a JSON or TOML file: name, version, workloads.
    Create { file: PathBuf },
}

#[derive(Subcommand)]
enum Deployments {
    /// List deployments.
    List,
    /// Deploy a release.
    Create {
        /// Release id.
        #[arg(long)]
        release: u64,
        /// Target group.
        #[arg(long)]
        group: Option<String>,
        /// Target label selector k=v,...
        #[arg(long)]
        selector: Option<String>,
        /// Target device (repeatable).
        #[arg(long = "device")]
        devices: Vec<String>,
        /// Priority (highest matching wins).
        #[arg(long, default_value_t = 0)]
        priority: i64,
    },
    /// Delete a deployment.
    Delete { id: u64 },
}

#[derive(Subcommand)]
enum Tokens {
    /// An API token.
    Api {
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
    },
    /// A one-time enrollment token.
    Enroll {
        /// Label given to the device (repeatable key=value).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

#[derive(Subcommand)]
enum Audit {
    /// List entries.
    List {
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Verify the hash chain.
    Verify,
}

#[derive(Subcommand)]
enum Keys {
    /// Create the root key, the online key and trust version 1.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Replace the online key (needs the root key).
    Rotate {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        root: PathBuf,
        /// Keep the old key valid too (soft rotation).
        #[arg(long)]
        keep_old: bool,
    },
    /// Revoke every online key and reset every device's revision floor.
    Recover {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        floor: u64,
    },
    /// Rotate the root key (signed by old and new root).
    RotateRoot {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        old: PathBuf,
        #[arg(long)]
        new: PathBuf,
    },
}

struct Client {
    hub: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.hub.trim_end_matches('/')));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {}{path}", self.hub))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{status}: {}",
                v["error"].as_str().unwrap_or("request failed")
            );
        }
        Ok(v)
    }
}

fn labels(kv: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    kv.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{s:?} is not key=value"))
        })
        .collect()
}

fn table(v: &Value, cols: &[(&str, &str)]) {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    cols.iter()
                        .map(|(_, path)| {
                            let cell = path.split('.').fold(r, |acc, k| &acc[k]);
                            match cell {
                                Value::String(s) => s.clone(),
                                Value::Null => "-".into(),
                                other => other.to_string(),
                            }
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!(
        "{}",
        line(cols.iter().map(|(h, _)| h.to_string()).collect())
    );
    for r in rows {
        println!("{}", line(r));
    }
}

/// `--field`: the value at a dot path, printed bare when it is a string.
fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |acc, k| match k.parse::<usize>() {
        Ok(i) if acc.is_array() => &acc[i],
        _ => &acc[k],
    })
}

fn show(json_out: bool, v: &Value, cols: &[(&str, &str)]) {
    if let Some(path) = FIELD.get() {
        match field(v, path) {
            Value::String(s) => println!("{s}"),
            Value::Null => {}
            other => println!("{other}"),
        }
        return;
    }
    if json_out || !v.is_array() {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        table(v, cols);
    }
}

static FIELD: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn converged(d: &Value) -> bool {
    let want = d["desired_revision"].as_u64();
    want.is_some()
        && d["status"]["applied_revision"].as_u64() == want
        && d["status"]["convergence"] == "converged"
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(f) = &cli.field {
        let _ = FIELD.set(f.clone());
    }
    let token = match cli.token.as_deref() {
        Some(t) if t.starts_with('@') => Some(
            std::fs::read_to_string(&t[1..])
                .with_context(|| format!("reading {}", &t[1..]))?
                .trim()
                .to_string(),
        ),
        other => other.map(str::to_owned),
    };
    let c = Client {
        hub: cli.hub.clone(),
        token,
        http: reqwest::Client::new(),
    };
    use reqwest::Method as M;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    match cli.command {
        Cmd::Devices(Devices::List) => {
            let v = c.call(M::GET, "/api/v1/devices", None).await?;
            show(
                cli.json,
                &v,
                &[
                    ("ID", "id"),
                    ("PROFILE", "profile"),
                    ("PRESENCE", "presence.state"),
                    ("DESIRED", "desired_revision"),
                    ("APPLIED", "status.applied_revision"),
                    ("STATE", "status.convergence"),
                ],
            );
        }
        Cmd::Devices(Devices::Wait {
            converged: want,
            timeout,
        }) => {
            let until = std::time::Instant::now() + std::time::Duration::from_secs(timeout);
            loop {
                let v = c.call(M::GET, "/api/v1/devices", None).await?;
                let n = v
                    .as_array()
                    .map(|a| a.iter().filter(|d| converged(d)).count())
                    .unwrap_or(0);
                if n >= want {
                    println!("{n} devices converged");
                    break;
                }
                if std::time::Instant::now() >= until {
                    bail!("only {n} of {want} devices converged within {timeout} s");
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        Cmd::Devices(Devices::Show { id }) => show(
            true,
            &c.call(M::GET, &format!("/api/v1/devices/{id}"), None)
                .await?,
            &[],
        ),
        Cmd::Devices(Devices::Label { id, labels: l }) => show(
            true,
            &c.call(
                M::PUT,
                &format!("/api/v1/devices/{id}/labels"),
                Some(json!(labels(&l)?)),
            )
            .await?,
            &[],
        ),
        Cmd::Groups(Groups::List) => show(
            cli.json,
            &c.call(M::GET, "/api/v1/groups", None).await?,
            &[
                ("NAME", "name"),
                ("SELECTOR", "selector"),
                ("MEMBERS", "members"),
            ],
        ),
        Cmd::Groups(Groups::Put {
            name,
            selector,
            members,
        }) => show(
            true,
            &c.call(
                M::PUT,
                &format!("/api/v1/groups/{name}"),
                Some(json!({"selector": selector, "members": members})),
            )
            .await?,
            &[],
        ),
        Cmd::Images(Images::List) => show(
            cli.json,
            &c.call(M::GET, "/api/v1/images", None).await?,
            &[
                ("DIGEST", "digest"),
                ("NAME", "name"),
                ("SIZE", "size"),
                ("STORED", "compressed_size"),
                ("ARCH", "arch"),
            ],
        ),
        Cmd::Images(Images::Import {
            path,
            name,
            arch,
            format,
        }) => {
            let format = format.unwrap_or_else(|| {
                if path.is_dir() {
                    "dir".into()
                } else {
                    "tar".into()
                }
            });
            let (body, fmt) = if format == "dir" {
                let tree = cloud_hub::images::tree_from_dir(&path)?;
                (
                    cloud_hub::images::deterministic_tar(&tree)?,
                    "tar".to_string(),
                )
            } else {
                (
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                    format,
                )
            };
            let total = body.len();
            let mut url = format!(
                "{}/api/v1/images?name={}&format={fmt}",
                c.hub.trim_end_matches('/'),
                urlencode(&name)
            );
            if let Some(a) = arch {
                url.push_str(&format!("&arch={}", urlencode(&a)));
            }
            let mut req = c
                .http
                .post(url)
                .header("content-length", total)
                .body(progress_body(body, path.display().to_string()));
            if let Some(t) = &c.token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.context("uploading the image")?;
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            if !status.is_success() {
                bail!(
                    "{status}: {}",
                    v["error"].as_str().unwrap_or("import failed")
                );
            }
            show(true, &v, &[]);
        }
        Cmd::Releases(Releases::List) => show(
            cli.json,
            &c.call(M::GET, "/api/v1/releases", None).await?,
            &[("ID", "id"), ("NAME", "name"), ("VERSION", "version")],
        ),
        Cmd::Releases(Releases::Create { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let body: Value = if file.extension().and_then(|e| e.to_str()) == Some("toml") {
                let t: toml::Value = toml::from_str(&text).context("parsing release TOML")?;
                serde_json::to_value(t)?
            } else {
                serde_json::from_str(&text).context("parsing release JSON")?
            };
            show(
                true,
                &c.call(M::POST, "/api/v1/releases", Some(body)).await?,
                &[],
            );
        }
        Cmd::Deployments(Deployments::List) => show(
            cli.json,
            &c.call(M::GET, "/api/v1/deployments", None).await?,
            &[
                ("ID", "id"),
                ("RELEASE", "release_id"),
                ("TARGET", "target"),
                ("PRIORITY", "priority"),
            ],
        ),
        Cmd::Deployments(Deployments::Create {
            release,
            group,
            selector,
            devices,
            priority,
        }) => {
            let mut body = json!({"release": release, "priority": priority});
            if let Some(g) = group {
                body["group"] = json!(g);
            }
            if let Some(s) = selector {
                body["selector"] = json!(s);
            }
            if !devices.is_empty() {
                body["devices"] = json!(devices);
            }
            show(
                true,
                &c.call(M::POST, "/api/v1/deployments", Some(body)).await?,
                &[],
            );
        }
        Cmd::Deployments(Deployments::Delete { id }) => show(
            true,
            &c.call(M::DELETE, &format!("/api/v1/deployments/{id}"), None)
                .await?,
            &[],
        ),
        Cmd::Tokens(Tokens::Api { name, role }) => {
            let v = c
                .call(
                    M::POST,
                    "/api/v1/tokens",
                    Some(json!({"kind": "api", "name": name, "role": role})),
                )
                .await?;
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        Cmd::Tokens(Tokens::Enroll { labels: l, ttl }) => {
            let v = c
                .call(
                    M::POST,
                    "/api/v1/tokens",
                    Some(json!({"kind": "enroll", "labels": labels(&l)?, "ttl_secs": ttl})),
                )
                .await?;
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
        Cmd::Events { device, limit } => {
            let v = c
                .call(
                    M::GET,
                    &format!("/api/v1/devices/{device}/events?limit={limit}"),
                    None,
                )
                .await?;
            show(
                cli.json,
                &v,
                &[
                    ("SEQ", "seq"),
                    ("TIME", "time"),
                    ("TYPE", "body.type"),
                    ("REVISION", "body.revision"),
                    ("WORKLOAD", "body.workload"),
                    ("REASON", "body.reason"),
                ],
            );
        }
        Cmd::Audit(Audit::List { after, limit }) => {
            let v = c
                .call(
                    M::GET,
                    &format!("/api/v1/audit?after={after}&limit={limit}"),
                    None,
                )
                .await?;
            show(
                cli.json,
                &v,
                &[
                    ("ID", "id"),
                    ("TIME", "time"),
                    ("ACTOR", "actor"),
                    ("ACTION", "action"),
                    ("TARGET", "target"),
                    ("OUTCOME", "outcome"),
                ],
            );
        }
        Cmd::Audit(Audit::Verify) => {
            let v = c.call(M::GET, "/api/v1/audit/verify", None).await?;
            show(true, &v, &[]);
            if v["ok"] != json!(true) {
                bail!("audit chain is broken");
            }
        }
        Cmd::ReloadTrust => show(
            true,
            &c.call(M::POST, "/api/v1/trust/reload", None).await?,
            &[],
        ),
        Cmd::Keys(k) => {
            use cloud_hub::keys::KeyDir;
            let v = match k {
                Keys::Init { dir } => {
                    KeyDir(dir.clone()).init(now)?;
                    format!("created {}/root.key (move it offline), online.key and trust.json (version 1)", dir.display())
                }
                Keys::Rotate {
                    dir,
                    root,
                    keep_old,
                } => format!(
                    "trust version {}",
                    KeyDir(dir).rotate(&root, keep_old, now)?
                ),
                Keys::Recover { dir, root, floor } => format!(
                    "trust version {} with revision floor {floor}",
                    KeyDir(dir).recover(&root, floor, now)?
                ),
                Keys::RotateRoot { dir, old, new } => format!(
                    "trust version {} with the new root",
                    KeyDir(dir).rotate_root(&old, &new, now)?
                ),
            };
            println!("{v}");
        }
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The upload body as a stream that draws a progress bar on stderr.
fn progress_body(body: Vec<u8>, what: String) -> reqwest::Body {
    let total = body.len().max(1);
    let chunks: Vec<Vec<u8>> = body.chunks(256 * 1024).map(<[u8]>::to_vec).collect();
    let mut sent = 0usize;
    let stream = futures_util::stream::iter(chunks.into_iter().map(move |c| {
        sent += c.len();
        let pct = sent * 100 / total;
        let bar = "#".repeat(pct / 4);
        eprint!("\r{what} [{bar:<25}] {pct:>3}% {sent} bytes");
        if sent >= total {
            eprintln!();
        }
        Ok::<_, std::io::Error>(c)
    }));
    reqwest::Body::wrap_stream(stream)
}
