//! Device profiles (`firmware-profiles/*.toml`): what a class of device is and can run, and the
//! check "does this workload fit this device".

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::desired::{RuntimeKind, Workload};
use crate::error::DecodeError;
use crate::limits::{MAX_NAME_BYTES, MAX_PROFILE_BYTES};
use crate::schedule::MaintenanceWindow;

/// CPU architecture, named as Rust target triples name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// 64-bit ARM.
    Aarch64,
    /// 32-bit ARM, hard float.
    Armv7,
    /// 64-bit x86.
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit RISC-V.
    Riscv64,
}

impl Arch {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Arch::Aarch64 => "aarch64",
            Arch::Armv7 => "armv7",
            Arch::X86_64 => "x86_64",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// The architecture of the machine this code was compiled for, when it is one we name.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "aarch64" => Some(Arch::Aarch64),
            "arm" => Some(Arch::Armv7),
            "x86_64" => Some(Arch::X86_64),
            "riscv64" => Some(Arch::Riscv64),
            _ => None,
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The kind of uplink a device class has; metered links prefer deltas and small reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetworkClass {
    /// Wired Ethernet.
    Ethernet,
    /// Wi-Fi.
    Wifi,
    /// Cellular, billed by volume.
    CellularMetered,
    /// Low-power wide-area or satellite: very slow, very expensive.
    Constrained,
}

/// Update defaults for a device class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpdateDefaults {
    /// Maintenance window used when a desired state names none.
    #[serde(default)]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Prefer deltas over full images.
    #[serde(default)]
    pub prefer_delta: bool,
    /// Bytes of storage the agent may use for its image cache.
    #[serde(default)]
    pub image_cache_bytes: Option<u64>,
}

/// One device class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    /// Short name, e.g. `rpi4-4g` (same alphabet as device ids).
    pub name: String,
    /// Human description.
    pub description: String,
    /// CPU architecture.
    pub arch: Arch,
    /// CPU cores.
    pub cpu_cores: u32,
    /// RAM in bytes.
    pub memory_bytes: u64,
    /// Storage available to the agent, in bytes.
    pub storage_bytes: u64,
    /// Runtimes the class supports.
    pub runtimes: Vec<RuntimeKind>,
    /// Uplink.
    pub network: NetworkClass,
    /// Update defaults.
    #[serde(default)]
    pub update: UpdateDefaults,
}

/// Why a workload does not fit a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    /// Image built for another architecture.
    #[error("workload {workload}: image is for {image}, device is {device}")]
    Arch {
        /// Workload name.
        workload: String,
        /// Image architecture.
        image: Arch,
        /// Device architecture.
        device: Arch,
    },
    /// Runtime not available on the device.
    #[error("workload {workload}: runtime {runtime} not available on the device")]
    Runtime {
        /// Workload name.
        workload: String,
        /// Runtime asked for.
        runtime: &'static str,
    },
    /// Asks for more CPU than the device has.
    #[error("workload {workload}: asks for {asked} millicores, device has {has}")]
    Cpu {
        /// Workload name.
        workload: String,
        /// Millicores asked.
        asked: u64,
        /// Millicores available.
        has: u64,
    },
    /// The sum of memory limits exceeds the device's RAM.
    #[error("workloads ask for {asked} bytes of memory, device has {has}")]
    Memory {
        /// Bytes asked (sum).
        asked: u64,
        /// Bytes available.
        has: u64,
    },
    /// Images (current set, twice for the rollback copy) exceed the device's storage.
    #[error("images need {asked} bytes of storage (with rollback copies), device has {has}")]
    Storage {
        /// Bytes needed.
        asked: u64,
        /// Bytes available.
        has: u64,
    },
}

impl DeviceProfile {
    /// Parses and validates a profile file (TOML).
    pub fn from_toml(text: &str) -> Result<Self, DecodeError> {
        if text.len() > MAX_PROFILE_BYTES {
            return Err(DecodeError::TooLarge {
                size: text.len(),
                limit: MAX_PROFILE_BYTES,
            });
        }
        let p: DeviceProfile =
            toml::from_str(text).map_err(|e| DecodeError::Invalid(e.to_string()))?;
        p.validate().map_err(DecodeError::Invalid)?;
        Ok(p)
    }

    /// Checks names and ranges.
    pub fn validate(&self) -> Result<(), String> {
        crate::ids::DeviceId::new(self.name.clone()).map_err(|e| format!("profile name: {e}"))?;
        if self.description.len() > MAX_NAME_BYTES * 4 {
            return Err("description too long".into());
        }
        if self.cpu_cores == 0 || self.memory_bytes == 0 || self.storage_bytes == 0 {
            return Err("cpu_cores, memory_bytes and storage_bytes must be non-zero".into());
        }
        if self.runtimes.is_empty() {
            return Err("a profile names at least one runtime".into());
        }
        if let Some(w) = &self.update.maintenance_window {
            w.validate()?;
        }
        Ok(())
    }

    /// Whether a set of workloads fits this device, given the runtimes the device reported it
    /// actually has (`None`: trust the profile). Returns the first misfit.
    pub fn check_fit(
        &self,
        workloads: &[Workload],
        reported_runtimes: Option<&[RuntimeKind]>,
    ) -> Result<(), Misfit> {
        let runtimes = reported_runtimes.unwrap_or(&self.runtimes);
        let cpu_has = u64::from(self.cpu_cores) * 1000;
        let mut mem = 0u64;
        let mut storage = 0u64;
        for w in workloads {
            let name = w.name.to_string();
            if w.image.arch != self.arch {
                return Err(Misfit::Arch {
                    workload: name,
                    image: w.image.arch,
                    device: self.arch,
                });
            }
            if !runtimes.contains(&w.runtime) || !self.runtimes.contains(&w.runtime) {
                return Err(Misfit::Runtime {
                    workload: name,
                    runtime: w.runtime.as_str(),
                });
            }
            if let Some(c) = w.resources.cpu_millis {
                if u64::from(c) > cpu_has {
                    return Err(Misfit::Cpu {
                        workload: name,
                        asked: c.into(),
                        has: cpu_has,
                    });
                }
            }
            mem = mem.saturating_add(w.resources.memory_bytes.unwrap_or(0));
            storage = storage.saturating_add(w.image.size.saturating_mul(2));
        }
        if mem > self.memory_bytes {
            return Err(Misfit::Memory {
                asked: mem,
                has: self.memory_bytes,
            });
        }
        if storage > self.storage_bytes {
            return Err(Misfit::Storage {
                asked: storage,
                has: self.storage_bytes,
            });
        }
        Ok(())
    }
}
