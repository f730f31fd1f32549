//! Enrollment: generate the device key, prove possession over the one-time token, register with
//! the hub, and store what it answers. Also manual provisioning for installs without enrollment.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use protocol::enroll::{EnrollRequest, EnrollResponse};
use protocol::{Arch, DeviceId, KeyPair, RootKeys, RuntimeKind};

use crate::store::{Identity, Store};

/// What `edge-agent enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrollArgs {
    /// Hub base URL.
    pub hub: String,
    /// One-time token.
    pub token: String,
    /// Device profile name.
    pub profile: String,
    /// Requested device id.
    pub device_id: Option<DeviceId>,
    /// Labels proposed by the device.
    pub labels: BTreeMap<String, String>,
}

/// Runtimes this agent can actually run: `process` always, `oci` when an OCI runtime CLI
/// (runc or crun) answers on this host.
pub fn detect_runtimes() -> Vec<RuntimeKind> {
    let mut r = vec![RuntimeKind::Process];
    if crate::runtime::OciRuntime::detect().is_some() {
        r.push(RuntimeKind::Oci);
    }
    r
}

fn new_key() -> anyhow::Result<KeyPair> {
    let mut seed = [0u8; 32];
    use rand::RngCore;
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .context("reading OS randomness")?;
    Ok(KeyPair::from_seed(seed))
}

/// Enrolls with the hub and provisions the store.
pub async fn enroll(store: &mut Store, args: &EnrollArgs) -> anyhow::Result<EnrollResponse> {
    if store.identity().is_ok() {
        bail!("{} is already enrolled", store.path().display());
    }
    let key = new_key()?;
    let req = EnrollRequest {
        proof: EnrollRequest::prove(&key, &args.token),
        token: args.token.clone(),
        public_key: key.public(),
        device_id: args.device_id.clone(),
        profile: args.profile.clone(),
        arch: Arch::host().context("unsupported host architecture")?,
        runtimes: detect_runtimes(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        labels: args.labels.clone(),
    };
    let url = format!("{}/api/v1/enroll", args.hub.trim_end_matches('/'));
    let resp = reqwest::Client::new()
        .post(&url)
        .json(&req)
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("reading answer of {url}"))?;
    if !status.is_success() {
        bail!(
            "enrollment refused ({status}): {}",
            String::from_utf8_lossy(&body)
                .chars()
                .take(500)
                .collect::<String>()
        );
    }
    let answer: EnrollResponse =
        serde_json::from_slice(&body).context("hub answered an invalid enrollment response")?;
    let identity = Identity::from_enrollment(&answer, &key, &args.profile);
    store.provision(&identity, answer.root.clone())?;
    Ok(answer)
}

/// Provisions the store by hand (no hub round trip): for installs where enrollment happens out
/// of band, and for tests.
pub fn provision(store: &mut Store, identity: Identity, root: RootKeys) -> anyhow::Result<()> {
    store.provision(&identity, root)?;
    Ok(())
}

/// A fresh device key, for manual provisioning.
pub fn generate_key() -> anyhow::Result<KeyPair> {
    new_key()
}
