//! Validated identifiers. Each constructor rejects anything that could act as a path, an MQTT
//! wildcard or a topic separator, so these values are safe to use in topics, file names and SQL.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::error::InvalidId;

fn check_slug(kind: &'static str, s: &str, max: usize, reserved: &[&str]) -> Result<(), InvalidId> {
    let bad = |why: &'static str| InvalidId {
        kind,
        value: s.chars().take(80).collect(),
        why,
    };
    if s.is_empty() {
        return Err(bad("is empty"));
    }
    if s.len() > max {
        return Err(bad("is too long"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("may contain only a-z, 0-9 and '-'"));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(bad("may not start or end with '-'"));
    }
    if reserved.contains(&s) {
        return Err(bad("is reserved"));
    }
    Ok(())
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $reserved:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Longest accepted value.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                check_slug($kind, &s, $max, $reserved)?;
                Ok(Self(s))
            }

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

slug_id!(
    /// A device id: `[a-z0-9-]`, 1–63 characters, not starting or ending with `-`.
    /// It is the MQTT client id and a path segment of the device's topics. The hub's broker
    /// username [`HUB_USERNAME`] is reserved; the hub's client ids contain a `.`, which no
    /// device id can, so a device can never take over the hub's identity on a broker.
    DeviceId, "device id", 63, &[HUB_USERNAME]
);
slug_id!(
    /// A workload name, unique within a desired state: same alphabet as [`DeviceId`].
    WorkloadName, "workload name", 63, &[]
);

/// The hub's username on the broker; no device may enroll under it.
pub const HUB_USERNAME: &str = "hub";

/// The hub's MQTT client id for one process: `hub.<pid>`. The `.` is outside the device-id
/// alphabet, so no device can connect with it (a device's client id must equal its id).
pub fn hub_client_id(pid: u32) -> String {
    format!("{HUB_USERNAME}.{pid}")
}

/// A content digest: `sha256:` followed by 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    const PREFIX: &'static str = "sha256:";

    /// Parses `sha256:<64 lower-case hex>`.
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let bad = |why| InvalidId {
            kind: "digest",
            value: s.chars().take(80).collect(),
            why,
        };
        let hexpart = s
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| bad("must start with 'sha256:'"))?;
        if hexpart.len() != 64 {
            return Err(bad("must have 64 hex digits"));
        }
        if !hexpart
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad("must be lower-case hex"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hexpart, &mut out).map_err(|_| bad("must be lower-case hex"))?;
        Ok(Self(out))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Wraps a raw SHA-256 output.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 hex digits without the `sha256:` prefix: safe as a file name.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl std::str::FromStr for Digest {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, InvalidId> {
        Self::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A key id: the lower-case hex SHA-256 of the raw 32-byte Ed25519 public key. Derived, never
/// chosen, so one key cannot pose under two ids.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    /// The id of a raw public key.
    pub fn of_public_key(raw: &[u8; 32]) -> Self {
        Self(hex::encode(Sha256::digest(raw)))
    }

    /// Parses a key id as it appears on the wire (64 lower-case hex digits).
    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidId {
                kind: "key id",
                value: s.chars().take(80).collect(),
                why: "must be 64 lower-case hex digits",
            })
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", &self.0[..16])
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_reject_paths_wildcards_and_separators() {
        for bad in [
            "", "A", "a/b", "+", "#", "..", "../x", "%2f", "a b", "-a", "a-", "é", "a\0",
        ] {
            assert!(DeviceId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(DeviceId::new("x".repeat(64)).is_err());
        assert!(DeviceId::new("x".repeat(63)).is_ok());
        assert_eq!(
            DeviceId::new("gw-0042").map(|d| d.to_string()).ok(),
            Some("gw-0042".into())
        );
    }

    #[test]
    fn no_device_id_can_equal_a_hub_identity() {
        assert!(DeviceId::new(HUB_USERNAME).is_err());
        for pid in [0, 1, 4242, u32::MAX] {
            assert!(DeviceId::new(hub_client_id(pid)).is_err());
        }
        // The old client id form is an ordinary device id now, and no hub uses it.
        assert!(DeviceId::new("fleet-hub-4242").is_ok());
        assert!(WorkloadName::new("hub").is_ok());
    }

    #[test]
    fn digests_must_be_lower_case_sha256() {
        let good = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            Digest::parse(&good).map(|d| d.to_string()).ok(),
            Some(good.clone())
        );
        assert!(Digest::parse(&good.to_uppercase()).is_err());
        assert!(Digest::parse(&format!("sha512:{}", "ab".repeat(32))).is_err());
        assert!(Digest::parse(&format!("sha256:{}", "ab".repeat(31))).is_err());
        assert!(Digest::parse(&format!("sha256:../{}", "a".repeat(61))).is_err());
    }

    #[test]
    fn key_ids_are_derived_from_the_key() {
        let a = KeyId::of_public_key(&[1; 32]);
        let b = KeyId::of_public_key(&[2; 32]);
        assert_ne!(a, b);
        assert_eq!(KeyId::parse(a.as_str()).ok(), Some(a));
    }
}
