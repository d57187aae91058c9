//! Key rotation: a new key with the old one's settings, and the old key's revocation once its
//! grace period ends (recorded as its own change, by `system`).

use serde_json::json;

use super::change::{bump_version, Change};
use super::keys::{insert_key, key_status_str, require_not_revoked, settings_of};
use super::model::{NewKey, Owner, Rotation};
use super::sql::{args, Value};
use super::{Store, SYSTEM_ACTOR};
use crate::error::Error;

/// Keys whose rotation deadline has passed but that are not revoked yet.
const DUE_KEYS: &str = "SELECT id FROM keys WHERE revoke_at IS NOT NULL AND revoke_at <= ?1 \
                        AND status <> 'revoked' ORDER BY id";

impl Store {
    /// Creates a key with the settings of `id`; `id` stays usable until `now + grace_seconds`,
    /// then is revoked (at once when the grace is 0).
    pub fn rotate_key(
        &mut self,
        actor: &str,
        now: u64,
        id: &str,
        grace_seconds: u64,
    ) -> Result<Rotation, Error> {
        self.change(actor, now, |change| {
            let old = change.key(id)?;
            require_not_revoked(&old)?;
            if old.view.revoke_at.is_some() {
                return Err(Error::conflict(
                    "key_rotating",
                    "The key was already rotated and is in its grace period.",
                ));
            }
            let owner = match (&old.view.project, &old.view.org) {
                (Some(project), _) => Owner::Project(project.clone()),
                (None, Some(org)) => Owner::Org(org.clone()),
                (None, None) => return Err(Error::internal("a stored key has no owner")),
            };
            let new = NewKey {
                owner,
                format: old.view.format,
                settings: settings_of(&old.view),
            };
            let created = insert_key(change, &new, old.view.status, Some(id))?;
            let deadline = now.saturating_add(grace_seconds);
            let statement = if grace_seconds == 0 {
                "UPDATE keys SET status = 'revoked', revoke_at = ?2, revoked_at = ?2 WHERE id = ?1"
            } else {
                "UPDATE keys SET revoke_at = ?2 WHERE id = ?1"
            };
            change
                .sql
                .execute(statement, args![id, Value::uint(deadline)?])?;
            change.audit(
                "key.rotate",
                id,
                json!({"new_key_id": created.key.id, "grace_seconds": grace_seconds,
                       "revoke_at": deadline}),
            )?;
            Ok(Rotation {
                old: change.key(id)?.view,
                new: created,
            })
        })
    }

    /// Revokes the keys whose rotation grace deadline has passed, as one audited change by
    /// `system`. Does nothing (and keeps the version) when none is due.
    pub fn revoke_rotated_keys(&mut self, now: u64) -> Result<Vec<String>, Error> {
        let now_value = Value::uint(now)?;
        // A cheap read first: this runs every second and before every snapshot.
        let any_due = self.read(|sql| {
            sql.query_one(
                &format!("SELECT EXISTS ({DUE_KEYS})"),
                std::slice::from_ref(&now_value),
            )?
            .columns()
            .flag()
        })?;
        if !any_due {
            return Ok(vec![]);
        }
        self.write(|sql| {
            // Again under the write lock: another process may have revoked them meanwhile.
            let due = sql.query_map(DUE_KEYS, std::slice::from_ref(&now_value), |row| {
                row.columns().text()
            })?;
            if due.is_empty() {
                return Ok(due);
            }
            let version = bump_version(sql)?;
            let mut change = Change {
                sql,
                actor: SYSTEM_ACTOR,
                now,
                version,
            };
            for id in &due {
                let row = change.key(id)?;
                let rotated_to = change
                    .sql
                    .query_opt("SELECT id FROM keys WHERE rotated_from = ?1", args![id])?
                    .map(|row| row.columns().text())
                    .transpose()?;
                change.sql.execute(
                    "UPDATE keys SET status = 'revoked', revoked_at = revoke_at WHERE id = ?1",
                    args![id],
                )?;
                change.audit(
                    "key.revoke",
                    id,
                    json!({"from": key_status_str(row.view.status), "to": "revoked",
                           "reason": "rotation_grace_ended", "rotated_to": rotated_to}),
                )?;
            }
            Ok(due)
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::keygen::Format;
    use crate::store::test_support::*;
    use crate::store::{Owner, Store};
    use keyward_engine::snapshot::KeyStatus;

    #[test]
    fn rotation_keeps_the_old_key_until_the_deadline() {
        let mut store = store_with_project();
        let old = store
            .create_key(
                "a",
                10,
                &new_key(Owner::Project("proj_a".into()), Format::Ak),
            )
            .unwrap()
            .key;
        let rotation = store.rotate_key("a", 20, &old.id, 100).unwrap();
        assert_eq!(
            rotation.new.key.rotated_from.as_deref(),
            Some(old.id.as_str())
        );
        assert_eq!(rotation.new.key.scopes, old.scopes);
        assert_eq!(rotation.old.revoke_at, Some(120));
        let again = store.rotate_key("a", 21, &old.id, 100).unwrap_err();
        assert_eq!(again.code, "key_rotating");

        let status_at = |store: &mut Store, now: u64| {
            let snapshot = store.snapshot(now).unwrap();
            snapshot
                .keys
                .iter()
                .find(|key| key.id == old.id)
                .unwrap()
                .status
        };
        assert_eq!(status_at(&mut store, 119), KeyStatus::Active);
        assert_eq!(status_at(&mut store, 120), KeyStatus::Revoked);

        assert!(store.revoke_rotated_keys(119).unwrap().is_empty());
        let version = store.policy_version().unwrap();
        assert_eq!(
            store.revoke_rotated_keys(120).unwrap(),
            vec![old.id.clone()]
        );
        assert_eq!(store.policy_version().unwrap(), version + 1);
        assert_eq!(store.key(&old.id).unwrap().status, KeyStatus::Revoked);
        let last = store.audit_events(Some(1)).unwrap().remove(0);
        assert_eq!(
            (last.actor.as_str(), last.action.as_str()),
            ("system", "key.revoke")
        );
        assert!(store.revoke_rotated_keys(121).unwrap().is_empty());
    }
}
