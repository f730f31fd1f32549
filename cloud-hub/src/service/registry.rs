//! The registry: API tokens and roles, enrollment, devices and their labels and maintenance
//! windows, groups, events, and the audit log. Every change is audited, every denial too.
//! API tokens, roles and scopes are in `tokens.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use protocol::enroll::{EnrollRequest, EnrollResponse, MqttCredentials};
use protocol::{DeviceId, DeviceProfile, Event, MaintenanceWindow, RootKeys};
use serde_json::json;

use super::limits::RefusedLedger;
use super::publisher::Publisher;
use super::{blocking, Error, Result, SharedClock};
use crate::model::{
    check_labels, parse_selector, AuditEntry, DeviceRow, GroupRow, NewDevice, TokenInfo,
};
use crate::secrets::{constant_time_eq, hash_secret, random_token};
use crate::store::{Store, StoreError};
use crate::types::{
    AuditVerified, Deleted, DeviceDeleted, GroupIn, LabelsSet, MaintenanceSet, Page,
};

/// Where devices are told to connect after enrollment.
#[derive(Debug, Clone)]
pub struct DeviceEndpoints {
    /// Broker host and port.
    pub mqtt: (String, u16),
    /// Hub base URL (blobs).
    pub url: String,
}

/// The registry service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Registry {
    pub(super) store: Store,
    pub(super) clock: SharedClock,
    profiles: Arc<BTreeMap<String, DeviceProfile>>,
    publisher: Publisher,
    endpoints: Arc<DeviceEndpoints>,
    /// What the ingest refused per device, shown in the device views.
    refused: Arc<RefusedLedger>,
    /// Drops a deleted device's live broker sessions.
    cutter: SessionCutter,
}

/// Drops a device's live broker sessions at once, returning how many (the embedded broker's
/// front listener; an external broker's sessions end at their next authentication).
#[derive(Clone, Default)]
pub struct SessionCutter(Option<Arc<CutFn>>);

type CutFn = dyn Fn(&str) -> usize + Send + Sync;

impl SessionCutter {
    /// A cutter calling `f` with the device id.
    pub fn new(f: impl Fn(&str) -> usize + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    fn cut(&self, id: &str) -> usize {
        self.0.as_ref().map_or(0, |f| f(id))
    }
}

impl std::fmt::Debug for SessionCutter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "SessionCutter"
        } else {
            "SessionCutter(none)"
        })
    }
}

pub(super) const ENROLL_SALT: &str = "enroll";

impl Registry {
    /// The registry over `store`.
    pub fn new(
        store: Store,
        clock: SharedClock,
        profiles: Arc<BTreeMap<String, DeviceProfile>>,
        publisher: Publisher,
        endpoints: DeviceEndpoints,
    ) -> Self {
        Self {
            store,
            clock,
            profiles,
            publisher,
            endpoints: Arc::new(endpoints),
            refused: Arc::default(),
            cutter: SessionCutter::default(),
        }
    }

    /// Drops deleted devices' broker sessions with `cutter`.
    pub fn with_session_cutter(mut self, cutter: SessionCutter) -> Self {
        self.cutter = cutter;
        self
    }

    /// The ledger the ingest counts its refusals in (shown in the device views).
    pub fn refused_ledger(&self) -> Arc<RefusedLedger> {
        self.refused.clone()
    }

    pub(super) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        blocking(move || Ok(f(&store)?)).await
    }

    /// Appends an audit entry.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: String,
        outcome: String,
    ) -> Result<()> {
        let (a, b, c) = (actor.to_string(), action.to_string(), target.to_string());
        self.run(move |s| s.audit(&a, &b, &c, &detail, &outcome))
            .await
    }

    // API tokens and roles: `tokens.rs`.

    // ---- devices -----------------------------------------------------------------------

    /// Whether `user`/`password` are a device's broker credentials (blocking: the broker's
    /// authentication hook calls it synchronously).
    pub fn device_password_ok(&self, user: &str, password: &str) -> bool {
        match self.store.device_credentials(user) {
            Ok(Some((hash, salt))) => constant_time_eq(&hash_secret(&salt, password), &hash),
            Ok(None) => false,
            Err(e) => {
                tracing::error!(error = %e, "reading device credentials");
                false
            }
        }
    }

    /// Like [`Self::device_password_ok`], off the async runtime.
    pub async fn device_authenticates(&self, user: String, password: String) -> Result<bool> {
        let me = self.clone();
        blocking(move || Ok(me.device_password_ok(&user, &password))).await
    }

    /// All devices.
    pub async fn devices(&self) -> Result<Vec<DeviceRow>> {
        let (mut all, pulls) = self.run(|s| Ok((s.devices()?, s.pull_totals()?))).await?;
        for d in &mut all {
            d.ingest_refused = self.refused.get(&d.id);
            d.pulls = pulls.get(&d.id).copied().unwrap_or_default();
        }
        Ok(all)
    }

    /// The devices [`Store::devices_containing`] finds, with their counters as in
    /// [`Self::devices`].
    pub async fn devices_containing(
        &self,
        id_part: String,
        labels_part: String,
    ) -> Result<Vec<DeviceRow>> {
        let (mut found, pulls) = self
            .run(move |s| {
                Ok((
                    s.devices_containing(&id_part, &labels_part)?,
                    s.pull_totals()?,
                ))
            })
            .await?;
        for d in &mut found {
            d.ingest_refused = self.refused.get(&d.id);
            d.pulls = pulls.get(&d.id).copied().unwrap_or_default();
        }
        Ok(found)
    }

    /// One device.
    pub async fn device(&self, id: String) -> Result<DeviceRow> {
        let (mut d, pulls) = self
            .run(move |s| Ok((s.device(&id)?, s.device_pull_totals(&id)?)))
            .await?;
        d.ingest_refused = self.refused.get(&d.id);
        d.pulls = pulls;
        Ok(d)
    }

    /// Deletes a device: its record, state and credentials go at once, and its live broker
    /// sessions are dropped, so a stolen gateway is cut off and cannot reconnect.
    pub async fn delete_device(&self, who: &TokenInfo, id: String) -> Result<DeviceDeleted> {
        let key = id.clone();
        self.run(move |s| s.delete_device(&key)).await?;
        let dropped = self.cutter.cut(&id);
        if let Ok(d) = DeviceId::new(&id) {
            self.publisher.forget_device(&d).await;
        }
        self.audit(
            &who.name,
            "device.delete",
            &id,
            json!({"sessions_dropped": dropped}).to_string(),
            "ok".into(),
        )
        .await?;
        Ok(DeviceDeleted {
            id,
            sessions_dropped: dropped as u64,
        })
    }

    /// Deletes a group no live deployment targets, then publishes.
    pub async fn delete_group(&self, who: &TokenInfo, name: String) -> Result<Deleted> {
        let (actor, key) = (who.name.clone(), name.clone());
        self.run(move |s| s.delete_group(&key, &actor)).await?;
        self.publisher.kick();
        Ok(Deleted { deleted: name })
    }

    /// A device's events, newest first.
    pub async fn events(&self, id: String, page: Page) -> Result<Vec<Event>> {
        let limit = page.limit.unwrap_or(100).min(1000);
        self.run(move |s| s.events(&id, limit, page.before)).await
    }

    /// Replaces a device's labels, then republishes what changed.
    pub async fn set_labels(
        &self,
        who: &TokenInfo,
        id: String,
        labels: BTreeMap<String, String>,
    ) -> Result<LabelsSet> {
        check_labels(&labels).map_err(Error::Invalid)?;
        let (id2, l2) = (id.clone(), labels.clone());
        self.run(move |s| s.set_labels(&id2, &l2)).await?;
        self.audit(
            &who.name,
            "device.labels",
            &id,
            json!(labels).to_string(),
            "ok".into(),
        )
        .await?;
        self.publisher.kick();
        Ok(LabelsSet { device: id, labels })
    }

    /// Sets (`Some`) or clears (`None`) the maintenance window of a device or a group, then
    /// republishes what changed.
    pub async fn set_maintenance(
        &self,
        who: &TokenInfo,
        scope: MaintenanceScope,
        name: String,
        window: Option<MaintenanceWindow>,
    ) -> Result<MaintenanceSet> {
        if let Some(w) = &window {
            w.validate().map_err(Error::Invalid)?;
        }
        let (n2, w2) = (name.clone(), window.clone());
        let (action, marked) = match scope {
            MaintenanceScope::Device => {
                self.run(move |s| s.set_device_maintenance(&n2, w2.as_ref()))
                    .await?;
                ("device.maintenance", 1)
            }
            MaintenanceScope::Group => {
                let marked = self
                    .run(move |s| s.set_group_maintenance(&n2, w2.as_ref()))
                    .await?;
                ("group.maintenance", marked)
            }
        };
        self.audit(
            &who.name,
            action,
            &name,
            json!({ "maintenance": window }).to_string(),
            "ok".into(),
        )
        .await?;
        self.publisher.kick();
        Ok(MaintenanceSet {
            name,
            maintenance: window,
            marked,
        })
    }

    // ---- groups ------------------------------------------------------------------------

    /// All groups.
    pub async fn groups(&self) -> Result<Vec<GroupRow>> {
        self.run(|s| s.groups()).await
    }

    /// Creates or replaces a group's selector and members, then republishes what changed.
    pub async fn put_group(&self, who: &TokenInfo, name: String, g: GroupIn) -> Result<GroupRow> {
        DeviceId::new(name.clone()).map_err(|e| Error::Invalid(format!("group name: {e}")))?;
        let selector = g
            .selector
            .as_deref()
            .map(parse_selector)
            .transpose()
            .map_err(Error::Invalid)?;
        for m in &g.members {
            DeviceId::new(m.clone()).map_err(|e| Error::Invalid(format!("member: {e}")))?;
        }
        let row = GroupRow {
            name: name.clone(),
            selector,
            members: g.members,
            maintenance: None,
        };
        let r2 = row.clone();
        self.run(move |s| s.put_group(&r2)).await?;
        let row = self
            .groups()
            .await?
            .into_iter()
            .find(|g| g.name == name)
            .unwrap_or(row);
        self.audit(
            &who.name,
            "group.put",
            &name,
            json!(row).to_string(),
            "ok".into(),
        )
        .await?;
        self.publisher.kick();
        Ok(row)
    }

    // ---- enrollment --------------------------------------------------------------------

    /// Enrolls a device with a one-time token: checks the proof of possession, consumes the
    /// token and creates the device in one transaction, and answers with its broker
    /// credentials and the trust to pin.
    pub async fn enroll(&self, req: EnrollRequest) -> Result<EnrollResponse> {
        if !req.proof_is_valid() {
            return Err(Error::Invalid(
                "proof of possession does not verify for this key and token".into(),
            ));
        }
        if !self.profiles.contains_key(&req.profile) {
            return Err(Error::Invalid(format!(
                "unknown device profile {:?}",
                req.profile
            )));
        }
        if req.agent_version.len() > 64 {
            return Err(Error::Invalid("agent_version longer than 64 bytes".into()));
        }
        check_labels(&req.labels).map_err(Error::Invalid)?;
        let id = match req.device_id.clone() {
            Some(id) => id,
            // A device that asks for no id gets one derived from its key.
            None => DeviceId::new(format!("dev-{}", &req.public_key.kid().as_str()[..12]))
                .map_err(|e| Error::Invalid(e.to_string()))?,
        };
        let password = random_token();
        let salt = random_token();
        let device = NewDevice {
            id: id.clone(),
            public_key: req.public_key.to_base64(),
            password_hash: hash_secret(&salt, &password),
            password_salt: salt,
            profile: req.profile.clone(),
            arch: req.arch,
            runtimes: req.runtimes.clone(),
            agent_version: req.agent_version.clone(),
            labels: req.labels.clone(),
        };
        let (hash, now) = (hash_secret(ENROLL_SALT, &req.token), self.clock.now());
        let done = self
            .run(move |s| s.enroll_device(&hash, &device, now))
            .await
            .map_err(|e| match e {
                Error::NotFound(_) => Error::BadToken("unknown enrollment token".into()),
                Error::Conflict(m) => Error::BadToken(m),
                other => other,
            });
        if let Err(e) = done {
            let outcome = format!("denied: {e}");
            self.audit("enroll", "device.enroll", id.as_str(), "{}".into(), outcome)
                .await?;
            return Err(e);
        }
        self.audit(
            "enroll",
            "device.enroll",
            id.as_str(),
            json!({"profile": req.profile}).to_string(),
            "ok".into(),
        )
        .await?;
        let trust = self.publisher.trust_text().ok();
        let root = trust
            .as_deref()
            .and_then(|t| protocol::Envelope::decode(t.as_bytes()).ok())
            .and_then(|e| serde_json::from_slice::<protocol::TrustUpdate>(&e.payload).ok())
            .map(|u| u.root)
            .ok_or_else(|| Error::Internal("hub has no trust document".into()))?;
        // The enrollment marked this device alone; the worker signs its first state.
        self.publisher.kick();
        Ok(EnrollResponse {
            device_id: id.clone(),
            mqtt: MqttCredentials {
                host: self.endpoints.mqtt.0.clone(),
                port: self.endpoints.mqtt.1,
                username: id.to_string(),
                password,
            },
            hub_url: self.endpoints.url.clone(),
            root: RootKeys {
                keys: root.keys,
                threshold: root.threshold,
            },
            trust,
        })
    }

    // ---- audit -------------------------------------------------------------------------

    /// Audit entries after `page.after`.
    pub async fn audit_entries(&self, page: Page) -> Result<Vec<AuditEntry>> {
        let limit = page.limit.unwrap_or(100).min(1000);
        let after = page.after.unwrap_or(0);
        self.run(move |s| s.audit_entries(after, limit)).await
    }

    /// Verifies the audit hash chain.
    pub async fn verify_audit(&self) -> Result<AuditVerified> {
        Ok(match self.run(|s| s.verify_audit()).await? {
            Ok(n) => AuditVerified {
                ok: true,
                entries: Some(n),
                first_bad_entry: None,
            },
            Err(id) => AuditVerified {
                ok: false,
                entries: None,
                first_bad_entry: Some(id),
            },
        })
    }
}

/// What a maintenance window is set on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaintenanceScope {
    /// One device (wins over its groups).
    Device,
    /// A group.
    Group,
}
