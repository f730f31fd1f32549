//! Property tests: every document and message survives serialize → parse unchanged, signed
//! documents survive sign → encode → decode → accept, topics survive build → parse, and no input
//! makes a decoder panic.

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use protocol::*;

fn device_id() -> impl Strategy<Value = DeviceId> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
        .prop_map(|s| DeviceId::new(s).expect("valid by construction"))
}

fn workload_name() -> impl Strategy<Value = WorkloadName> {
    "[a-z]([a-z0-9-]{0,20}[a-z0-9])?".prop_map(|s| WorkloadName::new(s).expect("valid"))
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_bytes)
}

fn probe() -> impl Strategy<Value = Probe> {
    prop_oneof![
        prop::collection::vec("[ -~]{1,20}", 1..4).prop_map(|command| Probe::Exec { command }),
        (1u16.., "/[a-z0-9/]{0,20}").prop_map(|(port, path)| Probe::Http { port, path }),
        (1u16..).prop_map(|port| Probe::Tcp { port }),
    ]
}

fn health() -> impl Strategy<Value = HealthCheck> {
    (probe(), 1u64..600, 1u64..60, 1u32..10, 0u64..600).prop_map(
        |(probe, interval_secs, timeout_secs, retries, start_period_secs)| HealthCheck {
            probe,
            interval_secs,
            timeout_secs,
            retries,
            start_period_secs,
        },
    )
}

fn workload() -> impl Strategy<Value = Workload> {
    (
        workload_name(),
        digest(),
        1u64..1 << 34,
        prop::sample::select(vec![
            Arch::Aarch64,
            Arch::Armv7,
            Arch::X86_64,
            Arch::Riscv64,
        ]),
        prop::sample::select(vec![RuntimeKind::Process, RuntimeKind::Oci]),
        prop::collection::vec("[ -~]{1,30}", 1..5),
        prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,10}", "[ -~]{0,20}", 0..5),
        (
            proptest::option::of(1u32..4000),
            proptest::option::of((1u64 << 20)..(1u64 << 32)),
            proptest::option::of(1u32..1000),
        ),
        prop::sample::select(vec![
            RestartPolicy::Always,
            RestartPolicy::OnFailure,
            RestartPolicy::Never,
        ]),
        proptest::option::of(health()),
        proptest::option::of(prop::sample::select(vec!["0 */5 * * * *", "0 0 3 * * Mon"])),
        (
            1u64..3600,
            prop_oneof![Just(DEFAULT_STABILITY_WINDOW_SECS), 0u64..3600],
        ),
    )
        .prop_map(
            |(
                name,
                digest,
                size,
                arch,
                runtime,
                command,
                env,
                (cpu, mem, pids),
                restart,
                health,
                sched,
                (deadline, window),
            )| {
                Workload {
                    name,
                    image: ImageRef { digest, size, arch },
                    runtime,
                    command,
                    env,
                    resources: Resources {
                        cpu_millis: cpu,
                        memory_bytes: mem,
                        pids,
                    },
                    restart,
                    health,
                    schedule: sched.map(|s| CronExpr::parse(s).expect("valid cron")),
                    health_deadline_secs: deadline,
                    stability_window_secs: window,
                    function: None,
                }
            },
        )
}

fn desired_state() -> impl Strategy<Value = DesiredState> {
    (
        device_id(),
        1u64..u64::MAX,
        prop::collection::vec(workload(), 0..4),
        proptest::option::of(1u64..7200),
        proptest::option::of((
            "[a-z]{1,10}",
            "[0-9.]{1,8}",
            proptest::option::of(any::<u64>()),
        )),
    )
        .prop_map(|(device, revision, mut workloads, window, rollout)| {
            workloads.sort_by(|a, b| a.name.cmp(&b.name));
            workloads.dedup_by(|a, b| a.name == b.name);
            DesiredState {
                kind: KIND_DESIRED_STATE.into(),
                device,
                revision,
                issued_at: NOW - 10,
                expires_at: NOW + DAY,
                workloads,
                maintenance: window.map(|d| MaintenanceWindow {
                    cron: CronExpr::parse("0 0 2 * * *").expect("valid"),
                    duration_secs: d,
                }),
                rollout: rollout.map(|(release, version, deployment)| RolloutRef {
                    release,
                    version,
                    deployment,
                    phase: None,
                }),
            }
        })
}

fn event_body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        any::<u64>().prop_map(|revision| EventBody::DesiredAccepted { revision }),
        ("[a-z_]{1,12}", "[ -~]{0,40}")
            .prop_map(|(code, reason)| EventBody::DesiredRejected { code, reason }),
        (
            digest(),
            any::<u64>(),
            any::<bool>(),
            proptest::option::of(digest()),
            any::<u64>(),
            proptest::option::of("[ -~]{0,40}")
        )
            .prop_map(
                |(digest, bytes_fetched, delta, base, bytes_saved, fallback)| {
                    EventBody::ImagePulled {
                        digest,
                        bytes_fetched,
                        delta,
                        base,
                        bytes_saved,
                        fallback,
                    }
                }
            ),
        (
            workload_name(),
            proptest::option::of(any::<i32>()),
            proptest::option::of(1i32..64)
        )
            .prop_map(|(workload, code, signal)| EventBody::WorkloadExited {
                workload,
                code,
                signal
            }),
        (
            any::<u64>(),
            proptest::option::of(workload_name()),
            "[ -~]{0,40}"
        )
            .prop_map(|(revision, workload, reason)| EventBody::UpdateFailed {
                revision,
                workload,
                reason
            }),
        (any::<u64>(), workload_name(), digest()).prop_map(|(revision, workload, digest)| {
            EventBody::RolledBack {
                revision,
                workload,
                digest,
            }
        }),
        any::<u64>().prop_map(|count| EventBody::EventsDropped { count }),
    ]
}

fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
    v: &T,
) {
    let bytes = serde_json::to_vec(v).expect("serializes");
    let back: T = serde_json::from_slice(&bytes).expect("parses back");
    assert_eq!(&back, v);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn desired_states_round_trip_and_verify(s in desired_state()) {
        prop_assert!(s.validate().is_ok(), "{:?}", s.validate());
        roundtrip(&s);
        let wire = sign(&s, &[&online()]);
        let out = accept_desired_state(&wire, &trust(), &s.device, &RevisionFloor::default(), NOW)
            .expect("accepted");
        match out {
            DesiredOutcome::Accepted(a) => prop_assert_eq!(a.state, s),
            DesiredOutcome::AlreadyHave => prop_assert!(false, "fresh state seen as held"),
        }
    }

    #[test]
    fn trust_updates_round_trip_and_verify(version in 2u64..1000, floor in proptest::option::of(any::<u64>()), seeds in prop::collection::btree_set(10u8..200, 0..5)) {
        let keys: Vec<_> = seeds.iter().map(|s| entry(&key(*s), NOW + DAY)).collect();
        let mut u = trust_update(version, RootKeys::single(root().public()), keys);
        u.revision_floor = floor;
        roundtrip(&u);
        match accept_trust_update(&sign(&u, &[&root()]), &trust(), NOW).expect("accepted") {
            TrustOutcome::Accepted(a) => {
                prop_assert_eq!(&a.update, &u);
                prop_assert_eq!(a.store.version, version);
            }
            TrustOutcome::AlreadyHave => prop_assert!(false, "new trust seen as held"),
        }
    }

    #[test]
    fn reports_round_trip(device in device_id(), bodies in prop::collection::vec(event_body(), 0..20), acked in any::<u64>(), epoch in any::<u64>()) {
        let events: Vec<Event> = bodies.into_iter().enumerate()
            .map(|(i, body)| Event { seq: i as u64 + 1, time: NOW, body }).collect();
        let batch = EventBatch { device: device.clone(), events };
        roundtrip(&batch);
        prop_assert_eq!(EventBatch::decode(&serde_json::to_vec(&batch).expect("json")).expect("decodes"), batch);
        let ack = Ack { acked };
        prop_assert_eq!(Ack::decode(&serde_json::to_vec(&ack).expect("json")).expect("decodes"), ack);
        for state in [PresenceState::Online, PresenceState::Offline] {
            let p = Presence { state, epoch };
            prop_assert_eq!(Presence::decode(&serde_json::to_vec(&p).expect("json")).expect("decodes"), p);
        }
        let status = StatusReport {
            device,
            time: NOW,
            agent_version: "0.1.0".into(),
            arch: Arch::Aarch64,
            runtimes: vec![RuntimeKind::Process],
            desired_revision: Some(acked),
            applied_revision: None,
            convergence: Convergence::Converging,
            stale: false,
            trust_version: 3,
            workloads: vec![],
            events_dropped: epoch,
            last_rejection: Some("rollback: x".into()),
            functions: vec![],
        };
        prop_assert_eq!(StatusReport::decode(&serde_json::to_vec(&status).expect("json")).expect("decodes"), status);
    }

    #[test]
    fn topics_round_trip(device in device_id()) {
        for c in [Channel::Desired, Channel::Ack, Channel::Status, Channel::Events, Channel::Presence] {
            let t = Topic::device(&device, c);
            prop_assert_eq!(Topic::parse(&t.to_string()), Some(t));
        }
    }

    #[test]
    fn enrollment_messages_round_trip(device in device_id(), token in "[A-Za-z0-9]{8,40}", labels in prop::collection::btree_map("[a-z]{1,8}", "[a-z0-9]{0,8}", 0..4)) {
        let k = key(42);
        let req = protocol::enroll::EnrollRequest {
            proof: protocol::enroll::EnrollRequest::prove(&k, &token),
            token,
            public_key: k.public(),
            device_id: Some(device.clone()),
            profile: "rpi4-4g".into(),
            arch: Arch::Aarch64,
            runtimes: vec![RuntimeKind::Process, RuntimeKind::Oci],
            agent_version: "0.1.0".into(),
            labels: labels.clone(),
        };
        roundtrip(&req);
        prop_assert!(req.proof_is_valid());
        let resp = protocol::enroll::EnrollResponse {
            device_id: device,
            mqtt: protocol::enroll::MqttCredentials { host: "127.0.0.1".into(), port: 1883, username: "u".into(), password: "p".into() },
            hub_url: "http://127.0.0.1:8080".into(),
            root: RootKeys::single(root().public()),
            trust: Some("{}".into()),
        };
        roundtrip(&resp);
        let _ = BTreeMap::<String, String>::new();
    }

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let d = dev("gw-1");
        let _ = accept_desired_state(&bytes, &trust(), &d, &RevisionFloor::default(), NOW);
        let _ = accept_trust_update(&bytes, &trust(), NOW);
        let _ = EventBatch::decode(&bytes);
        let _ = StatusReport::decode(&bytes);
        let _ = Presence::decode(&bytes);
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = Topic::parse(s);
            let _ = DeviceProfile::from_toml(s);
        }
    }

    #[test]
    fn arbitrary_payloads_in_valid_envelopes_never_panic(payload in prop::collection::vec(any::<u8>(), 0..1024)) {
        let wire = sign_bytes(&payload, &[&online()]);
        let r = accept_desired_state(&wire, &trust(), &dev("gw-1"), &RevisionFloor::default(), NOW);
        prop_assert!(r.is_err());
    }
}

#[test]
fn profiles_round_trip_through_toml() {
    let p = DeviceProfile {
        name: "test-class".into(),
        description: "a test class".into(),
        arch: Arch::Armv7,
        cpu_cores: 2,
        memory_bytes: 512 << 20,
        storage_bytes: 4 << 30,
        runtimes: vec![RuntimeKind::Process],
        network: NetworkClass::CellularMetered,
        update: protocol::profile::UpdateDefaults {
            maintenance_window: Some(MaintenanceWindow {
                cron: CronExpr::parse("0 0 2 * * *").expect("valid"),
                duration_secs: 3600,
            }),
            prefer_delta: true,
            image_cache_bytes: Some(1 << 30),
        },
    };
    let text = toml::to_string(&p).expect("toml");
    assert_eq!(DeviceProfile::from_toml(&text).expect("parses"), p);
}

/// A document written before `stability_window_secs` existed decodes with the default window,
/// and a workload at the default is written without the field, so agents that predate it (and
/// refuse unknown fields) still accept what a newer hub signs unless the window is changed.
#[test]
fn the_stability_window_defaults_and_is_left_out_at_its_default() {
    let w = common::workload("sensor");
    assert_eq!(w.stability_window_secs, DEFAULT_STABILITY_WINDOW_SECS);
    let json = serde_json::to_value(&w).expect("json");
    assert!(json.get("stability_window_secs").is_none(), "{json}");
    let old: Workload = serde_json::from_value(json.clone()).expect("an old document decodes");
    assert_eq!(old, w);
    let mut short = json;
    short["stability_window_secs"] = 5.into();
    let short: Workload = serde_json::from_value(short).expect("decodes");
    assert_eq!(short.stability_window_secs, 5);
    let again = serde_json::to_value(&short).expect("json");
    assert_eq!(again["stability_window_secs"], 5);
}

/// `image_pulled` as an agent from before deltas sent it, and as a hub from before deltas
/// reads it: the delta fields are optional both ways.
#[test]
fn image_pulled_with_delta_fields_stays_compatible_with_older_hubs_and_agents() {
    let d = Digest::from_bytes([7; 32]);
    let old_json = format!(
        r#"{{"device":"gw-1","events":[{{"seq":1,"time":5,"body":{{"type":"image_pulled","digest":"{d}","bytes_fetched":10}}}}]}}"#
    );
    let batch = EventBatch::decode(old_json.as_bytes()).expect("an older agent's event decodes");
    assert_eq!(
        batch.events[0].body,
        EventBody::ImagePulled {
            digest: d,
            bytes_fetched: 10,
            delta: false,
            base: None,
            bytes_saved: 0,
            fallback: None,
        }
    );

    #[derive(serde::Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum OlderBody {
        ImagePulled {
            digest: Digest,
            bytes_fetched: u64,
            #[serde(default)]
            delta: bool,
        },
    }
    let new = EventBody::ImagePulled {
        digest: d,
        bytes_fetched: 3,
        delta: true,
        base: Some(Digest::from_bytes([1; 32])),
        bytes_saved: 97,
        fallback: None,
    };
    let json = serde_json::to_string(&new).expect("encode");
    assert!(json.contains("\"bytes_saved\":97"), "{json}");
    let OlderBody::ImagePulled {
        digest,
        bytes_fetched,
        delta,
    } = serde_json::from_str(&json).expect("an older hub reads the new event");
    assert_eq!((digest, bytes_fetched, delta), (d, 3, true));
}
