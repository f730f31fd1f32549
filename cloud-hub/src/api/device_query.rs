//! The query of `GET /api/v1/devices`: search, filters and paging. Without any parameter the
//! answer is every device, as before; the `x-total-count` header always gives the number that
//! matched before paging.

use protocol::{Convergence, PresenceState};
use serde::Deserialize;

use crate::model::DeviceRow;
use crate::service::Error;

/// Most devices one page may ask for.
pub const MAX_LIMIT: usize = 1000;

/// `GET /api/v1/devices?q=&label=&state=&profile=&limit=&offset=`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceQuery {
    /// Case-insensitive substring of the id or of any `key=value` label.
    pub q: Option<String>,
    /// Exact label, `key=value`.
    pub label: Option<String>,
    /// `online`, `offline`, `converged`, `converging`, `failed`, `stale` or `unreported`.
    pub state: Option<String>,
    /// Exact profile name.
    pub profile: Option<String>,
    /// At most this many (1 to [`MAX_LIMIT`]); without it, all that match.
    pub limit: Option<usize>,
    /// Skip this many that match (ordered by id).
    pub offset: Option<usize>,
}

/// A device state to filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StateFilter {
    Online,
    Offline,
    Convergence(Convergence),
    Stale,
    Unreported,
}

/// A checked [`DeviceQuery`].
#[derive(Debug, Clone)]
pub struct Filter {
    q: Option<String>,
    label: Option<(String, String)>,
    state: Option<StateFilter>,
    profile: Option<String>,
    limit: Option<usize>,
    offset: usize,
}

impl DeviceQuery {
    /// Checks the parameters; a bad one is a clear error.
    pub fn parse(self) -> Result<Filter, Error> {
        let label = match self.label {
            None => None,
            Some(l) => {
                let (k, v) = l
                    .split_once('=')
                    .ok_or_else(|| Error::Invalid(format!("label {l:?} is not key=value")))?;
                Some((k.to_string(), v.to_string()))
            }
        };
        let state = match self.state.as_deref() {
            None | Some("") => None,
            Some("online") => Some(StateFilter::Online),
            Some("offline") => Some(StateFilter::Offline),
            Some("converged") => Some(StateFilter::Convergence(Convergence::Converged)),
            Some("converging") => Some(StateFilter::Convergence(Convergence::Converging)),
            Some("deferred") => Some(StateFilter::Convergence(Convergence::Deferred)),
            Some("failed") => Some(StateFilter::Convergence(Convergence::Failed)),
            Some("idle") => Some(StateFilter::Convergence(Convergence::Idle)),
            Some("stale") => Some(StateFilter::Stale),
            Some("unreported") => Some(StateFilter::Unreported),
            Some(other) => {
                return Err(Error::Invalid(format!(
                    "unknown state {other:?} (online, offline, converged, converging, \
                     deferred, failed, idle, stale, unreported)"
                )))
            }
        };
        if let Some(l) = self.limit {
            if l == 0 || l > MAX_LIMIT {
                return Err(Error::Invalid(format!(
                    "limit {l} is out of range (1 to {MAX_LIMIT})"
                )));
            }
        }
        Ok(Filter {
            q: self
                .q
                .map(|q| q.trim().to_lowercase())
                .filter(|q| !q.is_empty()),
            label,
            state,
            profile: self.profile.filter(|p| !p.is_empty()),
            limit: self.limit,
            offset: self.offset.unwrap_or(0),
        })
    }
}

impl Filter {
    /// What the store may search for before the exact match here, as (part of the id, part of
    /// the labels' JSON): `q` when it is plain ASCII, with a `key=value` search becoming
    /// `key":"value` as the labels are stored. `None` when the store cannot narrow safely (no
    /// `q`, non-ASCII, quotes, backslashes or more than one `=`): every device is read.
    pub fn prefilter(&self) -> Option<(String, String)> {
        let q = self.q.as_ref()?;
        let plain = q
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !plain || q.matches('=').count() > 1 {
            return None;
        }
        Some((q.clone(), q.replace('=', "\":\"")))
    }

    fn matches(&self, d: &DeviceRow) -> bool {
        if let Some(q) = &self.q {
            let hit = d.id.to_lowercase().contains(q)
                || d.labels
                    .iter()
                    .any(|(k, v)| format!("{k}={v}").to_lowercase().contains(q));
            if !hit {
                return false;
            }
        }
        if let Some((k, v)) = &self.label {
            if d.labels.get(k) != Some(v) {
                return false;
            }
        }
        if let Some(p) = &self.profile {
            if &d.profile != p {
                return false;
            }
        }
        match self.state {
            None => true,
            Some(StateFilter::Online) => {
                d.presence.is_some_and(|p| p.state == PresenceState::Online)
            }
            Some(StateFilter::Offline) => {
                !d.presence.is_some_and(|p| p.state == PresenceState::Online)
            }
            Some(StateFilter::Convergence(c)) => {
                d.status.as_ref().is_some_and(|s| s.convergence == c)
            }
            Some(StateFilter::Stale) => d.status.as_ref().is_some_and(|s| s.stale),
            Some(StateFilter::Unreported) => d.status.is_none(),
        }
    }

    /// The number that match, and the page asked for (ordered by id).
    pub fn apply(&self, mut all: Vec<DeviceRow>) -> (usize, Vec<DeviceRow>) {
        all.retain(|d| self.matches(d));
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let total = all.len();
        let page = all
            .into_iter()
            .skip(self.offset)
            .take(self.limit.unwrap_or(usize::MAX))
            .collect();
        (total, page)
    }
}
