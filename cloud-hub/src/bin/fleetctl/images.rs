//! `fleetctl images`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use reqwest::Method;

use crate::client::{Client, Out};

#[derive(Subcommand)]
pub enum Images {
    /// List images.
    List,
    /// Import a directory, tar, docker save archive or OCI layout.
    Import {
        path: PathBuf,
        /// Image name.
        #[arg(long)]
        name: String,
        /// Architecture (default: this machine's).
        #[arg(long)]
        arch: Option<String>,
        /// dir, tar, docker or oci (default: dir for directories, tar otherwise).
        #[arg(long)]
        format: Option<String>,
    },
    /// Delete an image no release names, with its blob and cached deltas.
    Delete { digest: String },
}

pub async fn run(cmd: Images, c: &Client, out: &Out) -> anyhow::Result<()> {
    match cmd {
        Images::Delete { digest } => out.show(
            &c.call(
                Method::DELETE,
                &format!("/api/v1/images/{}", crate::client::segment(&digest)),
            )
            .await?,
            &[],
        ),
        Images::List => out.show(
            &c.call(Method::GET, "/api/v1/images").await?,
            &[
                ("DIGEST", "digest"),
                ("NAME", "name"),
                ("SIZE", "size"),
                ("STORED", "compressed_size"),
                ("ARCH", "arch"),
            ],
        ),
        Images::Import {
            path,
            name,
            arch,
            format,
        } => {
            let format = format.unwrap_or_else(|| {
                if path.is_dir() {
                    "dir".into()
                } else {
                    "tar".into()
                }
            });
            let (body, fmt) = if format == "dir" {
                let tree = cloud_hub::images::tree_from_dir(&path)?;
                (
                    cloud_hub::images::deterministic_tar(&tree)?,
                    "tar".to_string(),
                )
            } else {
                (
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
                    format,
                )
            };
            let total = body.len();
            let mut query = vec![("name", name), ("format", fmt)];
            if let Some(a) = arch {
                query.push(("arch", a));
            }
            let req = c
                .request(Method::POST, "/api/v1/images")
                .query(&query)
                .header("content-length", total)
                .body(progress_body(body, path.display().to_string()));
            let v = c.send(req, "uploading the image").await?;
            out.show(&v, &[]);
        }
    }
    Ok(())
}

/// The upload body as a stream that draws a progress bar on stderr.
fn progress_body(body: Vec<u8>, what: String) -> reqwest::Body {
    let total = body.len().max(1);
    let chunks: Vec<Vec<u8>> = body.chunks(256 * 1024).map(<[u8]>::to_vec).collect();
    let mut sent = 0usize;
    let stream = futures_util::stream::iter(chunks.into_iter().map(move |c| {
        sent += c.len();
        let pct = sent * 100 / total;
        let bar = "#".repeat(pct / 4);
        eprint!("\r{what} [{bar:<25}] {pct:>3}% {sent} bytes");
        if sent >= total {
            eprintln!();
        }
        Ok::<_, std::io::Error>(c)
    }));
    reqwest::Body::wrap_stream(stream)
}
