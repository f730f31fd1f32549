//! Releases and deployments: a release's workloads are resolved against the image records and
//! validated; a deployment that does not fit a target device's profile or runtimes is refused,
//! naming the device. Every change republishes what it changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use protocol::{DeviceProfile, ImageRef, Workload};
use serde_json::json;

use super::desired::target_matches;
use super::publisher::Publisher;
use super::{blocking, Error, Result};
use crate::model::{parse_selector, DeploymentRow, ReleaseRow, Target, TokenInfo};
use crate::store::{Store, StoreError};
use crate::types::{
    Deleted, DeploymentAudit, DeploymentCreated, DeploymentDeleted, DeploymentIn, ReleaseCreated,
    ReleaseIn,
};

/// The target a request names: exactly one of group, selector (parsed), devices.
pub(crate) fn target_of(d: &DeploymentIn) -> Result<Target> {
    match (&d.group, &d.selector, &d.devices) {
        (Some(g), None, None) => Ok(Target::Group(g.clone())),
        (None, Some(s), None) => Ok(Target::Selector(parse_selector(s).map_err(Error::Invalid)?)),
        (None, None, Some(ids)) => Ok(Target::Devices(ids.clone())),
        _ => Err(Error::Invalid(
            "give exactly one of group, selector, devices".into(),
        )),
    }
}

/// The release and deployment service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Deploy {
    store: Store,
    profiles: Arc<BTreeMap<String, DeviceProfile>>,
    publisher: Publisher,
}

impl Deploy {
    /// Releases and deployments over `store`.
    pub fn new(
        store: Store,
        profiles: Arc<BTreeMap<String, DeviceProfile>>,
        publisher: Publisher,
    ) -> Self {
        Self {
            store,
            profiles,
            publisher,
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T> {
        let store = self.store.clone();
        blocking(move || Ok(f(&store)?)).await
    }

    /// The device profiles deployments are fitted to.
    pub(crate) fn profiles(&self) -> &Arc<BTreeMap<String, DeviceProfile>> {
        &self.profiles
    }

    /// All releases.
    pub async fn releases(&self) -> Result<Vec<ReleaseRow>> {
        self.run(|s| s.releases()).await
    }

    /// Live deployments, each with the pulls of its release's images by the devices it wins on.
    pub async fn deployments(&self) -> Result<Vec<DeploymentRow>> {
        self.run(|s| {
            let mut deps = s.deployments()?;
            let pulls = s.pull_totals_by_image()?;
            if pulls.is_empty() {
                return Ok(deps);
            }
            let (devices, groups, releases) = (s.devices()?, s.groups()?, s.releases()?);
            let devices: std::collections::HashMap<_, _> =
                devices.iter().map(|d| (d.id.as_str(), d)).collect();
            let mut sums = std::collections::HashMap::new();
            for (device, digest, t) in &pulls {
                let Some(dev) = devices.get(device.as_str()) else {
                    continue;
                };
                let Some(dep) = super::desired::winning_deployment(dev, &deps, &groups) else {
                    continue;
                };
                let has_image = releases.iter().any(|r| {
                    r.id == dep.release_id
                        && r.workloads
                            .iter()
                            .any(|w| w.image.digest.to_string() == *digest)
                });
                if has_image {
                    sums.entry(dep.id)
                        .or_insert_with(crate::model::PullTotals::default)
                        .add(t);
                }
            }
            for d in &mut deps {
                d.pulls = sums.get(&d.id).copied().unwrap_or_default();
            }
            Ok(deps)
        })
        .await
    }

    /// Creates a release; `(name, version)` is unique.
    pub async fn create_release(&self, who: &TokenInfo, r: ReleaseIn) -> Result<ReleaseCreated> {
        if r.name.is_empty() || r.name.len() > 128 || r.version.is_empty() || r.version.len() > 128
        {
            return Err(Error::Invalid(
                "release name and version must be 1-128 bytes".into(),
            ));
        }
        if r.workloads.len() > protocol::limits::MAX_WORKLOADS {
            return Err(Error::Invalid("too many workloads".into()));
        }
        let images = self.run(|s| s.images()).await?;
        let mut workloads = Vec::new();
        let mut names = BTreeSet::new();
        for w in r.workloads {
            if !names.insert(w.name.clone()) {
                return Err(Error::Invalid(format!("duplicate workload {}", w.name)));
            }
            let img = images
                .iter()
                .find(|i| i.digest == w.image.to_string())
                .ok_or_else(|| {
                    Error::Invalid(format!("workload {}: unknown image {}", w.name, w.image))
                })?;
            let wl = Workload {
                name: w.name,
                image: ImageRef {
                    digest: w.image,
                    size: img.size,
                    arch: img.arch,
                },
                runtime: w.runtime,
                command: w.command,
                env: w.env,
                resources: w.resources,
                restart: w.restart,
                health: w.health,
                schedule: w.schedule,
                health_deadline_secs: w.health_deadline_secs.unwrap_or(60),
                stability_window_secs: w
                    .stability_window_secs
                    .unwrap_or(protocol::DEFAULT_STABILITY_WINDOW_SECS),
                function: w.function,
            };
            wl.validate().map_err(Error::Invalid)?;
            workloads.push(wl);
        }
        // Colliding routes are refused here, not first by the devices.
        protocol::check_functions(&workloads).map_err(Error::Invalid)?;
        let (n, v, wls, actor) = (
            r.name.clone(),
            r.version.clone(),
            workloads.clone(),
            who.name.clone(),
        );
        let id = self
            .run(move |s| {
                let id = s.create_release(&n, &v, &wls)?;
                s.audit(
                    &actor,
                    "release.create",
                    &format!("{n} {v}"),
                    &json!({ "id": id }).to_string(),
                    "ok",
                )?;
                Ok(id)
            })
            .await?;
        Ok(ReleaseCreated {
            id,
            name: r.name,
            version: r.version,
            workloads,
        })
    }

    /// The target of a deployment (or a rollout's), refused with a clear error when it is not
    /// exactly one of group, selector, devices, names an unknown release or group, or does not
    /// fit a target device (audited as `action`).
    pub(crate) async fn check(
        &self,
        who: &TokenInfo,
        d: &DeploymentIn,
        action: &'static str,
    ) -> Result<Target> {
        let d = d.clone();
        let target = target_of(&d)?;
        let (releases, devices, groups) = self
            .run(|s| Ok((s.releases()?, s.devices()?, s.groups()?)))
            .await?;
        let release = releases
            .iter()
            .find(|r| r.id == d.release)
            .ok_or_else(|| Error::Invalid(format!("unknown release {}", d.release)))?;
        if let Target::Group(g) = &target {
            if !groups.iter().any(|x| &x.name == g) {
                return Err(Error::Invalid(format!("unknown group {g}")));
            }
        }
        // Refuse, naming the device and the reason, a deployment that does not fit a target.
        for dev in devices
            .iter()
            .filter(|dev| target_matches(&target, dev, &groups))
        {
            let profile = self.profiles.get(&dev.profile).ok_or_else(|| {
                Error::Invalid(format!(
                    "device {} has unknown profile {}",
                    dev.id, dev.profile
                ))
            })?;
            if let Err(m) = profile.check_fit(&release.workloads, Some(&dev.runtimes)) {
                let target = format!("release {}", d.release);
                let outcome = format!("error: {}: {m}", dev.id);
                let actor = who.name.clone();
                if let Err(e) = self
                    .run(move |s| s.audit(&actor, action, &target, "{}", &outcome))
                    .await
                {
                    tracing::error!(error = %e, "cannot audit a refused deployment");
                }
                return Err(Error::DoesNotFit(format!("device {}: {m}", dev.id)));
            }
        }
        Ok(target)
    }

    /// Deploys a release to a group, a selector or devices, then publishes.
    pub async fn create_deployment(
        &self,
        who: &TokenInfo,
        d: DeploymentIn,
    ) -> Result<DeploymentCreated> {
        let target = self.check(who, &d, "deployment.create").await?;
        let (t2, actor, release_id, priority) =
            (target.clone(), who.name.clone(), d.release, d.priority);
        let (id, marked) = self
            .run(move |s| {
                let (id, marked) = s.create_deployment(release_id, &t2, priority)?;
                let detail = DeploymentAudit {
                    release: release_id,
                    target: t2,
                    priority,
                };
                s.audit(
                    &actor,
                    "deployment.create",
                    &id.to_string(),
                    &json!(detail).to_string(),
                    "ok",
                )?;
                Ok((id, marked))
            })
            .await?;
        self.publisher.kick();
        Ok(DeploymentCreated { id, marked })
    }

    /// Deletes a release no live deployment runs.
    pub async fn delete_release(&self, who: &TokenInfo, id: u64) -> Result<Deleted> {
        let actor = who.name.clone();
        self.run(move |s| s.delete_release(id, &actor)).await?;
        Ok(Deleted {
            deleted: id.to_string(),
        })
    }

    /// Deletes a deployment, then publishes.
    pub async fn delete_deployment(&self, who: &TokenInfo, id: u64) -> Result<DeploymentDeleted> {
        let actor = who.name.clone();
        let marked = self
            .run(move |s| {
                let marked = s.delete_deployment(id)?;
                s.audit(&actor, "deployment.delete", &id.to_string(), "{}", "ok")?;
                Ok(marked)
            })
            .await?;
        self.publisher.kick();
        Ok(DeploymentDeleted {
            deleted: id,
            marked,
        })
    }
}
