//! `cloud-hub`: the fleet hub.
//!
//! # Layout
//! - `config`: typed config, `FLEET_HUB_*` overrides.
//! - `store`: SQLite (WAL) with numbered migrations; the only module that speaks SQL.
//! - `keys`: root and online keys, trust updates, the signer.
//! - `registry`: devices, groups, label selectors, enrollment tokens.
//! - `releases`: releases and deployments; `desired`: the pure desired-state computation.
//! - `publisher`: revision → sign → publish retained; republish on start and reconnect.
//! - `broker`: the embedded MQTT broker with per-device credentials and topic ACLs.
//! - `mqtt`: the hub's own MQTT client; `ingest`: status, events, presence into the store.
//! - `images`: import (directory, docker save, OCI layout) into deterministic tars, zstd store.
//! - `api`: the HTTP API under `/api/v1`, blob serving under `/v1/blobs`, audit, auth.
//! - `serve`: wiring it all together.

pub mod api;
pub mod broker;
pub mod config;
pub mod images;
pub mod ingest;
pub mod keys;
pub mod mqtt;
pub mod publisher;
pub mod registry;
pub mod releases;
pub mod serve;
pub mod store;
