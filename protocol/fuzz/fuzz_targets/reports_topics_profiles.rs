//! Arbitrary bytes into every unsigned decoder: reports, topics, profiles.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = protocol::EventBatch::decode(data);
    let _ = protocol::StatusReport::decode(data);
    let _ = protocol::Presence::decode(data);
    let _ = protocol::Ack::decode(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = protocol::Topic::parse(s);
        let _ = protocol::DeviceProfile::from_toml(s);
        let _ = protocol::CronExpr::parse(s);
    }
});
