//! The activator (`docs/FUNCTIONS.md`): functions run only when an event arrives.
//!
//! The reconciler pulls and keeps a function's images like any workload's and names the version
//! to serve ([`crate::reconcile::FunctionRun`]); the activator starts instances of it on demand
//! through the same runtimes (in their own record directory, `functions/`, so the reconciler
//! never sees them), holds events while one starts, scales up to `max_instances` as events
//! queue, stops idle instances after `idle_timeout_secs`, refuses what does not fit in the
//! queue, and kills an invocation past its timeout.
//!
//! # Layout
//! - `pool`: one function's instances, queue, scaling and counters; [`Pool::invoke`].
//! - `instance`: starting an instance (port, runtime, readiness) and stopping it.
//! - `stdio`: the one-shot mode, a process per event.
//! - `http`: the local invocation listener (hyper).
//! - `bus`: the local MQTT bus client (rumqttc): topic triggers, replies, dead letters.
//! - this file: the [`Activator`] handle, the set of functions served, the reaper and the cron
//!   triggers.

mod bus;
mod http;
mod instance;
mod pool;
mod stdio;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use protocol::{Digest, FunctionStats, RuntimeKind, Trigger, Workload, WorkloadName};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::layout::Layout;
use crate::runtime::{Instance, OciRuntime, ProcessRuntime, Runtime, RuntimeError, WorkloadSpec};

pub use pool::{Event, InvokeError, Pool, Reply};

/// How often idle and orphaned instances are looked for.
const REAP_EVERY: Duration = Duration::from_millis(200);

/// One version of a function, ready to start: its definition, image and unpacked root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The definition (`function` is set).
    pub workload: Workload,
    /// Image.
    pub digest: Digest,
    /// Unpacked image tree.
    pub rootfs: PathBuf,
}

/// A function to serve, and what a crash at start falls back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The version new events go to.
    pub current: Version,
    /// The version before the last update, while its image is kept.
    pub fallback: Option<Version>,
}

/// What the activator reports to the owner loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActivatorEvent {
    /// A new version could not start; the previous one serves again.
    RolledBack {
        /// Function.
        name: WorkloadName,
        /// The version that failed.
        failed: Digest,
        /// The version restored.
        restored: Digest,
        /// Why it failed.
        reason: String,
    },
}

/// A runtime whose calls never overlap. The owner loop calls its runtimes one call at a time;
/// the activator starts, lists and stops from several tasks, and an `oci` listing that met a
/// container still being created took it for dead and deleted it mid-start.
struct Serialized {
    rt: Box<dyn Runtime>,
    lock: Mutex<()>,
}

impl Serialized {
    fn wrap(rt: impl Runtime + 'static) -> Arc<dyn Runtime> {
        Arc::new(Self {
            rt: Box::new(rt),
            lock: Mutex::new(()),
        })
    }

    fn one<T>(&self, f: impl FnOnce(&dyn Runtime) -> T) -> T {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        f(self.rt.as_ref())
    }
}

impl Runtime for Serialized {
    fn kind(&self) -> RuntimeKind {
        self.rt.kind()
    }
    fn start(&self, spec: &WorkloadSpec) -> Result<Instance, RuntimeError> {
        self.one(|rt| rt.start(spec))
    }
    fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.one(|rt| rt.stop(id, grace))
    }
    fn list(&self) -> Result<Vec<Instance>, RuntimeError> {
        self.one(|rt| rt.list())
    }
    fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.one(|rt| rt.remove(id))
    }
}

/// The runtimes function instances run on, with records apart from the services'.
pub(crate) struct Runtimes {
    process: Arc<dyn Runtime>,
    oci: Option<Arc<dyn Runtime>>,
}

impl Runtimes {
    fn get(&self, kind: RuntimeKind) -> Option<Arc<dyn Runtime>> {
        match kind {
            RuntimeKind::Process => Some(self.process.clone()),
            RuntimeKind::Oci => self.oci.clone(),
        }
    }

    fn all(&self) -> impl Iterator<Item = &Arc<dyn Runtime>> {
        std::iter::once(&self.process).chain(self.oci.iter())
    }
}

/// Routes and topics of the functions served, rebuilt when the set changes.
#[derive(Default)]
struct Table {
    pools: BTreeMap<WorkloadName, Arc<Pool>>,
    routes: Vec<(String, Arc<Pool>)>,
}

pub(crate) struct Shared {
    table: RwLock<Table>,
    runtimes: Runtimes,
    client: reqwest::Client,
    events: mpsc::UnboundedSender<ActivatorEvent>,
    topics: watch::Sender<Vec<TopicRoute>>,
    /// Pools taken out of service whose instances still finish what they serve.
    retired: Mutex<Vec<Arc<Pool>>>,
}

/// One topic trigger: its filter, reply topic and function.
#[derive(Clone)]
pub(crate) struct TopicRoute {
    filter: String,
    reply: Option<String>,
    pool: Arc<Pool>,
}

/// The activator handle, shared by the owner loop and the listeners.
#[derive(Clone)]
pub struct Activator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Activator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Activator")
    }
}

impl Activator {
    /// An activator keeping its instances' records under `layout.functions()`; instances left
    /// by an earlier agent process are stopped (they hold no state, and nothing routes to them).
    pub fn open(
        layout: &Layout,
        log_max_bytes: u64,
    ) -> Result<(Self, mpsc::UnboundedReceiver<ActivatorEvent>), RuntimeError> {
        let dir = layout.functions();
        let process = Serialized::wrap(ProcessRuntime::new(
            &dir.join("runtime"),
            &layout.logs(),
            log_max_bytes,
        )?);
        let oci = match OciRuntime::detect() {
            Some(runc) => Some(Serialized::wrap(OciRuntime::new(
                runc,
                &dir.join("oci"),
                &layout.logs(),
            )?)),
            None => None,
        };
        let runtimes = Runtimes { process, oci };
        for rt in runtimes.all() {
            for i in rt.list()? {
                let _ = rt.stop(&i.id, Duration::ZERO);
                let _ = rt.remove(&i.id);
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| RuntimeError::Start {
                name: "activator".into(),
                detail: format!("http client: {e}"),
            })?;
        let shared = Arc::new(Shared {
            table: RwLock::new(Table::default()),
            runtimes,
            client,
            events: tx,
            topics: watch::channel(Vec::new()).0,
            retired: Mutex::new(Vec::new()),
        });
        Ok((Self { shared }, rx))
    }

    /// Serves exactly `served` from now on: new functions get a pool, changed ones switch their
    /// new events to the new version (events in flight finish on the old one), removed ones
    /// stop taking events and their instances stop once idle.
    pub fn set(&self, served: Vec<Served>) {
        let mut table = self.shared.table.write().unwrap_or_else(|p| p.into_inner());
        let mut pools = BTreeMap::new();
        for s in served {
            let name = s.current.workload.name.clone();
            let pool = match table.pools.remove(&name) {
                Some(p) => {
                    p.update(s);
                    p
                }
                None => Pool::new(s, self.shared.clone()),
            };
            pools.insert(name, pool);
        }
        let gone: Vec<Arc<Pool>> = std::mem::take(&mut table.pools).into_values().collect();
        for p in gone {
            p.retire();
            self.shared
                .retired
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(p);
        }
        let mut routes = Vec::new();
        let mut topics = Vec::new();
        for p in pools.values() {
            for t in p.triggers() {
                match t {
                    Trigger::Http { route } => routes.push((route, p.clone())),
                    Trigger::Mqtt { topic, reply_topic } => topics.push(TopicRoute {
                        filter: topic,
                        reply: reply_topic,
                        pool: p.clone(),
                    }),
                    Trigger::Cron { .. } => {}
                }
            }
        }
        table.pools = pools;
        table.routes = routes;
        drop(table);
        self.shared.topics.send_if_modified(|old| {
            let same = old.len() == topics.len()
                && old.iter().zip(&topics).all(|(a, b)| {
                    a.filter == b.filter && a.reply == b.reply && Arc::ptr_eq(&a.pool, &b.pool)
                });
            if !same {
                *old = topics;
            }
            !same
        });
    }

    /// Counters per function served.
    pub fn stats(&self) -> Vec<FunctionStats> {
        let table = self.shared.table.read().unwrap_or_else(|p| p.into_inner());
        table.pools.values().map(|p| p.stats()).collect()
    }

    /// The pool serving `path` on the invocation listener.
    pub fn route(&self, path: &str) -> Option<Arc<Pool>> {
        let table = self.shared.table.read().unwrap_or_else(|p| p.into_inner());
        table
            .routes
            .iter()
            .find(|(r, _)| protocol::function::route_matches(r, path))
            .map(|(_, p)| p.clone())
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        let table = self.shared.table.read().unwrap_or_else(|p| p.into_inner());
        table
            .pools
            .values()
            .find(|p| p.name().as_str() == name)
            .cloned()
    }

    /// Starts the background tasks: the reaper and cron triggers always, the invocation
    /// listener on `listen` and the bus client on `bus` when given. Fails when the listener
    /// cannot bind.
    pub async fn spawn(
        &self,
        listen: Option<&str>,
        bus: Option<&str>,
        device: &str,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        if let Some(addr) = listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("function listener on {addr}: {e}"))?;
            tracing::info!(addr = %addr, "function invocation listener");
            tokio::spawn(http::serve(listener, self.clone(), cancel.clone()));
        }
        if let Some(addr) = bus {
            let (host, port) = crate::config::split_addr(addr).map_err(anyhow::Error::msg)?;
            let rx = self.shared.topics.subscribe();
            tokio::spawn(bus::run(host, port, device.to_string(), rx, cancel.clone()));
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_cron = crate::runtime::unix_now();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                me.reap().await;
                let now = crate::runtime::unix_now();
                if now > last_cron {
                    me.fire_cron(last_cron, now);
                    last_cron = now;
                }
            }
            me.stop_all().await;
        });
        Ok(())
    }

    /// Stops idle, orphaned and superseded instances; keeps `min_instances` running.
    async fn reap(&self) {
        let pools: Vec<Arc<Pool>> = {
            let table = self.shared.table.read().unwrap_or_else(|p| p.into_inner());
            table.pools.values().cloned().collect()
        };
        let retired: Vec<Arc<Pool>> = {
            let mut r = self
                .shared
                .retired
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            r.retain(|p| !p.is_empty());
            r.clone()
        };
        if pools.iter().chain(&retired).all(|p| p.is_empty())
            && pools.iter().all(|p| !p.wants_min())
        {
            return; // nothing runs and nothing should: no runtime call, no file read
        }
        let mut alive = std::collections::HashSet::new();
        for rt in self.shared.runtimes.all() {
            let rt = rt.clone();
            let listed = tokio::task::spawn_blocking(move || rt.list()).await;
            if let Ok(Ok(list)) = listed {
                alive.extend(
                    list.into_iter()
                        .filter(|i| {
                            matches!(i.state, crate::runtime::InstanceState::Running { .. })
                        })
                        .map(|i| i.id),
                );
            }
        }
        for p in pools.iter().chain(&retired) {
            p.reap(&alive);
        }
    }

    /// Fires the cron triggers due in `(from, to]`.
    fn fire_cron(&self, from: u64, to: u64) {
        let table = self.shared.table.read().unwrap_or_else(|p| p.into_inner());
        for p in table.pools.values() {
            for t in p.triggers() {
                let Trigger::Cron { schedule } = t else {
                    continue;
                };
                if schedule.next_after(from).is_some_and(|n| n <= to) {
                    let p = p.clone();
                    tokio::spawn(async move {
                        let ev = Event::post(
                            "/",
                            bytes::Bytes::new(),
                            Some(("fleet-trigger", "cron".into())),
                        );
                        if let Err(e) = p.invoke(ev).await {
                            tracing::warn!(function = %p.name(), error = %e, "cron invocation failed");
                        }
                    });
                }
            }
        }
    }

    /// Stops every instance (the agent is stopping; functions hold no state).
    async fn stop_all(&self) {
        let pools: Vec<Arc<Pool>> = {
            let table = self.shared.table.read().unwrap_or_else(|p| p.into_inner());
            table.pools.values().cloned().collect()
        };
        for p in pools {
            p.retire();
            p.reap(&Default::default());
        }
    }
}
