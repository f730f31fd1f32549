//! `cloud-hub`: the fleet hub.
//!
//! # Layout
//! - `config`: typed config, `FLEET_HUB_*` overrides.
//! - `store`: SQLite (WAL) with numbered migrations; the only module that speaks SQL.
//! - `keys`: root and online keys, trust updates (the signer's keys).
//! - `releases`: deployment targets and the pure desired-state computation.
//! - `publisher`: change → revision → sign → store → publish retained; republish on reconnect.
//! - `broker`: the embedded MQTT broker with per-device credentials and topic ACLs.
//! - `mqtt`: the hub's own MQTT client and the ingest of status, events and presence.
//! - `images`: import into deterministic tars, zstd blob store.
//! - `api`: the HTTP API under `/api/v1`, enrollment, blob serving, audit, auth.
//! - `serve`: wiring it all together.

pub mod api;
pub mod broker;
pub mod config;
pub mod images;
pub mod keys;
pub mod mqtt;
pub mod publisher;
pub mod releases;
pub mod serve;
pub mod store;
