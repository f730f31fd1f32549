//! Functions (DESIGN §3.3): a workload that runs only when an event arrives and scales between
//! `min_instances` (0: none while idle) and `max_instances`.
//!
//! The triggers are an HTTP route on the agent's local invocation listener, a topic on the
//! gateway's local MQTT bus (with an optional reply topic), and a cron schedule. Every field is
//! bounded; [`check_functions`] adds the rules that span workloads (routes may not collide).
//!
//! The topic rule: a function may read any topic of the local bus except the broker's own
//! (`$…`), the agent's reserved tree `fleet/…` (dead letters and the agent's own traffic), and
//! the bare `#` (everything, its own replies and other functions' included). A reply topic is a
//! plain topic name under the same rule and may not match the function's own trigger (a loop).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::limits::{
    MAX_DURATION_SECS, MAX_FUNCTION_BODY_BYTES, MAX_FUNCTION_CONCURRENCY, MAX_FUNCTION_INSTANCES,
    MAX_FUNCTION_QUEUE, MAX_FUNCTION_TIMEOUT_MS, MAX_ROUTE_BYTES, MAX_TOPIC_BYTES, MAX_TRIGGERS,
};
use crate::schedule::CronExpr;
use crate::Workload;

/// The prefix of the topics the agent keeps for itself on the local bus.
pub const RESERVED_TOPIC_PREFIX: &str = "fleet/";

/// How an instance receives an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FunctionMode {
    /// Each instance serves HTTP on `127.0.0.1:$FLEET_FUNCTION_PORT`; the agent proxies to it.
    #[default]
    Http,
    /// One process per event: the body on stdin, the answer on stdout (`process` runtime only).
    Stdio,
}

/// What makes a function run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum Trigger {
    /// Requests to this path (and below it) on the agent's local invocation listener.
    Http {
        /// `/` followed by `[A-Za-z0-9._~-]` segments separated by `/`.
        route: String,
    },
    /// Messages on the local bus matching this filter, delivered as POSTs.
    Mqtt {
        /// An MQTT topic filter (`+` and a final `#` allowed).
        topic: String,
        /// Where the answer is published, when set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_topic: Option<String>,
    },
    /// An empty POST at each firing.
    Cron {
        /// Cron expression (with seconds, UTC).
        schedule: CronExpr,
    },
}

/// The function part of a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Function {
    /// How an instance receives events.
    #[serde(default)]
    pub mode: FunctionMode,
    /// At least one trigger.
    pub triggers: Vec<Trigger>,
    /// Instances kept running while idle (0: scale to zero).
    #[serde(default)]
    pub min_instances: u32,
    /// Most instances at once.
    #[serde(default = "one")]
    pub max_instances: u32,
    /// Invocations one instance serves at once.
    #[serde(default = "one")]
    pub concurrency: u32,
    /// An instance with nothing to do for this long is stopped.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// An invocation running longer is killed (HTTP 504).
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Events held while every instance is busy or starting; more are refused (HTTP 429).
    #[serde(default = "default_queue")]
    pub queue_len: u32,
    /// Largest request body (HTTP 413 above it).
    #[serde(default = "default_body")]
    pub max_body_bytes: u64,
}

fn one() -> u32 {
    1
}
fn default_idle() -> u64 {
    300
}
fn default_timeout() -> u64 {
    30_000
}
fn default_queue() -> u32 {
    16
}
fn default_body() -> u64 {
    1 << 20
}

/// Whether `route` is a well-formed invocation route.
fn check_route(route: &str) -> Result<(), String> {
    if route.len() > MAX_ROUTE_BYTES {
        return Err(format!("route longer than {MAX_ROUTE_BYTES} bytes"));
    }
    let ok_seg = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
    };
    let Some(rest) = route.strip_prefix('/') else {
        return Err(format!("route {route:?} must start with '/'"));
    };
    if rest.is_empty() || !rest.split('/').all(ok_seg) {
        return Err(format!(
            "route {route:?} must be '/' and segments of [A-Za-z0-9._~-], no empty, '.' or '..' segment"
        ));
    }
    Ok(())
}

/// Whether `path` is `route` or below it.
pub fn route_matches(route: &str, path: &str) -> bool {
    path == route
        || path
            .strip_prefix(route)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// A topic (or filter, when `filter`) a function may use, by the rule in the module docs.
fn check_topic(what: &str, t: &str, filter: bool) -> Result<(), String> {
    if t.is_empty() || t.len() > MAX_TOPIC_BYTES {
        return Err(format!("{what} must be 1..={MAX_TOPIC_BYTES} bytes"));
    }
    if t.contains('\0') {
        return Err(format!("{what} contains a NUL byte"));
    }
    if t.starts_with('$') || t.starts_with(RESERVED_TOPIC_PREFIX) || t == "fleet" || t == "#" {
        return Err(format!(
            "{what} {t:?} is not readable by functions ($-topics, fleet/… and '#' are reserved)"
        ));
    }
    let levels: Vec<&str> = t.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        let wild = l.contains('+') || l.contains('#');
        if !filter && wild {
            return Err(format!("{what} {t:?} may not contain wildcards"));
        }
        if wild && !(*l == "+" || (*l == "#" && i == levels.len() - 1)) {
            return Err(format!(
                "{what} {t:?}: '+' and '#' must fill a level, '#' be last"
            ));
        }
    }
    if filter && (levels[0] == "+" || levels[0] == "#") {
        return Err(format!(
            "{what} {t:?} may not start with a wildcard (it would match fleet/…)"
        ));
    }
    Ok(())
}

/// Whether topic name `t` matches filter `f`.
pub fn topic_matches(f: &str, t: &str) -> bool {
    let mut fl = f.split('/');
    let mut tl = t.split('/');
    loop {
        match (fl.next(), tl.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Function {
    /// Checks every field against its limits.
    pub fn validate(&self) -> Result<(), String> {
        if self.triggers.is_empty() || self.triggers.len() > MAX_TRIGGERS {
            return Err(format!("a function needs 1..={MAX_TRIGGERS} triggers"));
        }
        for t in &self.triggers {
            match t {
                Trigger::Http { route } => check_route(route)?,
                Trigger::Mqtt { topic, reply_topic } => {
                    check_topic("trigger topic", topic, true)?;
                    if let Some(r) = reply_topic {
                        check_topic("reply topic", r, false)?;
                        if topic_matches(topic, r) {
                            return Err(format!(
                                "reply topic {r:?} matches its own trigger {topic:?} (a loop)"
                            ));
                        }
                    }
                }
                Trigger::Cron { .. } => {}
            }
        }
        if self.max_instances == 0 || self.max_instances > MAX_FUNCTION_INSTANCES {
            return Err(format!(
                "max_instances must be 1..={MAX_FUNCTION_INSTANCES}"
            ));
        }
        if self.min_instances > self.max_instances {
            return Err("min_instances may not exceed max_instances".into());
        }
        if self.concurrency == 0 || self.concurrency > MAX_FUNCTION_CONCURRENCY {
            return Err(format!(
                "concurrency must be 1..={MAX_FUNCTION_CONCURRENCY}"
            ));
        }
        if self.mode == FunctionMode::Stdio && self.min_instances > 0 {
            return Err("a stdio function starts per event: min_instances must be 0".into());
        }
        if self.idle_timeout_secs == 0 || self.idle_timeout_secs > MAX_DURATION_SECS {
            return Err(format!("idle_timeout_secs must be 1..={MAX_DURATION_SECS}"));
        }
        if self.timeout_ms < 10 || self.timeout_ms > MAX_FUNCTION_TIMEOUT_MS {
            return Err(format!("timeout_ms must be 10..={MAX_FUNCTION_TIMEOUT_MS}"));
        }
        if self.queue_len > MAX_FUNCTION_QUEUE {
            return Err(format!("queue_len must be 0..={MAX_FUNCTION_QUEUE}"));
        }
        if self.queue_len == 0 && self.min_instances == 0 {
            return Err(
                "queue_len 0 with min_instances 0: the first event would have nowhere to wait"
                    .into(),
            );
        }
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_FUNCTION_BODY_BYTES {
            return Err(format!(
                "max_body_bytes must be 1..={MAX_FUNCTION_BODY_BYTES}"
            ));
        }
        Ok(())
    }
}

/// The rules across the functions of one desired state or release: no two HTTP routes where
/// one is the other or below it.
pub fn check_functions(workloads: &[Workload]) -> Result<(), String> {
    let mut routes: BTreeMap<&str, &str> = BTreeMap::new();
    for w in workloads {
        let Some(f) = &w.function else { continue };
        for t in &f.triggers {
            let Trigger::Http { route } = t else { continue };
            for (other, owner) in &routes {
                if route_matches(other, route) || route_matches(route, other) {
                    return Err(format!(
                        "workload {}: route {route} collides with {other} of workload {owner}",
                        w.name
                    ));
                }
            }
            routes.insert(route, w.name.as_str());
        }
    }
    Ok(())
}
