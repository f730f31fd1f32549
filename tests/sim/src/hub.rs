//! The hub's public HTTP interfaces the simulator uses: minting enrollment tokens with an admin
//! token, enrolling with proof of possession (as `edge-agent enroll` does), and, for the deploy
//! scenario, uploading an image and deploying a release of it.

use std::collections::BTreeMap;
use std::time::Duration;

use protocol::enroll::{EnrollRequest, EnrollResponse};
use protocol::{Arch, DeviceId, KeyPair, RuntimeKind};
use serde_json::{json, Value};

/// Errors talking to the hub.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The request did not complete.
    #[error("{method} {url}: {source}")]
    Http {
        /// Method.
        method: &'static str,
        /// URL.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The hub answered with an error status.
    #[error("{method} {url} answered {status}: {body}")]
    Status {
        /// Method.
        method: &'static str,
        /// URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// The hub answered something that does not parse.
    #[error("{url} answered an invalid body: {detail}")]
    Invalid {
        /// URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
}

/// A client for one hub.
#[derive(Debug, Clone)]
pub struct HubClient {
    base: String,
    admin_token: String,
    http: reqwest::Client,
}

impl HubClient {
    /// A client for the hub at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str, admin_token: &str) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build()
            .unwrap_or_default();
        Self {
            base: base.trim_end_matches('/').to_string(),
            admin_token: admin_token.to_string(),
            http,
        }
    }

    /// The hub's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: &'static str,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Value, HubError> {
        let url = format!("{}{path}", self.base);
        let resp = req.send().await.map_err(|source| HubError::Http {
            method,
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|source| HubError::Http {
            method,
            url: url.clone(),
            source,
        })?;
        if !status.is_success() {
            return Err(HubError::Status {
                method,
                url,
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body).chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| HubError::Invalid {
            url,
            detail: e.to_string(),
        })
    }

    /// An admin call with a JSON body (or none).
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, HubError> {
        let name = match method {
            reqwest::Method::GET => "GET",
            reqwest::Method::PUT => "PUT",
            reqwest::Method::DELETE => "DELETE",
            _ => "POST",
        };
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(name, path, req).await
    }

    /// Mints a one-time enrollment token giving the device `labels`.
    pub async fn enroll_token(
        &self,
        labels: &BTreeMap<String, String>,
        ttl_secs: u64,
    ) -> Result<String, HubError> {
        let path = "/api/v1/tokens";
        let v = self
            .admin(
                reqwest::Method::POST,
                path,
                Some(json!({"kind": "enroll", "labels": labels, "ttl_secs": ttl_secs})),
            )
            .await?;
        v["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| HubError::Invalid {
                url: format!("{}{path}", self.base),
                detail: "no token in the answer".into(),
            })
    }

    /// Enrolls `key` as `device` with `token`, like `edge-agent enroll`.
    pub async fn enroll(
        &self,
        token: &str,
        key: &KeyPair,
        device: &DeviceId,
        profile: &str,
    ) -> Result<EnrollResponse, HubError> {
        let req = EnrollRequest {
            proof: EnrollRequest::prove(key, token),
            token: token.to_string(),
            public_key: key.public(),
            device_id: Some(device.clone()),
            profile: profile.to_string(),
            arch: Arch::host().unwrap_or(Arch::X86_64),
            runtimes: vec![RuntimeKind::Process],
            agent_version: concat!("fleet-sim/", env!("CARGO_PKG_VERSION")).into(),
            labels: BTreeMap::new(),
        };
        let path = "/api/v1/enroll";
        let v = self
            .send(
                "POST",
                path,
                self.http.post(format!("{}{path}", self.base)).json(&req),
            )
            .await?;
        serde_json::from_value(v).map_err(|e| HubError::Invalid {
            url: format!("{}{path}", self.base),
            detail: e.to_string(),
        })
    }

    /// Uploads a one-file image named `name` and returns its digest.
    pub async fn upload_image(&self, name: &str, version: &str) -> Result<String, HubError> {
        let tar = one_file_tar(name, version);
        let path = format!("/api/v1/images?name={name}&format=tar");
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin_token)
            .body(tar);
        let v = self.send("POST", &path, req).await?;
        v["digest"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| HubError::Invalid {
                url: format!("{}{path}", self.base),
                detail: "no digest in the answer".into(),
            })
    }

    /// Creates a release of one workload running `digest`; returns its id.
    pub async fn release(&self, name: &str, version: &str, digest: &str) -> Result<u64, HubError> {
        let path = "/api/v1/releases";
        let v = self
            .admin(
                reqwest::Method::POST,
                path,
                Some(json!({"name": name, "version": version,
                    "workloads": [{"name": "svc", "image": digest, "command": ["./run.sh"]}]})),
            )
            .await?;
        v["id"].as_u64().ok_or_else(|| HubError::Invalid {
            url: format!("{}{path}", self.base),
            detail: "no release id in the answer".into(),
        })
    }

    /// Deploys release `release` to the devices matching `selector`; returns the hub's answer.
    pub async fn deploy(&self, release: u64, selector: &str) -> Result<Value, HubError> {
        self.admin(
            reqwest::Method::POST,
            "/api/v1/deployments",
            Some(json!({"release": release, "selector": selector})),
        )
        .await
    }
}

/// A deterministic one-file image (a shell script that sleeps), never run by the simulator.
fn one_file_tar(name: &str, version: &str) -> Vec<u8> {
    let data = format!("#!/bin/sh\necho {name} {version}\nexec sleep 300\n");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    // Appending to a Vec cannot fail; a failure here would be a bug in `tar`.
    let _ = h.set_path("run.sh");
    h.set_size(data.len() as u64);
    h.set_mode(0o755);
    h.set_mtime(0);
    h.set_cksum();
    let _ = b.append(&h, data.as_bytes());
    b.into_inner().unwrap_or_default()
}
