//! The store's unit tests.

use super::*;
use protocol::{DeviceId, KeyPair};

fn ident() -> Identity {
    Identity {
        device_id: DeviceId::new("gw-1").expect("valid"),
        secret_key: KeyPair::from_seed([1; 32]).to_secret_base64(),
        mqtt_host: "127.0.0.1".into(),
        mqtt_port: 1883,
        mqtt_username: "gw-1".into(),
        mqtt_password: "pw".into(),
        hub_url: "http://127.0.0.1:1".into(),
        profile: "local-dev".into(),
    }
}

#[test]
fn provisioning_is_durable_and_not_repeatable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.db");
    let root = RootKeys::single(KeyPair::from_seed([9; 32]).public());
    {
        let mut s = Store::open(&path).expect("open");
        assert!(matches!(s.identity(), Err(StoreError::NotEnrolled)));
        s.provision(&ident(), root.clone()).expect("provision");
        assert!(s.provision(&ident(), root.clone()).is_err());
    }
    let s = Store::open(&path).expect("reopen");
    assert_eq!(s.identity().expect("id").device_id.as_str(), "gw-1");
    assert_eq!(s.trust().expect("trust").root, root);
    assert_eq!(s.floor().expect("floor"), RevisionFloor::default());
}

#[test]
fn a_damaged_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.db");
    std::fs::write(&path, b"this is not a database, but it is long enough to look like one......................................................").expect("write");
    assert!(Store::open(&path).is_err());
}
