//! Webhooks: when a rollout pauses, rolls back, waits for approval or completes, a signed JSON
//! event goes to the URL given at its creation, so a pager or a chat bot can react.
//!
//! The event is queued in the transaction of the step that made the transition (never sent
//! for a step that was not stored, never lost by a crash), then sent by the driver: `POST` with
//! `X-Fleet-Event`, `X-Fleet-Delivery` (the delivery id, for the receiver to drop repeats) and
//! `X-Fleet-Signature: sha256=<hex HMAC-SHA256 of the body under the rollout's secret>`. A
//! receiver that does not answer 2xx is tried again after 2, 4, 8 … seconds (at most 5
//! minutes apart), [`MAX_ATTEMPTS`] times; every attempt is recorded.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::controller::Action;
use crate::store::Store;

/// Attempts per delivery before it is given up (recorded with its last error).
pub const MAX_ATTEMPTS: u32 = 8;

/// The transitions that are sent.
const SENT: [&str; 4] = ["paused", "rolled_back", "awaiting_approval", "completed"];

/// `sha256=<hex>`: HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Seconds before attempt `attempts + 1`.
pub fn backoff(attempts: u32) -> u64 {
    (1u64 << attempts.min(9)).min(300)
}

/// A webhook URL must be `http` or `https` with a host, at most 2048 bytes.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > 2048 {
        return Err("webhook URL longer than 2048 bytes".into());
    }
    let u = reqwest::Url::parse(url).map_err(|e| format!("webhook URL {url:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(format!("webhook URL {url:?} is not http(s)://host/..."));
    }
    Ok(())
}

/// The events a step's actions send: `(event, body)`.
pub fn notifications(rollout: u64, actions: &[Action], now: u64) -> Vec<(String, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Transition { from, to, reason } if SENT.contains(to) => {
                let event = format!("rollout.{to}");
                let body = serde_json::json!({
                    "event": event, "rollout": rollout, "from": from, "to": to,
                    "reason": reason, "time": now,
                });
                Some((event, body.to_string()))
            }
            _ => None,
        })
        .collect()
}

/// Sends every delivery due at `now`; returns how many were delivered.
pub async fn deliver_due(store: &Store, http: &reqwest::Client, now: u64) -> usize {
    let s = store.clone();
    let due =
        match tokio::task::spawn_blocking(move || s.due_deliveries(now, MAX_ATTEMPTS, 50)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read webhook deliveries");
                return 0;
            }
            Err(e) => {
                tracing::error!(error = %e, "webhook task");
                return 0;
            }
        };
    let mut delivered = 0;
    for d in due {
        let sent = http
            .post(&d.url)
            .header("content-type", "application/json")
            .header("x-fleet-event", &d.event)
            .header("x-fleet-delivery", d.id.to_string())
            .header("x-fleet-signature", sign(&d.secret, d.body.as_bytes()))
            .body(d.body.clone())
            .send()
            .await;
        let error = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("answered {}", r.status())),
            Err(e) => Some(format!("{e}")),
        };
        if error.is_none() {
            delivered += 1;
        } else {
            tracing::warn!(rollout = d.rollout, delivery = d.id, url = %d.url, error = ?error, "webhook not delivered; retrying");
        }
        let (s, next) = (store.clone(), now + backoff(d.attempts + 1));
        let recorded = tokio::task::spawn_blocking(move || {
            s.record_delivery(d.id, now, error.as_deref(), next)
        })
        .await;
        if !matches!(recorded, Ok(Ok(()))) {
            tracing::error!(delivery = d.id, "cannot record a webhook attempt");
        }
    }
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn only_http_urls_with_a_host_are_taken_and_backoff_is_capped() {
        assert!(check_url("http://127.0.0.1:9/hook").is_ok());
        assert!(check_url("ftp://x/").is_err());
        assert!(check_url("not a url").is_err());
        assert_eq!((backoff(1), backoff(2), backoff(30)), (2, 4, 300));
    }
}
