//! Reporting to the hub: the outbox sender (one batch in flight, resent after `resend_secs`
//! without an ack) and the status report (sent when it changes, or every
//! `status_interval_secs`).
//!
//! Both go through a [`Publisher`], the narrow face of the MQTT link, so the timing rules are
//! testable with paused tokio time and a recording publisher. Elapsed time is measured with
//! `tokio::time::Instant`, which follows a paused clock.

use std::time::Duration;

use protocol::{Channel, DeviceId, EventBatch, StatusReport};
use tokio::time::Instant;

use crate::link::Link;
use crate::store::{Store, StoreError};

/// Where reports go: a non-blocking publish that says whether the message was queued.
pub trait Publisher {
    /// Queues `payload` on `channel`; `false` when it could not be queued now.
    fn try_publish(&self, channel: Channel, payload: Vec<u8>) -> bool;
}

impl Publisher for Link {
    fn try_publish(&self, channel: Channel, payload: Vec<u8>) -> bool {
        Link::try_publish(self, channel, payload)
    }
}

/// The reporting state of the owner loop.
#[derive(Debug)]
pub struct Reporter {
    device: DeviceId,
    resend: Duration,
    status_interval: Duration,
    connected: bool,
    /// The highest sequence number of the batch in flight; 0 when none is.
    inflight_upto: u64,
    last_send: Option<Instant>,
    last_status: Option<(StatusReport, Instant)>,
}

impl Reporter {
    /// A reporter for `device`, not connected yet.
    pub fn new(device: DeviceId, resend: Duration, status_interval: Duration) -> Self {
        Self {
            device,
            resend,
            status_interval,
            connected: false,
            inflight_upto: 0,
            last_send: None,
            last_status: None,
        }
    }

    /// Whether the link is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// The link came up: nothing is in flight on the new connection; send what waits.
    pub fn connected(&mut self, store: &Store, link: &impl Publisher) -> Result<(), StoreError> {
        self.connected = true;
        self.inflight_upto = 0;
        self.last_send = None;
        self.last_status = None;
        self.flush(store, link)
    }

    /// The link went down; returns whether it was up.
    pub fn disconnected(&mut self) -> bool {
        std::mem::replace(&mut self.connected, false)
    }

    /// The hub acked up to `acked`: delete those events and, when the batch in flight is
    /// covered, send the next one.
    pub fn on_ack(
        &mut self,
        store: &mut Store,
        acked: u64,
        now: u64,
        link: &impl Publisher,
    ) -> Result<(), StoreError> {
        store.ack_events(acked, now)?;
        if acked >= self.inflight_upto {
            self.inflight_upto = 0;
            self.flush(store, link)?;
        }
        Ok(())
    }

    /// Publishes the oldest unacked events when nothing is in flight, or again after
    /// `resend` without an ack.
    pub fn flush(&mut self, store: &Store, link: &impl Publisher) -> Result<(), StoreError> {
        if !self.connected {
            return Ok(());
        }
        let resend = self.last_send.is_some_and(|at| at.elapsed() >= self.resend);
        if self.inflight_upto != 0 && !resend {
            return Ok(());
        }
        let events = store.pending_events(
            protocol::limits::MAX_EVENTS_PER_BATCH,
            protocol::limits::MAX_REPORT_BYTES - 4096,
        )?;
        let Some(last) = events.last().map(|e| e.seq) else {
            self.inflight_upto = 0;
            return Ok(());
        };
        let batch = EventBatch {
            device: self.device.clone(),
            events,
        };
        if link.try_publish(Channel::Events, protocol::json::encode(&batch)) {
            self.inflight_upto = last;
            self.last_send = Some(Instant::now());
        }
        Ok(())
    }

    /// Publishes `report` when it differs from the last one sent (its time aside) or the
    /// status interval has passed.
    pub fn publish_status(&mut self, report: StatusReport, link: &impl Publisher) {
        let due = match &self.last_status {
            None => true,
            Some((last, at)) => {
                let mut a = last.clone();
                a.time = report.time;
                // Function counters ride along with the periodic report: an invocation alone
                // does not send one.
                a.functions.clone_from(&report.functions);
                a != report || at.elapsed() >= self.status_interval
            }
        };
        if due && link.try_publish(Channel::Status, protocol::json::encode(&report)) {
            self.last_status = Some((report, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    use protocol::{EventBody, KeyPair, RootKeys};

    use crate::store::Identity;

    /// Records what was published.
    #[derive(Default)]
    struct Recorder(RefCell<Vec<(Channel, Vec<u8>)>>);

    impl Publisher for Recorder {
        fn try_publish(&self, channel: Channel, payload: Vec<u8>) -> bool {
            self.0.borrow_mut().push((channel, payload));
            true
        }
    }

    impl Recorder {
        fn batches(&self) -> Vec<Vec<u64>> {
            self.0
                .borrow()
                .iter()
                .filter(|(c, _)| *c == Channel::Events)
                .map(|(_, p)| {
                    let b: EventBatch = serde_json::from_slice(p).expect("batch");
                    b.events.iter().map(|e| e.seq).collect()
                })
                .collect()
        }
        fn statuses(&self) -> usize {
            self.0
                .borrow()
                .iter()
                .filter(|(c, _)| *c == Channel::Status)
                .count()
        }
    }

    fn store(dir: &tempfile::TempDir) -> Store {
        let mut s = Store::open(&dir.path().join("agent.db")).expect("open");
        let device = DeviceId::new("gw-1").expect("valid");
        let id = Identity {
            device_id: device.clone(),
            secret_key: KeyPair::from_seed([1; 32]).to_secret_base64(),
            mqtt_host: "127.0.0.1".into(),
            mqtt_port: 1,
            mqtt_username: "gw-1".into(),
            mqtt_password: "pw".into(),
            hub_url: "http://127.0.0.1:1".into(),
            profile: "local-dev".into(),
        };
        s.provision(&id, RootKeys::single(KeyPair::from_seed([9; 32]).public()))
            .expect("provision");
        s
    }

    fn reporter() -> Reporter {
        Reporter::new(
            DeviceId::new("gw-1").expect("valid"),
            Duration::from_secs(10),
            Duration::from_secs(60),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn one_batch_is_in_flight_and_is_resent_only_after_the_resend_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = store(&dir);
        s.event(EventBody::DesiredAccepted { revision: 1 }, 1)
            .expect("event");
        let link = Recorder::default();
        let mut r = reporter();
        r.flush(&s, &link).expect("flush");
        assert!(link.batches().is_empty(), "nothing is sent while offline");
        r.connected(&s, &link).expect("connected");
        assert_eq!(link.batches(), vec![vec![1]]);
        s.event(EventBody::DesiredAccepted { revision: 2 }, 2)
            .expect("event");
        tokio::time::advance(Duration::from_secs(9)).await;
        r.flush(&s, &link).expect("flush");
        assert_eq!(
            link.batches().len(),
            1,
            "waits for the ack of the batch in flight"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        r.flush(&s, &link).expect("flush");
        assert_eq!(
            link.batches(),
            vec![vec![1], vec![1, 2]],
            "resent after 10 s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_deletes_the_events_and_sends_the_next_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = store(&dir);
        s.event(EventBody::DesiredAccepted { revision: 1 }, 1)
            .expect("event");
        let link = Recorder::default();
        let mut r = reporter();
        r.connected(&s, &link).expect("connected");
        s.event(EventBody::DesiredAccepted { revision: 2 }, 2)
            .expect("event");
        r.on_ack(&mut s, 1, 3, &link).expect("ack");
        assert_eq!(link.batches(), vec![vec![1], vec![2]]);
        r.on_ack(&mut s, 2, 4, &link).expect("ack");
        assert_eq!(s.outbox_depth().expect("depth").0, 0);
        assert_eq!(link.batches().len(), 2, "nothing left to send");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_status_is_sent_again_only_after_the_status_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(&dir);
        let link = Recorder::default();
        let mut r = reporter();
        r.connected(&s, &link).expect("connected");
        let report = |time: u64, revision: Option<u64>| StatusReport {
            device: DeviceId::new("gw-1").expect("valid"),
            time,
            agent_version: "0".into(),
            arch: protocol::Arch::X86_64,
            runtimes: vec![],
            desired_revision: revision,
            applied_revision: None,
            convergence: protocol::Convergence::Idle,
            stale: false,
            trust_version: 0,
            workloads: vec![],
            events_dropped: 0,
            last_rejection: None,
            functions: vec![],
        };
        r.publish_status(report(1, None), &link);
        tokio::time::advance(Duration::from_secs(30)).await;
        r.publish_status(report(31, None), &link);
        assert_eq!(link.statuses(), 1, "only the time changed");
        r.publish_status(report(31, Some(4)), &link);
        assert_eq!(link.statuses(), 2, "a change is sent at once");
        tokio::time::advance(Duration::from_secs(60)).await;
        r.publish_status(report(91, Some(4)), &link);
        assert_eq!(link.statuses(), 3, "and the same again after the interval");
    }
}
