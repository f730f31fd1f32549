//! MQTT topic names (DESIGN §3.4) and the per-device access rules brokers enforce.
//!
//! | topic | direction | retained |
//! | --- | --- | --- |
//! | `fleet/v1/trust` | hub → all | yes |
//! | `fleet/v1/dev/{device}/desired` | hub → device | yes |
//! | `fleet/v1/dev/{device}/ack` | hub → device | yes |
//! | `fleet/v1/dev/{device}/status` | device → hub | no |
//! | `fleet/v1/dev/{device}/events` | device → hub | no |
//! | `fleet/v1/dev/{device}/presence` | device → hub | yes |

use std::fmt;

use crate::ids::DeviceId;

/// Prefix of every topic.
pub const PREFIX: &str = "fleet/v1";
/// The shared trust topic.
pub const TRUST: &str = "fleet/v1/trust";
/// Filters the hub subscribes to for device reports.
pub const HUB_SUBSCRIPTIONS: [&str; 3] = [
    "fleet/v1/dev/+/status",
    "fleet/v1/dev/+/events",
    "fleet/v1/dev/+/presence",
];

/// The per-device channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Signed desired state (hub → device, retained).
    Desired,
    /// Highest stored event sequence (hub → device, retained).
    Ack,
    /// Status snapshot (device → hub).
    Status,
    /// Event batches (device → hub).
    Events,
    /// Presence (device → hub, retained, last will).
    Presence,
}

impl Channel {
    const ALL: [Channel; 5] = [
        Channel::Desired,
        Channel::Ack,
        Channel::Status,
        Channel::Events,
        Channel::Presence,
    ];

    /// The last topic segment.
    pub fn as_str(&self) -> &'static str {
        match self {
            Channel::Desired => "desired",
            Channel::Ack => "ack",
            Channel::Status => "status",
            Channel::Events => "events",
            Channel::Presence => "presence",
        }
    }

    /// Whether the device itself publishes on this channel (otherwise only the hub does).
    pub fn device_publishes(&self) -> bool {
        matches!(self, Channel::Status | Channel::Events | Channel::Presence)
    }

    /// Whether messages on this channel are retained.
    pub fn retained(&self) -> bool {
        matches!(self, Channel::Desired | Channel::Ack | Channel::Presence)
    }
}

/// A parsed topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `fleet/v1/trust`.
    Trust,
    /// `fleet/v1/dev/{device}/{channel}`.
    Device(DeviceId, Channel),
}

impl Topic {
    /// Parses a concrete topic name (no wildcards).
    pub fn parse(s: &str) -> Option<Topic> {
        if s == TRUST {
            return Some(Topic::Trust);
        }
        let rest = s.strip_prefix("fleet/v1/dev/")?;
        let (dev, chan) = rest.split_once('/')?;
        let device = DeviceId::new(dev).ok()?;
        let channel = Channel::ALL.into_iter().find(|c| c.as_str() == chan)?;
        Some(Topic::Device(device, channel))
    }

    /// The topic for `device` on `channel`.
    pub fn device(device: &DeviceId, channel: Channel) -> Topic {
        Topic::Device(device.clone(), channel)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Trust => f.write_str(TRUST),
            Topic::Device(d, c) => write!(f, "{PREFIX}/dev/{d}/{}", c.as_str()),
        }
    }
}

/// Whether `device` may publish to `topic`: only its own status, events and presence.
pub fn device_may_publish(device: &DeviceId, topic: &str) -> bool {
    matches!(Topic::parse(topic), Some(Topic::Device(d, c)) if &d == device && c.device_publishes())
}

/// Whether `device` may subscribe to `filter`: only its own desired and ack, and the shared
/// trust, named exactly (no wildcards).
pub fn device_may_subscribe(device: &DeviceId, filter: &str) -> bool {
    if filter.contains('+') || filter.contains('#') {
        return false;
    }
    match Topic::parse(filter) {
        Some(Topic::Trust) => true,
        Some(Topic::Device(d, c)) => &d == device && !c.device_publishes(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> DeviceId {
        DeviceId::new(s).expect("valid id")
    }

    #[test]
    fn topics_round_trip() {
        let d = dev("gw-1");
        for c in Channel::ALL {
            let t = Topic::device(&d, c);
            assert_eq!(Topic::parse(&t.to_string()), Some(t));
        }
        assert_eq!(Topic::parse(TRUST), Some(Topic::Trust));
        assert_eq!(Topic::parse("fleet/v1/dev/GW/desired"), None);
        assert_eq!(Topic::parse("fleet/v1/dev/gw-1/desired/x"), None);
        assert_eq!(Topic::parse("fleet/v1/dev/+/desired"), None);
    }

    #[test]
    fn devices_touch_only_their_own_topics() {
        let a = dev("a");
        assert!(device_may_publish(&a, "fleet/v1/dev/a/status"));
        assert!(device_may_publish(&a, "fleet/v1/dev/a/presence"));
        assert!(!device_may_publish(&a, "fleet/v1/dev/b/status"));
        assert!(!device_may_publish(&a, "fleet/v1/dev/a/desired"));
        assert!(!device_may_publish(&a, TRUST));
        assert!(device_may_subscribe(&a, "fleet/v1/dev/a/desired"));
        assert!(device_may_subscribe(&a, TRUST));
        assert!(!device_may_subscribe(&a, "fleet/v1/dev/b/desired"));
        assert!(!device_may_subscribe(&a, "fleet/v1/#"));
        assert!(!device_may_subscribe(&a, "fleet/v1/dev/+/desired"));
        assert!(!device_may_subscribe(&a, "fleet/v1/dev/a/status"));
    }
}
