//! What an import is given, found from its content ([`detect`]), and the documents of `docker
//! save` archives and OCI layouts read as typed structures (`oci-spec` for the OCI index,
//! manifest and image configuration; the `docker save` `manifest.json` below).
//!
//! A multi-architecture index (nested indexes included) is narrowed to the platform asked
//! for; the image's configuration (entrypoint, cmd, env, working dir, user, architecture) is
//! kept as an [`ImageConfig`].

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context as _};
use oci_spec::image::{Descriptor, ImageConfiguration, MediaType};
use protocol::Arch;
use serde::{Deserialize, Serialize};

use super::layer::clean;

/// What an import is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A directory tree (only on the machine that has it; sent as a plain tar).
    Dir,
    /// A plain tar of the root file system.
    Tar,
    /// A `docker save` archive.
    Docker,
    /// An OCI image layout, as a directory or a tar.
    Oci,
}

impl Format {
    /// The name `--format` and the API take.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Dir => "dir",
            Format::Tar => "tar",
            Format::Docker => "docker",
            Format::Oci => "oci",
        }
    }

    /// The name as an operator reads it.
    pub fn describe(self) -> &'static str {
        match self {
            Format::Dir => "a directory tree",
            Format::Tar => "a plain tar of a root file system",
            Format::Docker => "a docker save archive",
            Format::Oci => "an OCI image layout",
        }
    }

    /// Parses a `--format` name.
    pub fn parse(s: &str) -> anyhow::Result<Format> {
        Ok(match s {
            "dir" => Format::Dir,
            "tar" => Format::Tar,
            "docker" => Format::Docker,
            "oci" => Format::Oci,
            other => bail!("unknown format {other:?} (dir, tar, docker, oci)"),
        })
    }
}

/// Finds what `path` is: a directory (an OCI layout when it holds `oci-layout` or
/// `index.json`), or a tar whose top-level entries say which kind it is.
pub fn detect(path: &Path) -> anyhow::Result<Format> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_dir() {
        let layout = path.join("oci-layout").is_file() || path.join("index.json").is_file();
        return Ok(if layout { Format::Oci } else { Format::Dir });
    }
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    if magic[..n].starts_with(&[0x1f, 0x8b]) || magic[..n] == [0x28, 0xb5, 0x2f, 0xfd] {
        bail!(
            "{} is compressed; give the tar itself (decompress it first)",
            path.display()
        );
    }
    let file = File::open(path)?;
    let mut a = tar::Archive::new(BufReader::new(file));
    let (mut entries, mut layout, mut index, mut manifest) = (0u64, false, false, false);
    let not_tar = |e: std::io::Error| {
        anyhow::anyhow!(
            "{} is not a tar archive ({e}); give a directory, a tar, a docker save archive or an OCI layout",
            path.display()
        )
    };
    for e in a.entries_with_seek().map_err(not_tar)? {
        let e = e.map_err(not_tar)?;
        entries += 1;
        match clean(&e.path()?.to_string_lossy()).as_deref() {
            Some("oci-layout") => layout = true,
            Some("index.json") => index = true,
            Some("manifest.json") => manifest = true,
            _ => {}
        }
    }
    if entries == 0 {
        bail!("{} is empty or not a tar archive", path.display());
    }
    // `docker save` from Docker 25 on writes an OCI layout with a `manifest.json` beside it:
    // the layout is read, whose blobs carry digests.
    Ok(if layout || index {
        Format::Oci
    } else if manifest {
        Format::Docker
    } else {
        Format::Tar
    })
}

/// The format to import `path` as: the one detected, or `explicit` when it matches it.
pub fn resolve(path: &Path, explicit: Option<Format>) -> anyhow::Result<Format> {
    let found = detect(path)?;
    match explicit {
        None => Ok(found),
        Some(f) if f == found => Ok(found),
        Some(f) => bail!(
            "--format {} does not match {}: it is {} (--format {}); leave --format out to import it as that",
            f.as_str(),
            path.display(),
            found.describe(),
            found.as_str()
        ),
    }
}

/// The parts of an image's configuration a release can take: what to run and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImageConfig {
    /// The architecture the image says it is built for.
    #[schema(value_type = Option<String>, example = "aarch64")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Default arguments (after the entrypoint).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// `NAME=value` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// User (name or uid, optionally `:group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl ImageConfig {
    /// The kept parts of an OCI (or docker) image configuration; refuses an architecture the
    /// fleet does not run.
    pub fn from_oci(c: &ImageConfiguration) -> anyhow::Result<ImageConfig> {
        let arch = arch_from_oci(&c.architecture().to_string(), c.variant().as_deref())?;
        let mut out = ImageConfig {
            arch: Some(arch),
            ..ImageConfig::default()
        };
        if let Some(x) = c.config() {
            out.entrypoint = x.entrypoint().clone().unwrap_or_default();
            out.cmd = x.cmd().clone().unwrap_or_default();
            out.env = x.env().clone().unwrap_or_default();
            out.working_dir = x.working_dir().clone().filter(|w| !w.is_empty());
            out.user = x.user().clone().filter(|u| !u.is_empty());
        }
        Ok(out)
    }
}

/// The fleet's name of an OCI (GOARCH) architecture: `arm64` is `aarch64`, `amd64` is
/// `x86_64`, `arm` (variant v7 or none) is `armv7`.
pub fn arch_from_oci(arch: &str, variant: Option<&str>) -> anyhow::Result<Arch> {
    Ok(match (arch, variant) {
        ("arm64" | "aarch64", _) => Arch::Aarch64,
        ("amd64" | "x86_64", _) => Arch::X86_64,
        ("arm" | "armv7", None | Some("v7")) => Arch::Armv7,
        ("riscv64", _) => Arch::Riscv64,
        (a, v) => bail!(
            "architecture {a}{} is not one the fleet runs (arm64, amd64, arm/v7, riscv64)",
            v.map(|v| format!("/{v}")).unwrap_or_default()
        ),
    })
}

/// Parses an architecture as an operator names it: the fleet's names or the OCI ones
/// (`arm64`, `amd64`, `arm/v7`), optionally prefixed by `linux/` (a `--platform`).
pub fn parse_arch(s: &str) -> anyhow::Result<Arch> {
    let s = s.strip_prefix("linux/").unwrap_or(s);
    let (a, v) = match s.split_once('/') {
        Some((a, v)) => (a, Some(v)),
        None => (s, None),
    };
    arch_from_oci(a, v)
}

/// A descriptor that is another index (OCI image index or docker manifest list).
pub fn is_index(d: &Descriptor) -> bool {
    matches!(d.media_type(), MediaType::ImageIndex)
        || d.media_type().to_string() == "application/vnd.docker.distribution.manifest.list.v2+json"
}

/// Picks from an index's `manifests` the one for `want` (any architecture when `None` and
/// there is a single candidate). Descriptors for other operating systems (attestations say
/// `unknown`) are passed over; one without a platform matches anything.
pub fn pick(manifests: &[Descriptor], want: Option<Arch>) -> anyhow::Result<&Descriptor> {
    let mut seen = Vec::new();
    let mut fits = Vec::new();
    for d in manifests {
        let Some(p) = d.platform() else {
            fits.push(d);
            continue;
        };
        let os = p.os().to_string();
        if os != "linux" {
            continue;
        }
        let name = format!(
            "linux/{}{}",
            p.architecture(),
            p.variant()
                .as_deref()
                .map(|v| format!("/{v}"))
                .unwrap_or_default()
        );
        let arch = arch_from_oci(&p.architecture().to_string(), p.variant().as_deref()).ok();
        seen.push(name);
        if want.is_none() || arch == want {
            fits.push(d);
        }
    }
    match (fits.as_slice(), want) {
        ([one], _) => Ok(one),
        ([], Some(w)) => bail!(
            "the image has no {w} platform (it has: {})",
            if seen.is_empty() {
                "none".into()
            } else {
                seen.join(", ")
            }
        ),
        ([], None) => bail!("the image index lists no linux image"),
        (_, None) => bail!(
            "the image index holds several platforms ({}); choose one with --platform",
            seen.join(", ")
        ),
        (many, Some(_)) => Ok(many[0]),
    }
}

/// One image of a `docker save` `manifest.json`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerImage {
    /// The configuration file in the archive.
    pub config: String,
    /// Tags it was saved under.
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Layer tars in the archive, bottom first.
    pub layers: Vec<String>,
}
