//! `cloud-hub`: the fleet hub.
//!
//! # Layout
//! Transports call services; services hold the rules and call the store; the store and the
//! services share the plain types of `model`.
//! - `api` (HTTP) and `mqtt` (the hub's MQTT client): transports only.
//! - `service`: registry and enrollment, images, releases and deployments, the publisher,
//!   ingest, the pure desired-state computation, the clock.
//! - `types`: the API's request and response bodies (also used by `fleetctl`).
//! - `model`: plain data shared by services and store.
//! - `store`: SQLite (WAL) with numbered migrations; the only module that speaks SQL.
//! - `keys`: root and online keys, trust updates (the signer's keys).
//! - `secrets`: issued secrets, their hashes, constant-time comparison.
//! - `broker`: the embedded MQTT broker with per-device credentials and topic ACLs.
//! - `accept`: capped accept loops with back-off and rate-limited warnings (HTTP, broker).
//! - `images`: import into deterministic tars, zstd blob store.
//! - `metrics`: the Prometheus metrics (`GET /metrics`), moved where the work happens.
//! - `config`, `serve`: typed configuration, and wiring it all together.

pub mod accept;
pub mod api;
pub mod broker;
pub mod config;
pub mod console;
pub mod images;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod mqtt;
pub mod secrets;
pub mod serve;
pub mod service;
pub mod store;
pub mod types;
