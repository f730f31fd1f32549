//! `delta-bench PAIRS_DIR [PAIR ...]`: for each `PAIR/old.tar` → `PAIR/new.tar` under PAIRS_DIR
//! (as `benches/image-pairs.sh` builds them), our delta's size next to bsdiff, `zstd --patch-from`,
//! xdelta3 and HDiffPatch (Python `hdiffpatch`, lzma) measured in the same run when installed;
//! our ratio to the best; our apply time and peak RSS; generation time and peak RSS, ours and
//! HDiffPatch's. Peak RSS comes from `/usr/bin/time -v`; our binary is `fleet-delta` beside this one.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One measured run: output size, wall seconds, peak RSS in KiB.
#[derive(Debug, Clone, Copy)]
struct Run {
    size: u64,
    secs: f64,
    rss_kib: u64,
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .context("usage: delta-bench PAIRS_DIR [PAIR ...]")?,
    );
    let only: Vec<String> = args.collect();
    let ours = std::env::current_exe()?.with_file_name("fleet-delta");
    if !ours.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p fleet-delta`",
            ours.display()
        );
    }
    let mut pairs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("old.tar").is_file() && p.join("new.tar").is_file())
        .filter(|p| only.is_empty() || only.iter().any(|o| p.ends_with(o)))
        .collect();
    pairs.sort();
    let work = tempfile::tempdir().context("creating a scratch directory")?;
    println!("| pair | new.tar | ours | bsdiff | zstd -19 --long=27 --patch-from | xdelta3 -9 | HDiffPatch + lzma | ours / best | apply peak RSS | apply time | create time / peak RSS | HDiffPatch time / peak RSS |");
    println!(
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for pair in pairs {
        let name = pair
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (old, new) = (pair.join("old.tar"), pair.join("new.tar"));
        let out = |tool: &str| work.path().join(format!("{name}.{tool}"));
        let new_size = std::fs::metadata(&new)?.len();

        let create = timed(
            Command::new(&ours)
                .arg("create")
                .arg(&old)
                .arg(&new)
                .arg("-o")
                .arg(out("ours")),
            &out("ours"),
        )?
        .context("fleet-delta create failed")?;
        let rebuilt = work.path().join(format!("{name}.rebuilt"));
        let apply = timed(
            Command::new(&ours)
                .arg("apply")
                .arg(&old)
                .arg(out("ours"))
                .arg("-o")
                .arg(&rebuilt),
            &rebuilt,
        )?
        .context("fleet-delta apply failed")?;
        if std::fs::read(&rebuilt)? != std::fs::read(&new)? {
            bail!("{name}: applying our delta did not reproduce new.tar");
        }
        let _ = std::fs::remove_file(&rebuilt);

        let bsdiff = timed(
            Command::new("bsdiff")
                .arg(&old)
                .arg(&new)
                .arg(out("bsdiff")),
            &out("bsdiff"),
        )?;
        let zstd = timed(
            Command::new("zstd")
                .args(["-q", "-f", "-19", "--long=27"])
                .arg(format!("--patch-from={}", old.display()))
                .arg(&new)
                .arg("-o")
                .arg(out("zstd")),
            &out("zstd"),
        )?;
        let xdelta = timed(
            Command::new("xdelta3")
                .args(["-f", "-9", "-e", "-s"])
                .arg(&old)
                .arg(&new)
                .arg(out("xdelta")),
            &out("xdelta"),
        )?;
        let hdiff = timed(
            Command::new("python3")
                .arg("-c")
                .arg(HDIFF)
                .arg(&old)
                .arg(&new)
                .arg(out("hdiff")),
            &out("hdiff"),
        )?;
        let best = [bsdiff, zstd, xdelta, hdiff]
            .iter()
            .flatten()
            .map(|r| r.size)
            .min();
        let size = |r: Option<Run>| r.map_or("n/a".to_string(), |r| group(r.size));
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {:.1} MiB | {:.2} s | {:.1} s / {:.0} MiB | {} |",
            group(new_size),
            group(create.size),
            size(bsdiff),
            size(zstd),
            size(xdelta),
            size(hdiff),
            best.map_or("n/a".into(), |b| format!("{:.3}", create.size as f64 / b as f64)),
            apply.rss_kib as f64 / 1024.0,
            apply.secs,
            create.secs,
            create.rss_kib as f64 / 1024.0,
            hdiff.map_or("n/a".into(), |h| format!("{:.1} s / {:.0} MiB", h.secs, h.rss_kib as f64 / 1024.0)),
        );
    }
    Ok(())
}

const HDIFF: &str = "import sys, hdiffpatch\n\
old = open(sys.argv[1], 'rb').read(); new = open(sys.argv[2], 'rb').read()\n\
d = hdiffpatch.diff(old, new, hdiffpatch.LzmaConfig(level=9, window=23), validate=False)\n\
open(sys.argv[3], 'wb').write(d)\n";

/// Runs `cmd` under `/usr/bin/time -v`; `None` if the tool is missing or fails.
fn timed(cmd: &mut Command, output: &Path) -> Result<Option<Run>> {
    let program = cmd.get_program().to_owned();
    let mut timed = Command::new("/usr/bin/time");
    timed.arg("-v").arg(&program).args(cmd.get_args());
    let start = std::time::Instant::now();
    let result = match timed.output() {
        Ok(r) => r,
        Err(e) => bail!("running /usr/bin/time (apt-get install time): {e}"),
    };
    let secs = start.elapsed().as_secs_f64();
    if !result.status.success() {
        eprintln!(
            "{} failed or is not installed: {}",
            program.to_string_lossy(),
            String::from_utf8_lossy(&result.stderr)
                .lines()
                .take(3)
                .collect::<Vec<_>>()
                .join(" / ")
        );
        return Ok(None);
    }
    let report = String::from_utf8_lossy(&result.stderr);
    let rss_kib = report
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .context("no peak RSS in /usr/bin/time -v output")?;
    let size = std::fs::metadata(output)
        .with_context(|| {
            format!(
                "{} wrote no {}",
                program.to_string_lossy(),
                output.display()
            )
        })?
        .len();
    Ok(Some(Run {
        size,
        secs,
        rss_kib,
    }))
}

/// 1234567 → "1,234,567".
fn group(n: u64) -> String {
    let digits: Vec<char> = n.to_string().chars().rev().collect();
    let groups: Vec<String> = digits.chunks(3).map(|c| c.iter().rev().collect()).collect();
    groups.into_iter().rev().collect::<Vec<_>>().join(",")
}
