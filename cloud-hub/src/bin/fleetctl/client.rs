//! The HTTP client and the output: tables, pretty JSON, or one `--field`.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use reqwest::Method;
use serde::Serialize;
use serde_json::Value;

/// The hub's API, with the caller's token.
pub struct Client {
    pub hub: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

impl Client {
    /// A request to `path` under the hub's base URL, with the bearer token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self
            .http
            .request(method, format!("{}{path}", self.hub.trim_end_matches('/')));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends `req`; an error status becomes an error carrying the hub's message.
    pub async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> anyhow::Result<Value> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {} ({what})", self.hub))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!(
                "{status}: {}",
                v["error"].as_str().unwrap_or("request failed")
            );
        }
        Ok(v)
    }

    /// A call without a body.
    pub async fn call(&self, method: Method, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(method, path), path).await
    }

    /// A call with a JSON body.
    pub async fn call_with<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> anyhow::Result<Value> {
        self.send(self.request(method, path).json(body), path).await
    }
}

/// How answers are printed.
pub struct Out {
    /// JSON instead of tables.
    pub json: bool,
    /// Only this dot path of the answer.
    pub field: Option<String>,
}

impl Out {
    /// Prints `v`: the `--field`, else a table of `cols` for lists (unless `--json`), else JSON.
    pub fn show(&self, v: &Value, cols: &[(&str, &str)]) {
        if let Some(path) = &self.field {
            match field(v, path) {
                Value::String(s) => println!("{s}"),
                Value::Null => {}
                other => println!("{other}"),
            }
            return;
        }
        if self.json || !v.is_array() || cols.is_empty() {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            table(v, cols);
        }
    }
}

/// `key=value` arguments as a map.
pub fn labels(kv: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    kv.iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{s:?} is not key=value"))
        })
        .collect()
}

/// The path segment `s`, percent-encoded.
pub fn segment(s: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a constant URL parses");
    url.path_segments_mut()
        .expect("an http URL has path segments")
        .push(s);
    url.path().trim_start_matches('/').to_string()
}

fn table(v: &Value, cols: &[(&str, &str)]) {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    cols.iter()
                        .map(|(_, path)| {
                            let cell = path.split('.').fold(r, |acc, k| &acc[k]);
                            match cell {
                                Value::String(s) => s.clone(),
                                Value::Null => "-".into(),
                                other => other.to_string(),
                            }
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!(
        "{}",
        line(cols.iter().map(|(h, _)| h.to_string()).collect())
    );
    for r in rows {
        println!("{}", line(r));
    }
}

/// `--field`: the value at a dot path.
fn field<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |acc, k| match k.parse::<usize>() {
        Ok(i) if acc.is_array() => &acc[i],
        _ => &acc[k],
    })
}
