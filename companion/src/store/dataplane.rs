//! Data-plane tokens and refused usage batches.
//!
//! A data-plane token is what a fleet of Envoys presents to the control plane: it may read
//! snapshots and report usage (each a permission of its own), nothing else. It cannot sign a
//! policy and it opens no admin endpoint, so holding one (as every Envoy configuration that
//! carries it does) gives little: the snapshot the filter already has, and usage reports that
//! the control plane checks and bounds. Tokens are stored as SHA-256 digests, revoked on their
//! own, and named, so that usage batches and refusals say which fleet sent them.

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::change::{current_version, record_event};
use super::sql::{args, Row, Sql, Value};
use super::Store;
use crate::error::Error;
use crate::keygen::random_base62;

/// Every data-plane token starts with this, so a leaked one is recognizable.
pub const DATAPLANE_TOKEN_PREFIX: &str = "kwdp_";
/// The audit actor of what a data-plane token did: `dataplane:<name>`. Admin token names cannot
/// hold `:`, so a data plane can never pass for an administrator in the audit trail.
pub const DATAPLANE_ACTOR_PREFIX: &str = "dataplane:";
/// How much of a refused report's body is kept.
pub const MAX_KEPT_REFUSED_BODY: usize = 64 * 1024;
/// Refused batches older than this are pruned (like applied batch ids).
const REFUSED_RETENTION_SECONDS: u64 = 30 * 86_400;

/// What a data-plane token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// `GET /v1/snapshot`, `/v1/snapshot/manifest`, `/v1/snapshot/chunks/…`.
    Snapshot,
    /// `POST /v1/usage`.
    Usage,
}

impl Permission {
    pub fn parse(text: &str) -> Result<Permission, Error> {
        match text {
            "snapshot" => Ok(Permission::Snapshot),
            "usage" => Ok(Permission::Usage),
            other => Err(Error::invalid(
                "invalid_permission",
                format!("{other:?} is not a data-plane permission: snapshot or usage"),
            )),
        }
    }
}

/// A data-plane token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DataplaneTokenView {
    pub name: String,
    pub permissions: Vec<Permission>,
    pub created_at: u64,
    pub created_by: String,
    pub revoked_at: Option<u64>,
}

/// A new data-plane token: the token itself (shown this once) next to its listing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedDataplaneToken {
    /// `kwdp_…`: put it in the filters' `sync.token`. Stored as a digest only.
    pub token: String,
    #[serde(flatten)]
    pub view: DataplaneTokenView,
}

/// The longest data-plane token name: `dataplane:<name>/<instance>` must fit the audit actor.
pub const MAX_DATAPLANE_TOKEN_NAME: usize = 40;

/// Who presented a valid data-plane token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneIdentity {
    pub name: String,
    pub permissions: Vec<Permission>,
}

impl DataplaneIdentity {
    pub fn may(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// What the audit trail records for this data plane.
    pub fn actor(&self) -> String {
        format!("{DATAPLANE_ACTOR_PREFIX}{}", self.name)
    }
}

/// A usage batch the control plane refused, as kept for audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RefusedBatchView {
    pub received_at: u64,
    /// The data-plane token that sent it.
    pub token_name: String,
    /// The instance the report named (as sent, control characters removed).
    pub reporter: String,
    pub batch_id: String,
    pub entries: u64,
    /// The cost the batch claimed, in micro-USD.
    pub cost_microusd: u64,
    pub reasons: Vec<String>,
    /// The report as received (cut at 64 KiB).
    pub body: String,
}

fn hex_digest(token: &str) -> String {
    hex::encode(keyward_engine::hash::sha256(token.as_bytes()))
}

fn token_of(row: &Row) -> Result<DataplaneTokenView, Error> {
    let mut columns = row.columns();
    Ok(DataplaneTokenView {
        name: columns.text()?,
        permissions: serde_json::from_str(&columns.text()?)?,
        created_at: columns.uint()?,
        created_by: columns.text()?,
        revoked_at: columns.opt_uint()?,
    })
}

const TOKEN_COLUMNS: &str = "name, permissions, created_at, created_by, revoked_at";

fn find_token(sql: &mut dyn Sql, name: &str) -> Result<Option<DataplaneTokenView>, Error> {
    sql.query_opt(
        &format!("SELECT {TOKEN_COLUMNS} FROM dataplane_tokens WHERE name = ?1"),
        args![name],
    )?
    .as_ref()
    .map(token_of)
    .transpose()
}

/// An audit event about a token: tokens are no policy, so it names the current version.
fn audit_token(
    sql: &mut dyn Sql,
    now: u64,
    actor: &str,
    action: &str,
    name: &str,
    details: &serde_json::Value,
) -> Result<(), Error> {
    let version = current_version(sql)?;
    record_event(sql, now, actor, action, name, details, version)
}

/// Text for the audit trail and terminals: control characters dropped, length bounded.
fn printable(text: &str, limit: usize) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(limit)
        .collect()
}

impl Store {
    /// Creates a data-plane token named `name` with `permissions`; returns it listed and, once,
    /// the token itself (only its digest is stored).
    pub fn create_dataplane_token(
        &mut self,
        actor: &str,
        now: u64,
        name: &str,
        permissions: &[Permission],
    ) -> Result<CreatedDataplaneToken, Error> {
        if !crate::cli::valid_actor(name) || name.len() > MAX_DATAPLANE_TOKEN_NAME {
            return Err(Error::invalid(
                "invalid_name",
                format!(
                    "a data-plane token's name is 1 to {MAX_DATAPLANE_TOKEN_NAME} characters of \
                     A-Z a-z 0-9 _ - . @"
                ),
            ));
        }
        let mut permissions = permissions.to_vec();
        permissions.sort_by_key(|permission| *permission as u8);
        permissions.dedup();
        if permissions.is_empty() {
            return Err(Error::invalid(
                "invalid_permission",
                "a data-plane token needs at least one permission (snapshot, usage)",
            ));
        }
        let token = format!("{DATAPLANE_TOKEN_PREFIX}{}", random_base62(43));
        self.write(|sql| {
            if find_token(sql, name)?.is_some() {
                return Err(Error::new(
                    409,
                    "dataplane_token_exists",
                    format!(
                        "a data-plane token named {name:?} exists (revoked tokens keep their \
                         name): choose another name"
                    ),
                ));
            }
            sql.execute(
                "INSERT INTO dataplane_tokens (name, token_sha256, permissions, created_at, \
                 created_by) VALUES (?1, ?2, ?3, ?4, ?5)",
                args![
                    name,
                    hex_digest(&token),
                    Value::json(&permissions)?,
                    Value::uint(now)?,
                    actor
                ],
            )?;
            audit_token(
                sql,
                now,
                actor,
                "dataplane_token.create",
                name,
                &json!({"permissions": permissions}),
            )?;
            let view = find_token(sql, name)?
                .ok_or_else(|| Error::internal("the new data-plane token is missing"))?;
            Ok(CreatedDataplaneToken { token, view })
        })
    }

    /// Every data-plane token, revoked ones too, by name.
    pub fn dataplane_tokens(&mut self) -> Result<Vec<DataplaneTokenView>, Error> {
        self.read(|sql| {
            sql.query_map(
                &format!("SELECT {TOKEN_COLUMNS} FROM dataplane_tokens ORDER BY name"),
                &[],
                token_of,
            )
        })
    }

    /// Revokes a data-plane token: from now on it opens nothing. Revoking twice is refused.
    pub fn revoke_dataplane_token(
        &mut self,
        actor: &str,
        now: u64,
        name: &str,
    ) -> Result<DataplaneTokenView, Error> {
        self.write(|sql| {
            let token = find_token(sql, name)?.ok_or_else(|| {
                Error::not_found(
                    "dataplane_token_not_found",
                    format!("no data-plane token named {name:?}"),
                )
            })?;
            if token.revoked_at.is_some() {
                return Err(Error::new(
                    409,
                    "dataplane_token_revoked",
                    format!("the data-plane token {name:?} is revoked already"),
                ));
            }
            sql.execute(
                "UPDATE dataplane_tokens SET revoked_at = ?2 WHERE name = ?1",
                args![name, Value::uint(now)?],
            )?;
            audit_token(sql, now, actor, "dataplane_token.revoke", name, &json!({}))?;
            find_token(sql, name)?
                .ok_or_else(|| Error::internal("the revoked data-plane token is missing"))
        })
    }

    /// Who `token` is, when it is a data-plane token that is not revoked. The lookup is by the
    /// token's SHA-256, like keys: the plaintext is never stored or compared.
    pub fn dataplane_identity(&mut self, token: &str) -> Result<Option<DataplaneIdentity>, Error> {
        if !token.starts_with(DATAPLANE_TOKEN_PREFIX) || token.len() > 256 {
            return Ok(None);
        }
        let digest = hex_digest(token);
        self.read(|sql| {
            let row = sql.query_opt(
                "SELECT name, permissions FROM dataplane_tokens \
                 WHERE token_sha256 = ?1 AND revoked_at IS NULL",
                args![digest],
            )?;
            row.map(|row| {
                let mut columns = row.columns();
                Ok(DataplaneIdentity {
                    name: columns.text()?,
                    permissions: serde_json::from_str(&columns.text()?)?,
                })
            })
            .transpose()
        })
    }

    /// Keeps a refused usage batch for audit, with one audit event by the data plane that sent
    /// it, and prunes refusals older than the retention.
    pub fn record_refused_usage(
        &mut self,
        now: u64,
        refused: &RefusedBatchView,
    ) -> Result<(), Error> {
        let body: String = refused.body.chars().take(MAX_KEPT_REFUSED_BODY).collect();
        let reporter = printable(&refused.reporter, 200);
        let batch_id = printable(&refused.batch_id, 200);
        self.write(|sql| {
            sql.execute(
                "INSERT INTO refused_usage_batches (received_at, token_name, reporter, batch_id, \
                 entries, cost_microusd, reasons, body) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                args![
                    Value::uint(now)?,
                    &refused.token_name,
                    &reporter,
                    &batch_id,
                    Value::saturating(refused.entries),
                    Value::saturating(refused.cost_microusd),
                    Value::json(&refused.reasons)?,
                    body
                ],
            )?;
            sql.execute(
                "DELETE FROM refused_usage_batches WHERE received_at < ?1",
                args![Value::saturating(
                    now.saturating_sub(REFUSED_RETENTION_SECONDS)
                )],
            )?;
            let version = current_version(sql)?;
            record_event(
                sql,
                now,
                &format!("{DATAPLANE_ACTOR_PREFIX}{}", refused.token_name),
                "usage.refused",
                &batch_id,
                &json!({"reporter": reporter, "entries": refused.entries,
                        "cost_microusd": refused.cost_microusd,
                        "reasons": refused.reasons.iter().take(10).collect::<Vec<_>>()}),
                version,
            )
        })
    }

    /// The most recent refused usage batches, newest first.
    pub fn refused_usage_batches(&mut self, limit: u64) -> Result<Vec<RefusedBatchView>, Error> {
        self.read(|sql| {
            sql.query_map(
                "SELECT received_at, token_name, reporter, batch_id, entries, cost_microusd, \
                 reasons, body FROM refused_usage_batches ORDER BY seq DESC LIMIT ?1",
                &[Value::saturating(limit)],
                |row| {
                    let mut columns = row.columns();
                    Ok(RefusedBatchView {
                        received_at: columns.uint()?,
                        token_name: columns.text()?,
                        reporter: columns.text()?,
                        batch_id: columns.text()?,
                        entries: columns.uint()?,
                        cost_microusd: columns.uint()?,
                        reasons: serde_json::from_str(&columns.text()?)?,
                        body: columns.text()?,
                    })
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_created_once_found_by_digest_and_revoked_on_their_own() {
        let mut store = Store::in_memory().unwrap();
        let CreatedDataplaneToken { view, token } = store
            .create_dataplane_token(
                "ops",
                10,
                "fleet-a",
                &[Permission::Usage, Permission::Snapshot, Permission::Usage],
            )
            .unwrap();
        assert!(token.starts_with(DATAPLANE_TOKEN_PREFIX) && token.len() == 48);
        assert_eq!(view.permissions, [Permission::Snapshot, Permission::Usage]);
        let reader = store
            .create_dataplane_token("ops", 11, "reader", &[Permission::Snapshot])
            .unwrap()
            .token;
        let identity = store.dataplane_identity(&token).unwrap().unwrap();
        assert_eq!(identity.name, "fleet-a");
        assert_eq!(identity.actor(), "dataplane:fleet-a");
        assert!(identity.may(Permission::Usage));
        let reader = store.dataplane_identity(&reader).unwrap().unwrap();
        assert!(reader.may(Permission::Snapshot) && !reader.may(Permission::Usage));
        assert_eq!(store.dataplane_identity("kwdp_nope").unwrap(), None);
        assert_eq!(store.dataplane_identity(&token[..47]).unwrap(), None);

        let again = store.create_dataplane_token("ops", 12, "fleet-a", &[Permission::Usage]);
        assert_eq!(again.unwrap_err().code, "dataplane_token_exists");
        assert!(store
            .create_dataplane_token("ops", 12, "bad name", &[Permission::Usage])
            .is_err());
        assert!(store.create_dataplane_token("ops", 12, "x", &[]).is_err());

        let revoked = store.revoke_dataplane_token("ops", 20, "fleet-a").unwrap();
        assert_eq!(revoked.revoked_at, Some(20));
        assert_eq!(store.dataplane_identity(&token).unwrap(), None);
        let another = reader_token(&mut store);
        assert!(store.dataplane_identity(&another).unwrap().is_some());
        assert_eq!(
            store
                .revoke_dataplane_token("ops", 21, "fleet-a")
                .unwrap_err()
                .code,
            "dataplane_token_revoked"
        );
        let names: Vec<String> = store
            .dataplane_tokens()
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["another", "fleet-a", "reader"]);
        let events = store.audit_events(None).unwrap();
        let revocation = events
            .iter()
            .find(|event| event.action == "dataplane_token.revoke")
            .unwrap();
        assert_eq!(
            (revocation.actor.as_str(), revocation.target.as_str()),
            ("ops", "fleet-a")
        );
        assert!(
            !serde_json::to_string(&events).unwrap().contains(&token),
            "the token is never in the audit trail"
        );
    }

    fn reader_token(store: &mut Store) -> String {
        store
            .create_dataplane_token("ops", 30, "another", &[Permission::Snapshot])
            .unwrap()
            .token
    }

    #[test]
    fn refused_batches_are_kept_and_audited_by_the_data_plane() {
        let mut store = Store::in_memory().unwrap();
        let refused = RefusedBatchView {
            received_at: 100,
            token_name: "fleet-a".into(),
            reporter: "envoy\u{7}-1".into(),
            batch_id: "b1".into(),
            entries: 2,
            cost_microusd: 99_000_000,
            reasons: vec!["entries[0]: key k1 cannot charge project p2".into()],
            body: "x".repeat(MAX_KEPT_REFUSED_BODY + 10),
        };
        store.record_refused_usage(100, &refused).unwrap();
        let kept = store.refused_usage_batches(10).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].reporter, "envoy-1");
        assert_eq!(kept[0].body.len(), MAX_KEPT_REFUSED_BODY);
        assert_eq!(kept[0].reasons, refused.reasons);
        let event = store.audit_events(Some(1)).unwrap().remove(0);
        assert_eq!(
            (event.actor.as_str(), event.action.as_str()),
            ("dataplane:fleet-a", "usage.refused")
        );
    }
}
