//! One function's instances, queue and counters.
//!
//! An event takes a free slot on a ready instance of the current version; without one it waits
//! in the queue (at most `queue_len` events; more are refused) while the pool starts instances,
//! one per `concurrency` events waiting, up to `max_instances` counting every instance alive
//! (old versions still finishing included), so the maximum is never passed. The invocation
//! timeout counts from the event's arrival: an event still queued at its end gets 504, an
//! instance still working at its end is killed (and with it whatever else it served).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::{FunctionMode, FunctionStats, Trigger, WorkloadName};
use tokio::sync::Notify;

use super::instance::{self, Started};
use super::{ActivatorEvent, Served, Shared, Version};

/// An event to deliver.
#[derive(Debug, Clone)]
pub struct Event {
    /// HTTP method.
    pub method: reqwest::Method,
    /// Path and query as the instance sees them.
    pub path: String,
    /// Headers passed on (content type, the topic of a bus message, …).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
}

impl Event {
    /// A POST of `body` to `path`, with one extra header.
    pub fn post(path: &str, body: Bytes, header: Option<(&str, String)>) -> Self {
        Self {
            method: reqwest::Method::POST,
            path: path.into(),
            headers: header
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            body,
        }
    }
}

/// An instance's answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Its content type, if it named one.
    pub content_type: Option<String>,
    /// Body.
    pub body: Bytes,
}

/// Why an event got no answer from the function.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The queue was full (HTTP 429).
    #[error("queue full")]
    QueueFull,
    /// The invocation timeout passed (HTTP 504); a running instance was killed.
    #[error("timed out")]
    Timeout,
    /// No instance could be started (HTTP 502).
    #[error("function failed to start: {0}")]
    StartFailed(String),
    /// The instance failed or gave a bad answer (HTTP 502).
    #[error("function failed: {0}")]
    Failed(String),
}

struct Inst {
    started: Started,
    generation: u64,
    in_flight: u32,
    idle_since: Instant,
    dead: bool,
}

struct State {
    served: Served,
    /// Bumped whenever the served version changes; instances of older generations drain.
    generation: u64,
    instances: Vec<Inst>,
    starting: u32,
    waiting: u32,
    /// Start failures so far, and the last one's reason: waiters fail when it moves.
    start_failures: u64,
    start_error: String,
    /// A version that failed at start here and was left for its fallback.
    fell_back_from: Option<protocol::Digest>,
    retired: bool,
    stats: FunctionStats,
}

/// One function's pool.
pub struct Pool {
    name: WorkloadName,
    state: Mutex<State>,
    /// Woken whenever a slot may have freed or an instance became ready or failed.
    changed: Notify,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({})", self.name)
    }
}

fn function(v: &Version) -> protocol::Function {
    v.workload
        .function
        .clone()
        .unwrap_or_else(|| protocol::Function {
            mode: FunctionMode::Http,
            triggers: vec![],
            min_instances: 0,
            max_instances: 1,
            concurrency: 1,
            idle_timeout_secs: 1,
            timeout_ms: 1000,
            queue_len: 1,
            max_body_bytes: 1,
        })
}

impl State {
    fn f(&self) -> protocol::Function {
        function(&self.served.current)
    }

    fn alive(&self) -> u32 {
        self.instances.iter().filter(|i| !i.dead).count() as u32
    }
}

impl Pool {
    pub(super) fn new(served: Served, shared: Arc<Shared>) -> Arc<Self> {
        let name = served.current.workload.name.clone();
        Arc::new(Self {
            state: Mutex::new(State {
                served,
                generation: 0,
                instances: Vec::new(),
                starting: 0,
                waiting: 0,
                start_failures: 0,
                start_error: String::new(),
                fell_back_from: None,
                retired: false,
                stats: FunctionStats::new(name.clone()),
            }),
            name,
            changed: Notify::new(),
            shared,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The function's name.
    pub fn name(&self) -> &WorkloadName {
        &self.name
    }

    /// Its triggers.
    pub fn triggers(&self) -> Vec<Trigger> {
        self.lock().f().triggers
    }

    /// Its request body bound.
    pub fn max_body_bytes(&self) -> u64 {
        self.lock().f().max_body_bytes
    }

    /// Its counters.
    pub fn stats(&self) -> FunctionStats {
        let s = self.lock();
        let stdio = s.f().mode == FunctionMode::Stdio;
        FunctionStats {
            instances: s.alive() + if stdio { s.starting } else { 0 },
            ..s.stats.clone()
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        let s = self.lock();
        s.instances.is_empty() && s.starting == 0
    }

    pub(super) fn wants_min(&self) -> bool {
        let s = self.lock();
        s.f().min_instances > s.alive() + s.starting
    }

    /// A new served version: events from now on go to it. A version that failed at start here
    /// and fell back is not taken again from a plan that predates the failure.
    pub(super) fn update(&self, served: Served) {
        let mut s = self.lock();
        if s.served == served {
            return;
        }
        if served.current.digest == s.served.current.digest
            && served.current.workload == s.served.current.workload
        {
            s.served.fallback = served.fallback;
            return;
        }
        if s.fell_back_from == Some(served.current.digest) {
            return;
        }
        s.fell_back_from = None;
        s.served = served;
        s.generation += 1;
        drop(s);
        self.changed.notify_waiters();
    }

    /// Takes the pool out of service: no new instances; the ones alive stop once idle.
    pub(super) fn retire(&self) {
        self.lock().retired = true;
        self.changed.notify_waiters();
    }

    /// Delivers one event.
    pub async fn invoke(self: &Arc<Self>, ev: Event) -> Result<Reply, InvokeError> {
        let f = self.lock().f();
        let deadline = Instant::now() + Duration::from_millis(f.timeout_ms);
        if f.mode == FunctionMode::Stdio {
            return super::stdio::invoke(self, ev, deadline).await;
        }
        let mut queued: Option<u64> = None;
        let (idx_id, port) =
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut s = self.lock();
                    if s.retired {
                        if queued.is_some() {
                            s.waiting -= 1;
                        }
                        return Err(InvokeError::Failed("function removed".into()));
                    }
                    let f = s.f();
                    let generation = s.generation;
                    if let Some(i) = s.instances.iter_mut().find(|i| {
                        !i.dead && i.generation == generation && i.in_flight < f.concurrency
                    }) {
                        i.in_flight += 1;
                        let got = (i.started.id.clone(), i.started.port);
                        if queued.is_some() {
                            s.waiting -= 1;
                        }
                        s.stats.invocations += 1;
                        break got;
                    }
                    match queued {
                        None => {
                            if s.waiting >= f.queue_len {
                                s.stats.queue_drops += 1;
                                return Err(InvokeError::QueueFull);
                            }
                            s.waiting += 1;
                            queued = Some(s.start_failures);
                        }
                        Some(n) if n != s.start_failures && s.starting == 0 => {
                            s.waiting -= 1;
                            s.stats.errors += 1;
                            return Err(InvokeError::StartFailed(s.start_error.clone()));
                        }
                        Some(_) => {}
                    }
                    if s.waiting > s.starting * f.concurrency
                        && s.alive() + s.starting < f.max_instances
                    {
                        s.starting += 1;
                        s.stats.cold_starts += 1;
                        let v = s.served.current.clone();
                        let g = s.generation;
                        let me = self.clone();
                        tokio::spawn(async move { me.start(v, g).await });
                    }
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        let mut s = self.lock();
                        s.waiting -= 1;
                        s.stats.errors += 1;
                        s.stats.timeouts += 1;
                        return Err(InvokeError::Timeout);
                    }
                }
            };
        let res = tokio::time::timeout_at(deadline.into(), self.forward(port, ev)).await;
        let mut s = self.lock();
        let mut kill = None;
        let out = match res {
            Ok(Ok(r)) => {
                if r.status >= 500 {
                    s.stats.errors += 1;
                }
                Ok(r)
            }
            Ok(Err(e)) => {
                s.stats.errors += 1;
                kill = Some(idx_id.clone());
                Err(e)
            }
            Err(_) => {
                s.stats.errors += 1;
                s.stats.timeouts += 1;
                kill = Some(idx_id.clone());
                Err(InvokeError::Timeout)
            }
        };
        let generation = s.generation;
        let retired = s.retired;
        let mut drained = None;
        if let Some(i) = s.instances.iter_mut().find(|i| i.started.id == idx_id) {
            i.in_flight -= 1;
            i.idle_since = Instant::now();
            if kill.is_some() {
                i.dead = true;
            } else if i.in_flight == 0 && (i.generation != generation || retired) {
                // An old version's last invocation: it goes now.
                i.dead = true;
                drained = Some(idx_id.clone());
            }
        }
        drop(s);
        if let Some(id) = kill.or(drained) {
            self.stop_instance(id);
        }
        self.changed.notify_waiters();
        out
    }

    async fn forward(&self, port: u16, ev: Event) -> Result<Reply, InvokeError> {
        let url = format!("http://127.0.0.1:{port}{}", ev.path);
        let mut rb = self.shared.client.request(ev.method, url).body(ev.body);
        for (k, v) in ev.headers {
            rb = rb.header(k, v);
        }
        let mut resp = rb
            .send()
            .await
            .map_err(|e| InvokeError::Failed(format!("instance unreachable: {e}")))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let limit = protocol::limits::MAX_FUNCTION_BODY_BYTES as usize;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| InvokeError::Failed(format!("reading the answer: {e}")))?
        {
            if body.len() + chunk.len() > limit {
                return Err(InvokeError::Failed(format!(
                    "answer larger than {limit} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            content_type,
            body: body.into(),
        })
    }

    /// Starts one instance of `v` for generation `g` and adds it when it listens. A new
    /// version that dies at start hands over to the fallback and is reported.
    async fn start(self: Arc<Self>, v: Version, g: u64) {
        let f = function(&v);
        let res = match self.shared.runtimes.get(v.workload.runtime) {
            Some(rt) => instance::start(rt, &v, Duration::from_millis(f.timeout_ms)).await,
            None => Err(format!(
                "no {} runtime on this device",
                v.workload.runtime.as_str()
            )),
        };
        let mut s = self.lock();
        s.starting -= 1;
        match res {
            Ok(started) => {
                s.instances.push(Inst {
                    started,
                    generation: g,
                    in_flight: 0,
                    idle_since: Instant::now(),
                    dead: false,
                });
            }
            Err(reason) => {
                tracing::warn!(function = %self.name, digest = %v.digest, %reason, "function instance failed to start");
                let fallback = s.served.fallback.clone();
                match fallback {
                    Some(fb) if g == s.generation && v.digest == s.served.current.digest => {
                        let _ = self.shared.events.send(ActivatorEvent::RolledBack {
                            name: self.name.clone(),
                            failed: v.digest,
                            restored: fb.digest,
                            reason: reason.clone(),
                        });
                        s.served = Served {
                            current: fb,
                            fallback: None,
                        };
                        s.generation += 1;
                        s.fell_back_from = Some(v.digest);
                    }
                    _ => {
                        s.start_failures += 1;
                        s.start_error = reason;
                    }
                }
            }
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// Stops and forgets instance `id` in the background.
    fn stop_instance(&self, id: String) {
        let runtimes: Vec<_> = self.shared.runtimes.all().cloned().collect();
        tokio::task::spawn_blocking(move || {
            for rt in runtimes {
                if rt.list().is_ok_and(|l| l.iter().any(|i| i.id == id)) {
                    let _ = rt.stop(&id, Duration::ZERO);
                    let _ = rt.remove(&id);
                }
            }
        });
    }

    /// One reaper pass: `alive` are the ids the runtimes see running.
    pub(super) fn reap(self: &Arc<Self>, alive: &HashSet<String>) {
        let mut s = self.lock();
        let f = s.f();
        let idle_after = Duration::from_secs(f.idle_timeout_secs);
        let generation = s.generation;
        let retired = s.retired;
        let mut stop = Vec::new();
        let mut keep_idle = f.min_instances;
        // Newest first: the oldest idle instances go first.
        for i in s.instances.iter_mut().rev() {
            if i.dead {
                continue;
            }
            let gone = !alive.contains(&i.started.id);
            let superseded = i.generation != generation || retired;
            let idle = i.in_flight == 0 && i.idle_since.elapsed() >= idle_after;
            if gone || (i.in_flight == 0 && superseded) || (idle && keep_idle == 0) {
                i.dead = true;
            } else {
                keep_idle = keep_idle.saturating_sub(1);
                continue;
            }
            stop.push(i.started.id.clone());
        }
        s.instances.retain(|i| !(i.dead && i.in_flight == 0));
        let want = f.min_instances.saturating_sub(s.alive() + s.starting);
        let mut starts = Vec::new();
        if !retired {
            for _ in 0..want {
                s.starting += 1;
                starts.push((s.served.current.clone(), s.generation));
            }
        }
        drop(s);
        for id in stop {
            self.stop_instance(id);
        }
        for (v, g) in starts {
            let me = self.clone();
            tokio::spawn(async move { me.start(v, g).await });
        }
        self.changed.notify_waiters();
    }

    /// For `stdio`: takes a slot (at most `max_instances` processes), waiting in the queue.
    pub(super) async fn slot(&self, deadline: Instant) -> Result<(), InvokeError> {
        let mut queued = false;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.lock();
                let f = s.f();
                if s.starting < f.max_instances {
                    s.starting += 1;
                    s.stats.invocations += 1;
                    s.stats.cold_starts += 1;
                    if queued {
                        s.waiting -= 1;
                    }
                    return Ok(());
                }
                if !queued {
                    if s.waiting >= f.queue_len {
                        s.stats.queue_drops += 1;
                        return Err(InvokeError::QueueFull);
                    }
                    s.waiting += 1;
                    queued = true;
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let mut s = self.lock();
                    s.waiting -= 1;
                    s.stats.errors += 1;
                    s.stats.timeouts += 1;
                    return Err(InvokeError::Timeout);
                }
            }
        }
    }

    /// For `stdio`: gives the slot back and counts the outcome.
    pub(super) fn release(&self, failed: bool, timed_out: bool) {
        let mut s = self.lock();
        s.starting -= 1;
        s.stats.errors += u64::from(failed);
        s.stats.timeouts += u64::from(timed_out);
        drop(s);
        self.changed.notify_waiters();
    }

    /// The version new events go to.
    pub(super) fn current(&self) -> Version {
        self.lock().served.current.clone()
    }
}
