//! Hard limits for every input that crosses a trust boundary.
//!
//! Each limit is checked before the input is used, so an oversized or deeply nested document is
//! rejected in bounded time and memory (DESIGN §3.3 "endless data").

/// Largest signed envelope (bytes on the wire) an agent or hub accepts.
pub const MAX_ENVELOPE_BYTES: usize = 256 * 1024;
/// Largest payload inside an envelope (decoded bytes).
pub const MAX_PAYLOAD_BYTES: usize = 192 * 1024;
/// Signatures per envelope.
pub const MAX_SIGNATURES: usize = 8;
/// Keys in a trust document (root and signing keys each).
pub const MAX_TRUST_KEYS: usize = 16;
/// Workloads in one desired state.
pub const MAX_WORKLOADS: usize = 32;
/// Arguments in a command (entrypoint or exec health check).
pub const MAX_COMMAND_ARGS: usize = 64;
/// Environment entries per workload.
pub const MAX_ENV_ENTRIES: usize = 64;
/// Bytes in any free-form string (command argument, env value, path, reason).
pub const MAX_STRING_BYTES: usize = 4096;
/// Bytes in a short identifier-like string (env name, label key, release name).
pub const MAX_NAME_BYTES: usize = 128;
/// Labels on a device.
pub const MAX_LABELS: usize = 64;
/// Largest image size a desired state may declare (bytes of the uncompressed tar).
pub const MAX_IMAGE_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// Largest status report or event batch (bytes on the wire).
pub const MAX_REPORT_BYTES: usize = 128 * 1024;
/// Events in one published batch.
pub const MAX_EVENTS_PER_BATCH: usize = 256;
/// Workload status entries in one status report.
pub const MAX_STATUS_WORKLOADS: usize = MAX_WORKLOADS * 2;
/// Largest device profile file.
pub const MAX_PROFILE_BYTES: usize = 64 * 1024;
/// Longest interval, timeout or period (seconds) a health check or window may name: one week.
pub const MAX_DURATION_SECS: u64 = 7 * 24 * 3600;
/// Most health-check retries.
pub const MAX_HEALTH_RETRIES: u32 = 100;
/// Longest lifetime a desired state may declare (`expires_at - issued_at`): one year.
pub const MAX_STATE_LIFETIME_SECS: u64 = 366 * 24 * 3600;
/// Triggers per function.
pub const MAX_TRIGGERS: usize = 8;
/// Instances of one function at once.
pub const MAX_FUNCTION_INSTANCES: u32 = 64;
/// Invocations one function instance serves at once.
pub const MAX_FUNCTION_CONCURRENCY: u32 = 256;
/// Events one function holds while its instances are busy or starting.
pub const MAX_FUNCTION_QUEUE: u32 = 4096;
/// Longest invocation timeout: ten minutes.
pub const MAX_FUNCTION_TIMEOUT_MS: u64 = 600_000;
/// Largest request body a function may accept.
pub const MAX_FUNCTION_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// Bytes in an invocation route.
pub const MAX_ROUTE_BYTES: usize = 128;
/// Bytes in a local-bus topic or filter.
pub const MAX_TOPIC_BYTES: usize = 256;
