//! `edge-agent`: keeps one device's workloads converging on its signed desired state, online or
//! offline.
//!
//! # Layout
//! - `agent`: the one owner loop over a closed input enum (`agent/mod.rs`), with the executor
//!   (`executor.rs`), the health-probe scheduler (`health.rs`) and reporting to the hub
//!   (`report.rs`: outbox sender, status).
//! - `reconcile`: the pure planner `plan(desired, observed, now)` (`plan.rs`) and the
//!   per-workload record with its update stage and one transition function (`record.rs`).
//! - `store`: the one SQLite file and the crate's only SQL (identity, trust, revision floor,
//!   desired state, workload records) behind typed methods; `store/outbox.rs` the
//!   sequence-numbered outbox with a byte budget (DESIGN §3.5).
//! - `link`: the MQTT link (rumqttc): subscribe, publish, acks, presence.
//! - `image`: pull (HTTP Range resume, bounded, verified), safe unpack, cache, GC.
//! - `runtime`: the `process` and `oci` runtimes, their shared instance records
//!   (`record.rs`), cgroups and health probes.
//! - `config`, `layout`, `clock`: the typed config with `FLEET_AGENT_*` overrides, the data
//!   directory's layout, and the clock passed to the owner loop.
//! - `enroll`: the enrollment call.
//! - `metrics`: Prometheus counters moved where the work happens, and the local listener
//!   serving them (off unless `metrics_addr` is set; the `metrics` feature).

pub mod agent;
pub mod clock;
pub mod config;
pub mod enroll;
pub mod functions;
pub mod image;
pub mod layout;
pub mod link;
pub mod metrics;
pub mod reconcile;
pub mod runtime;
pub mod store;
