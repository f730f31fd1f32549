//! The agent's outbox semantics, in memory (DESIGN §3.5): every event gets the next per-device
//! sequence number, stays until the hub acks it, and goes out in order, one batch in flight at a
//! time, resent when no ack comes within the resend interval or after a reconnect.
//!
//! Unlike the agent there is no byte budget: a simulated device never runs long enough offline
//! to need one, and a drop would make the "every event stored once" check meaningless.
//!
//! Invariant: a sequence number is never reused; `next_seq` only grows and is persisted in the
//! state file, so a second run continues where the first stopped.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use protocol::limits::{MAX_EVENTS_PER_BATCH, MAX_REPORT_BYTES};
use protocol::{DeviceId, Event, EventBatch, EventBody};

/// Pending events of one device.
#[derive(Debug, Clone)]
pub struct Outbox {
    events: VecDeque<Event>,
    next_seq: u64,
    /// Last seq of the batch in flight (0: none).
    inflight_upto: u64,
    last_send: Option<Instant>,
}

impl Outbox {
    /// An outbox whose next event gets `next_seq` (1 for a fresh device).
    pub fn new(next_seq: u64) -> Self {
        Self {
            events: VecDeque::new(),
            next_seq: next_seq.max(1),
            inflight_upto: 0,
            last_send: None,
        }
    }

    /// Appends an event; returns its sequence number.
    pub fn push(&mut self, body: EventBody, time: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.events.push_back(Event { seq, time, body });
        seq
    }

    /// The sequence number the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Events waiting for an ack.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing waits for an ack.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Drops every event with `seq <= acked`; returns how many went. An ack that covers the
    /// batch in flight frees the way for the next one.
    pub fn ack(&mut self, acked: u64) -> usize {
        let before = self.events.len();
        while self.events.front().is_some_and(|e| e.seq <= acked) {
            self.events.pop_front();
        }
        if acked >= self.inflight_upto {
            self.inflight_upto = 0;
        }
        before - self.events.len()
    }

    /// A new connection: whatever was in flight is sent again.
    pub fn reconnected(&mut self) {
        self.inflight_upto = 0;
        self.last_send = None;
    }

    /// When the batch in flight is due for a resend, if one is in flight.
    pub fn resend_at(&self, resend: Duration) -> Option<Instant> {
        (self.inflight_upto != 0)
            .then_some(self.last_send)
            .flatten()
            .map(|at| at + resend)
    }

    /// The next batch to publish: the oldest events, when nothing is in flight or the batch in
    /// flight is overdue. Call [`Outbox::sent`] once it is handed to the client.
    pub fn batch(&self, device: &DeviceId, now: Instant, resend: Duration) -> Option<EventBatch> {
        let overdue = self.last_send.is_some_and(|at| now >= at + resend);
        if self.inflight_upto != 0 && !overdue {
            return None;
        }
        let mut bytes = 0usize;
        let mut events = Vec::new();
        for e in self.events.iter().take(MAX_EVENTS_PER_BATCH) {
            let size = serde_json::to_vec(e).map(|v| v.len()).unwrap_or(256);
            if !events.is_empty() && bytes + size > MAX_REPORT_BYTES - 4096 {
                break;
            }
            bytes += size;
            events.push(e.clone());
        }
        (!events.is_empty()).then(|| EventBatch {
            device: device.clone(),
            events,
        })
    }

    /// Records that a batch ending at `last` was handed to the client at `now`.
    pub fn sent(&mut self, last: u64, now: Instant) {
        self.inflight_upto = last;
        self.last_send = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> DeviceId {
        DeviceId::new("sim-1").expect("id")
    }

    fn seqs(b: &EventBatch) -> Vec<u64> {
        b.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn one_batch_is_in_flight_until_acked_and_the_rest_follows_in_order() {
        let (d, t0, resend) = (dev(), Instant::now(), Duration::from_secs(10));
        let mut o = Outbox::new(1);
        o.push(EventBody::DesiredAccepted { revision: 1 }, 0);
        o.push(EventBody::UpdateSucceeded { revision: 1 }, 0);
        let b = o.batch(&d, t0, resend).expect("a batch");
        assert_eq!(seqs(&b), vec![1, 2]);
        o.sent(2, t0);
        o.push(EventBody::DesiredAccepted { revision: 2 }, 0);
        assert!(o.batch(&d, t0, resend).is_none(), "one batch in flight");
        assert_eq!(o.ack(2), 2);
        let b = o.batch(&d, t0, resend).expect("the next batch");
        assert_eq!(seqs(&b), vec![3]);
    }

    #[test]
    fn an_unacked_batch_is_resent_after_the_interval_and_after_a_reconnect() {
        let (d, t0, resend) = (dev(), Instant::now(), Duration::from_secs(10));
        let mut o = Outbox::new(7);
        o.push(EventBody::DesiredAccepted { revision: 1 }, 0);
        o.sent(7, t0);
        assert!(o.batch(&d, t0 + Duration::from_secs(9), resend).is_none());
        assert_eq!(o.resend_at(resend), Some(t0 + resend));
        let b = o
            .batch(&d, t0 + resend, resend)
            .expect("resent when overdue");
        assert_eq!(seqs(&b), vec![7]);
        o.reconnected();
        assert_eq!(o.resend_at(resend), None);
        assert!(o.batch(&d, t0, resend).is_some(), "resent on reconnect");
    }

    #[test]
    fn an_old_or_partial_ack_never_drops_newer_events() {
        let mut o = Outbox::new(1);
        for r in 1..=3 {
            o.push(EventBody::DesiredAccepted { revision: r }, 0);
        }
        o.sent(3, Instant::now());
        assert_eq!(o.ack(1), 1);
        assert_eq!(o.len(), 2);
        assert_eq!(o.ack(0), 0);
        assert_eq!(o.ack(3), 2);
        assert!(o.is_empty());
        assert_eq!(o.next_seq(), 4, "sequence numbers are never reused");
    }
}
