//! Who this device is: the secrets `agent.db` holds (hence its mode 0600).

use protocol::{enroll::EnrollResponse, DeviceId, KeyPair};
use serde::Serialize;

/// Who this device is, from enrollment or manual provisioning.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Identity {
    /// Device id.
    pub device_id: DeviceId,
    /// The device key's secret seed (base64).
    pub secret_key: String,
    /// Broker host.
    pub mqtt_host: String,
    /// Broker port.
    pub mqtt_port: u16,
    /// Broker username.
    pub mqtt_username: String,
    /// Broker password.
    pub mqtt_password: String,
    /// Hub base URL for blobs.
    pub hub_url: String,
    /// Profile name.
    pub profile: String,
}

impl Identity {
    /// Builds the identity from an enrollment answer.
    pub fn from_enrollment(resp: &EnrollResponse, key: &KeyPair, profile: &str) -> Self {
        Self {
            device_id: resp.device_id.clone(),
            secret_key: key.to_secret_base64(),
            mqtt_host: resp.mqtt.host.clone(),
            mqtt_port: resp.mqtt.port,
            mqtt_username: resp.mqtt.username.clone(),
            mqtt_password: resp.mqtt.password.clone(),
            hub_url: resp.hub_url.clone(),
            profile: profile.to_string(),
        }
    }
}
