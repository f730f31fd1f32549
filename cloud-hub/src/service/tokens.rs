//! API tokens and the checks every call passes: the token is known, not revoked, not expired;
//! its role is high enough; its scope (actions, groups) covers the change. Every refusal of a
//! change is audited; nothing is changed by a refused call.

use serde_json::json;

use super::registry::{Registry, ENROLL_SALT};
use super::{Error, Result};
use crate::model::{
    check_labels, ApiTokenRow, Role, Target, TokenInfo, TokenScope, SCOPED_ACTIONS,
};
use crate::secrets::{hash_secret, random_token};
use crate::types::TokenIn;

const API_SALT: &str = "api";

impl Registry {
    /// Creates the first admin token once (at first start) and hands it to `persist` before
    /// recording that it exists, so a failure to save it leaves the next start to try again.
    /// Returns whether it created one.
    pub async fn bootstrap_admin(
        &self,
        persist: impl FnOnce(&str) -> std::io::Result<()>,
    ) -> Result<bool> {
        if self.run(|s| s.meta("admin_created")).await?.is_some() {
            return Ok(false);
        }
        let secret = self
            .new_api_token("admin", Role::Admin, TokenScope::default(), None)
            .await?;
        persist(&secret).map_err(|e| Error::Internal(format!("saving the admin token: {e}")))?;
        self.run(|s| s.set_meta("admin_created", "1")).await?;
        self.audit("hub", "token.create", "admin", "{}".into(), "ok".into())
            .await?;
        Ok(true)
    }

    async fn new_api_token(
        &self,
        name: &str,
        role: Role,
        scope: TokenScope,
        expires_at: Option<u64>,
    ) -> Result<String> {
        let secret = format!("fleet_{}", random_token());
        let (hash, name) = (hash_secret(API_SALT, &secret), name.to_string());
        self.run(move |s| s.insert_api_token(&hash, &name, role, &scope, expires_at))
            .await?;
        Ok(secret)
    }

    /// Who holds this bearer token, if it is live and has at least `need` (and, for a change,
    /// a scope covering `action`). A refused change is audited with `action` and `target`.
    pub async fn authorize(
        &self,
        token: &str,
        need: Role,
        action: &str,
        target: &str,
    ) -> Result<TokenInfo> {
        let hash = hash_secret(API_SALT, token.trim());
        let row = self
            .run(move |s| s.api_token(&hash))
            .await?
            .ok_or_else(|| Error::Unauthenticated("unknown token".into()))?;
        if let Some(at) = row.revoked_at {
            return Err(Error::Unauthenticated(format!(
                "token {} ({}) was revoked at {at} (unix seconds)",
                row.id, row.name
            )));
        }
        if let Some(at) = row.expires_at.filter(|&e| e <= self.clock.now()) {
            return Err(Error::Unauthenticated(format!(
                "token {} ({}) expired at {at} (unix seconds)",
                row.id, row.name
            )));
        }
        let who = TokenInfo {
            name: row.name,
            role: row.role,
            scope: row.scope,
        };
        self.require(&who, need, action, target).await?;
        Ok(who)
    }

    /// Checks that `who` has at least `need` and, for a change, that its scope names `action`
    /// (and allows acting on a single device, which a group-scoped token may not). A refusal
    /// of a change is audited.
    pub async fn require(
        &self,
        who: &TokenInfo,
        need: Role,
        action: &str,
        target: &str,
    ) -> Result<()> {
        let refusal = if who.role < need {
            Some(format!("{action} needs the {} role", need.as_str()))
        } else if need == Role::Viewer || action.ends_with(".list") {
            // Reads are governed by the role alone.
            None
        } else if let Some(a) = who
            .scope
            .actions
            .as_ref()
            .filter(|a| !a.iter().any(|x| x == action))
        {
            Some(format!(
                "token {} may not {action}: its scope allows only {}",
                who.name,
                a.join(", ")
            ))
        } else if let Some(g) = who
            .scope
            .groups
            .as_ref()
            .filter(|g| action.starts_with("group.") && !g.iter().any(|x| x == target))
        {
            Some(format!(
                "token {} may act only on the groups {}, not {target}",
                who.name,
                g.join(", ")
            ))
        } else if who.scope.groups.is_some() && action.starts_with("device.") {
            Some(format!(
                "token {} is scoped to groups and may not change device {target} directly",
                who.name
            ))
        } else {
            None
        };
        match refusal {
            None => Ok(()),
            Some(why) => Err(self.denied(who, action, target, why).await),
        }
    }

    /// Checks that a group-scoped token acts only on its groups: `target` must be one of them
    /// by name. A refusal is audited.
    pub async fn require_target(
        &self,
        who: &TokenInfo,
        action: &str,
        target: &Target,
    ) -> Result<()> {
        let Some(groups) = &who.scope.groups else {
            return Ok(());
        };
        let (name, ok) = match target {
            Target::Group(g) => (g.clone(), groups.contains(g)),
            Target::Selector(_) => ("a selector".to_string(), false),
            Target::Devices(_) => ("a device list".to_string(), false),
        };
        if ok {
            return Ok(());
        }
        let why = format!(
            "token {} may act only on the groups {}, not {name}",
            who.name,
            groups.join(", ")
        );
        Err(self.denied(who, action, &name, why).await)
    }

    /// Audits a refusal and makes its error.
    async fn denied(&self, who: &TokenInfo, action: &str, target: &str, why: String) -> Error {
        let outcome = format!("denied: {why}");
        if let Err(e) = self
            .audit(&who.name, action, target, "{}".into(), outcome)
            .await
        {
            tracing::error!(error = %e, "cannot audit a denial");
        }
        Error::Forbidden(why)
    }

    /// Creates an API token (admin) or a one-time enrollment token (operator).
    pub async fn create_token(&self, who: &TokenInfo, t: TokenIn) -> Result<String> {
        let (need, action) = match t.kind.as_str() {
            "api" => (Role::Admin, "token.create"),
            "enroll" => (Role::Operator, "enroll_token.create"),
            other => {
                return Err(Error::Invalid(format!(
                    "unknown token kind {other:?} (api, enroll)"
                )))
            }
        };
        self.require(who, need, action, "*").await?;
        let secret = if t.kind == "api" {
            let name = t
                .name
                .clone()
                .ok_or_else(|| Error::Invalid("api tokens need a name".into()))?;
            let role = t
                .role
                .ok_or_else(|| Error::Invalid("api tokens need a role".into()))?;
            let scope = self.check_scope(who, &t).await?;
            let expires = t
                .ttl_secs
                .map(|ttl| self.clock.now() + ttl.clamp(1, 10 * 365 * 86_400));
            self.new_api_token(&name, role, scope, expires).await?
        } else {
            if t.actions.is_some() || t.groups.is_some() {
                return Err(Error::Invalid(
                    "enrollment tokens take no actions or groups".into(),
                ));
            }
            check_labels(&t.labels).map_err(Error::Invalid)?;
            let ttl = t.ttl_secs.unwrap_or(24 * 3600).clamp(1, 365 * 86_400);
            let secret = format!("enroll_{}", random_token());
            let hash = hash_secret(ENROLL_SALT, &secret);
            let (labels, expires) = (t.labels.clone(), self.clock.now() + ttl);
            self.run(move |s| s.insert_enroll_token(&hash, &labels, expires))
                .await?;
            secret
        };
        self.audit(
            &who.name,
            action,
            t.name.as_deref().unwrap_or("-"),
            json!({"role": t.role, "labels": t.labels, "ttl_secs": t.ttl_secs,
                   "actions": t.actions, "groups": t.groups})
            .to_string(),
            "ok".into(),
        )
        .await?;
        Ok(secret)
    }

    /// The scope of a new API token: known actions, existing groups, and never wider than the
    /// scope of the token making it.
    async fn check_scope(&self, who: &TokenInfo, t: &TokenIn) -> Result<TokenScope> {
        if let Some(bad) = t
            .actions
            .iter()
            .flatten()
            .find(|a| !SCOPED_ACTIONS.contains(&a.as_str()))
        {
            return Err(Error::Invalid(format!(
                "unknown action {bad:?} (one of {})",
                SCOPED_ACTIONS.join(", ")
            )));
        }
        if let Some(groups) = &t.groups {
            let known = self.run(|s| s.groups()).await?;
            if let Some(bad) = groups.iter().find(|g| !known.iter().any(|k| &k.name == *g)) {
                return Err(Error::Invalid(format!("unknown group {bad}")));
            }
        }
        let narrower = |mine: &Option<Vec<String>>, theirs: &Option<Vec<String>>| match mine {
            None => true,
            Some(m) => theirs
                .as_ref()
                .is_some_and(|t| t.iter().all(|x| m.contains(x))),
        };
        if !narrower(&who.scope.actions, &t.actions) || !narrower(&who.scope.groups, &t.groups) {
            let why = format!(
                "token {} may not make a token wider than its own scope",
                who.name
            );
            return Err(self.denied(who, "token.create", "*", why).await);
        }
        Ok(TokenScope {
            actions: t.actions.clone(),
            groups: t.groups.clone(),
        })
    }

    /// Every API token (admin; never a secret or hash).
    pub async fn tokens(&self) -> Result<Vec<ApiTokenRow>> {
        self.run(|s| s.api_tokens()).await
    }

    /// Revokes an API token at once: its next call is refused.
    pub async fn revoke_token(&self, who: &TokenInfo, id: u64) -> Result<ApiTokenRow> {
        let now = self.clock.now();
        let actor = who.name.clone();
        let row = self.run(move |s| s.revoke_api_token(id, now)).await?;
        self.audit(
            &actor,
            "token.revoke",
            &id.to_string(),
            json!({"name": row.name}).to_string(),
            "ok".into(),
        )
        .await?;
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::tests::{admin, fixture};

    fn api(name: &str, role: Role, ttl: Option<u64>, actions: &[&str], groups: &[&str]) -> TokenIn {
        let list = |v: &[&str]| (!v.is_empty()).then(|| v.iter().map(|s| s.to_string()).collect());
        TokenIn {
            kind: "api".into(),
            name: Some(name.into()),
            role: Some(role),
            labels: Default::default(),
            ttl_secs: ttl,
            actions: list(actions),
            groups: list(groups),
        }
    }

    #[tokio::test]
    async fn a_token_expires_on_the_hubs_clock_and_a_scope_never_widens() {
        let f = fixture();
        let r = &f.registry;
        let t = r
            .create_token(&admin(), api("brief", Role::Operator, Some(60), &[], &[]))
            .await
            .expect("token");
        r.authorize(&t, Role::Operator, "group.put", "g")
            .await
            .expect("live");
        f.clock.advance(60);
        let e = r.authorize(&t, Role::Viewer, "device.list", "*").await;
        assert!(
            matches!(&e, Err(Error::Unauthenticated(m)) if m.contains("expired")),
            "{e:?}"
        );

        // Unknown actions and groups are refused before anything is made.
        let e = r
            .create_token(
                &admin(),
                api("x", Role::Viewer, None, &["release.make"], &[]),
            )
            .await;
        assert!(
            matches!(&e, Err(Error::Invalid(m)) if m.contains("unknown action")),
            "{e:?}"
        );
        let e = r
            .create_token(&admin(), api("x", Role::Viewer, None, &[], &["nowhere"]))
            .await;
        assert!(
            matches!(&e, Err(Error::Invalid(m)) if m.contains("unknown group nowhere")),
            "{e:?}"
        );

        // A scoped admin makes only tokens within its own scope.
        let scoped = TokenInfo {
            name: "scoped".into(),
            role: Role::Admin,
            scope: TokenScope {
                actions: Some(vec!["token.create".into(), "release.create".into()]),
                groups: None,
            },
        };
        let e = r
            .create_token(&scoped, api("wide", Role::Operator, None, &[], &[]))
            .await;
        assert!(
            matches!(&e, Err(Error::Forbidden(m)) if m.contains("wider")),
            "{e:?}"
        );
        r.create_token(
            &scoped,
            api("narrow", Role::Operator, None, &["release.create"], &[]),
        )
        .await
        .expect("a narrower token");
        let listed = r.tokens().await.expect("list");
        let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["brief", "narrow"], "nothing else was made");
    }
}
