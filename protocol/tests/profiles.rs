//! Every file in `firmware-profiles/` parses, is named after its profile, and the fit check
//! explains why a workload does not fit.

mod common;

use std::path::Path;

use common::workload;
use protocol::{Arch, DeviceProfile, Misfit, RuntimeKind};

fn load_all() -> Vec<(String, DeviceProfile)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware-profiles");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("firmware-profiles/ exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("readable");
        let p = DeviceProfile::from_toml(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("utf8 name")
            .to_string();
        out.push((stem, p));
    }
    out
}

#[test]
fn every_profile_parses_and_is_named_after_its_file() {
    let all = load_all();
    assert!(
        all.len() >= 4,
        "expected at least four device classes, found {}",
        all.len()
    );
    for (stem, p) in &all {
        assert_eq!(stem, &p.name, "file name and profile name differ");
    }
    let arches: std::collections::BTreeSet<Arch> = all.iter().map(|(_, p)| p.arch).collect();
    assert!(
        arches.contains(&Arch::Aarch64)
            && arches.contains(&Arch::Armv7)
            && arches.contains(&Arch::X86_64)
    );
}

fn profile(name: &str) -> DeviceProfile {
    load_all()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("profile {name} missing"))
}

#[test]
fn fit_check_names_the_reason() {
    let small = profile("cell-a64-256m");
    let mut w = workload("sensor");
    assert_eq!(small.check_fit(std::slice::from_ref(&w), None), Ok(()));

    w.image.arch = Arch::Armv7;
    assert!(matches!(
        small.check_fit(std::slice::from_ref(&w), None),
        Err(Misfit::Arch { .. })
    ));

    let mut w = workload("sensor");
    w.runtime = RuntimeKind::Oci;
    let e = small
        .check_fit(std::slice::from_ref(&w), None)
        .expect_err("no oci on this class");
    assert!(e.to_string().contains("runtime oci"), "{e}");

    let mut w = workload("sensor");
    w.resources.memory_bytes = Some(300 << 20);
    assert!(matches!(
        small.check_fit(&[w], None),
        Err(Misfit::Memory { .. })
    ));

    let mut w = workload("sensor");
    w.resources.cpu_millis = Some(2000);
    assert!(matches!(
        small.check_fit(&[w], None),
        Err(Misfit::Cpu { .. })
    ));

    let mut w = workload("sensor");
    w.image.size = 400_000_000;
    assert!(matches!(
        small.check_fit(&[w], None),
        Err(Misfit::Storage { .. })
    ));

    // A profile that allows oci, on a device that reported it lacks runc.
    let pi = profile("rpi4-4g");
    let mut w = workload("sensor");
    w.runtime = RuntimeKind::Oci;
    assert_eq!(pi.check_fit(std::slice::from_ref(&w), None), Ok(()));
    assert!(matches!(
        pi.check_fit(&[w], Some(&[RuntimeKind::Process])),
        Err(Misfit::Runtime { .. })
    ));
}

#[test]
fn bad_profiles_are_refused_with_a_reason() {
    let good = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware-profiles/rpi4-4g.toml"),
    )
    .expect("readable");
    for (from, to) in [
        ("arch = \"aarch64\"", "arch = \"sparc\""),
        ("cpu_cores = 4", "cpu_cores = 0"),
        ("name = \"rpi4-4g\"", "name = \"../etc\""),
        ("runtimes = [\"process\", \"oci\"]", "runtimes = []"),
        (
            "network = \"ethernet\"",
            "network = \"ethernet\"\nunknown = 1",
        ),
    ] {
        let bad = good.replace(from, to);
        assert_ne!(bad, good);
        assert!(DeviceProfile::from_toml(&bad).is_err(), "accepted: {to}");
    }
}
