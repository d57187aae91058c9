//! What the `project`, `key`, `price`, `spend`, `usage` and `audit` commands do (the budget and
//! `provider-key` commands: in their own modules), against one of two targets: the store itself
//! (`--db`, local mode) or a running control plane's admin API (`--server URL --token-file F`,
//! remote mode, so operators never need the database). Both give the same views; the commands
//! print them the same way.

use std::path::Path;

use keyward_engine::snapshot::PriceRecord;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::api::{
    CreateKeyBody, CreateProjectBody, CreatedKeyBody, List, PriceBody, RateLimitsPatch,
    RotateKeyBody, UpdateKeyBody, UpdateProjectBody,
};
use crate::client::ControlPlane;
use crate::error::Error;
use crate::store::{
    AuditEvent, CreatedDataplaneToken, DataplaneTokenView, KeyUpdate, KeyView, NewKey, Owner,
    Permission, PriceView, ProjectUpdate, ProjectView, RefusedBatchView, StatusChange, Store,
    UsageBatchView,
};
use crate::units::{now, parse_duration_seconds};

/// The operations of the admin commands. Changes are recorded as the target's actor: `--actor`
/// locally, the admin token's name remotely.
pub trait Admin: super::budget_admin::BudgetAdmin + super::provider_key::ProviderKeyAdmin {
    fn create_project(
        &mut self,
        id: &str,
        org: &str,
        caps: (Option<u64>, Option<u64>),
    ) -> Result<ProjectView, Error>;
    fn update_project(&mut self, id: &str, update: &ProjectUpdate) -> Result<ProjectView, Error>;
    fn archive_project(&mut self, id: &str) -> Result<ProjectView, Error>;
    fn project(&mut self, id: &str) -> Result<ProjectView, Error>;
    fn projects(&mut self) -> Result<Vec<ProjectView>, Error>;
    /// The new key's plaintext is in the answer's `key`, this once.
    fn create_key(&mut self, new: &NewKey) -> Result<CreatedKeyBody, Error>;
    fn keys(&mut self, project: Option<&str>) -> Result<Vec<KeyView>, Error>;
    fn key(&mut self, id: &str) -> Result<KeyView, Error>;
    fn change_status(&mut self, id: &str, change: StatusChange) -> Result<KeyView, Error>;
    fn update_key(&mut self, id: &str, update: &KeyUpdate) -> Result<KeyView, Error>;
    /// The new key (plaintext this once), the old one in `previous`.
    fn rotate_key(&mut self, id: &str, grace: &str) -> Result<CreatedKeyBody, Error>;
    fn prices(&mut self) -> Result<Vec<PriceView>, Error>;
    fn set_price(&mut self, price: &PriceRecord) -> Result<PriceView, Error>;
    fn remove_price(&mut self, model: &str) -> Result<PriceView, Error>;
    fn usage_batches(&mut self, limit: u64) -> Result<Vec<UsageBatchView>, Error>;
    fn audit_events(&mut self, limit: Option<u64>) -> Result<Vec<AuditEvent>, Error>;
    /// The usage batches refused, newest first.
    fn refused_usage_batches(&mut self, limit: u64) -> Result<Vec<RefusedBatchView>, Error>;
    /// The new token is in the answer, this once.
    fn create_dataplane_token(
        &mut self,
        name: &str,
        permissions: &[Permission],
    ) -> Result<CreatedDataplaneToken, Error>;
    fn dataplane_tokens(&mut self) -> Result<Vec<DataplaneTokenView>, Error>;
    fn revoke_dataplane_token(&mut self, name: &str) -> Result<DataplaneTokenView, Error>;
}

/// Local mode: the store, changes recorded as `actor`.
pub struct Local {
    pub store: Store,
    pub actor: String,
}

const SHOWN_ONCE: &str =
    "Store this key now: keyward keeps only its SHA-256 hash and will not show it again.";

impl Admin for Local {
    fn create_project(
        &mut self,
        id: &str,
        org: &str,
        (cap, soft): (Option<u64>, Option<u64>),
    ) -> Result<ProjectView, Error> {
        self.store
            .create_project(&self.actor, now(), id, org, cap, soft)
    }

    fn update_project(&mut self, id: &str, update: &ProjectUpdate) -> Result<ProjectView, Error> {
        self.store.update_project(&self.actor, now(), id, update)
    }

    fn archive_project(&mut self, id: &str) -> Result<ProjectView, Error> {
        self.store.archive_project(&self.actor, now(), id)
    }

    fn project(&mut self, id: &str) -> Result<ProjectView, Error> {
        self.store.project(id)
    }

    fn projects(&mut self) -> Result<Vec<ProjectView>, Error> {
        self.store.projects()
    }

    fn create_key(&mut self, new: &NewKey) -> Result<CreatedKeyBody, Error> {
        let created = self.store.create_key(&self.actor, now(), new)?;
        Ok(CreatedKeyBody {
            key: created.plaintext.expose().to_owned(),
            warning: SHOWN_ONCE.to_owned(),
            view: created.key,
            previous: None,
        })
    }

    fn keys(&mut self, project: Option<&str>) -> Result<Vec<KeyView>, Error> {
        self.store.keys(project)
    }

    fn key(&mut self, id: &str) -> Result<KeyView, Error> {
        self.store.key(id)
    }

    fn change_status(&mut self, id: &str, change: StatusChange) -> Result<KeyView, Error> {
        self.store.change_status(&self.actor, now(), id, change)
    }

    fn update_key(&mut self, id: &str, update: &KeyUpdate) -> Result<KeyView, Error> {
        self.store.update_key(&self.actor, now(), id, update)
    }

    fn rotate_key(&mut self, id: &str, grace: &str) -> Result<CreatedKeyBody, Error> {
        let grace = parse_duration_seconds(grace)?;
        let rotation = self.store.rotate_key(&self.actor, now(), id, grace)?;
        Ok(CreatedKeyBody {
            key: rotation.new.plaintext.expose().to_owned(),
            warning: SHOWN_ONCE.to_owned(),
            view: rotation.new.key,
            previous: Some(rotation.old),
        })
    }

    fn prices(&mut self) -> Result<Vec<PriceView>, Error> {
        self.store.prices()
    }

    fn set_price(&mut self, price: &PriceRecord) -> Result<PriceView, Error> {
        self.store.set_price(&self.actor, now(), price)
    }

    fn remove_price(&mut self, model: &str) -> Result<PriceView, Error> {
        self.store.remove_price(&self.actor, now(), model)
    }

    fn usage_batches(&mut self, limit: u64) -> Result<Vec<UsageBatchView>, Error> {
        self.store.usage_batches(limit)
    }

    fn audit_events(&mut self, limit: Option<u64>) -> Result<Vec<AuditEvent>, Error> {
        self.store.audit_events(limit)
    }

    fn refused_usage_batches(&mut self, limit: u64) -> Result<Vec<RefusedBatchView>, Error> {
        self.store.refused_usage_batches(limit)
    }

    fn create_dataplane_token(
        &mut self,
        name: &str,
        permissions: &[Permission],
    ) -> Result<CreatedDataplaneToken, Error> {
        self.store
            .create_dataplane_token(&self.actor, now(), name, permissions)
    }

    fn dataplane_tokens(&mut self) -> Result<Vec<DataplaneTokenView>, Error> {
        self.store.dataplane_tokens()
    }

    fn revoke_dataplane_token(&mut self, name: &str) -> Result<DataplaneTokenView, Error> {
        self.store.revoke_dataplane_token(&self.actor, now(), name)
    }
}

/// Remote mode: a running control plane's admin API, with an admin token.
pub struct Remote {
    plane: ControlPlane,
    token: String,
}

/// Path segments: everything but letters and digits is escaped (a model prefix `gpt-4o*`, an
/// id with a `/`), so an id never changes which endpoint is called.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_');

pub(super) fn segment(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// No body.
const NONE: Option<&()> = None;

impl Remote {
    /// Connects to `server` with the admin token in `token_file` (`NAME:TOKEN` or `TOKEN`, the
    /// first token line; the file should be mode 0600).
    pub fn new(server: &str, token_file: &Path, ca_file: Option<&Path>) -> Result<Remote, Error> {
        let token = crate::secrets::read_token_file(token_file, "admin token")?;
        Ok(Remote {
            plane: ControlPlane::with_ca(server, ca_file)?,
            token,
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.plane.call("GET", path, &self.token, NONE)
    }

    fn post<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.plane.call("POST", path, &self.token, NONE)
    }

    /// Any call with an optional JSON body.
    pub(super) fn send<T: serde::de::DeserializeOwned, B: serde::Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, Error> {
        self.plane.call(method, path, &self.token, body)
    }
}

/// A key update as the PATCH body: the two rate limits travel in one object.
fn update_body(update: &KeyUpdate) -> UpdateKeyBody {
    let rate_limits = (update.requests_per_minute.is_some() || update.tokens_per_minute.is_some())
        .then_some(Some(RateLimitsPatch {
            requests_per_minute: update.requests_per_minute,
            tokens_per_minute: update.tokens_per_minute,
        }));
    UpdateKeyBody {
        scopes: update.scopes.clone(),
        models: update.models.clone(),
        expires_at: update.expires_at,
        expires_in: None,
        spend_cap_microusd: update.spend_cap_microusd,
        spend_soft_cap_microusd: update.spend_soft_cap_microusd,
        rate_limits,
        label: update.label.clone(),
        note: update.note.clone(),
    }
}

fn create_body(new: &NewKey) -> CreateKeyBody {
    let (project, org) = match &new.owner {
        Owner::Project(project) => (Some(project.clone()), None),
        Owner::Org(org) => (None, Some(org.clone())),
    };
    let settings = &new.settings;
    CreateKeyBody {
        project,
        org,
        format: new.format,
        environment: settings.environment,
        scopes: settings.scopes.clone(),
        models: settings.models.clone(),
        expires_at: settings.expires_at,
        expires_in: None,
        spend_cap_microusd: settings.spend_cap_microusd,
        spend_soft_cap_microusd: settings.spend_soft_cap_microusd,
        rate_limits: settings.rate_limits,
        label: settings.label.clone(),
        note: settings.note.clone(),
    }
}

impl Admin for Remote {
    fn create_project(
        &mut self,
        id: &str,
        org: &str,
        (cap, soft): (Option<u64>, Option<u64>),
    ) -> Result<ProjectView, Error> {
        let body = CreateProjectBody {
            id: id.to_owned(),
            org: org.to_owned(),
            spend_cap_microusd: cap,
            spend_soft_cap_microusd: soft,
        };
        self.plane
            .call("POST", "/v1/projects", &self.token, Some(&body))
    }

    fn update_project(&mut self, id: &str, update: &ProjectUpdate) -> Result<ProjectView, Error> {
        let body = UpdateProjectBody {
            spend_cap_microusd: update.spend_cap_microusd,
            spend_soft_cap_microusd: update.spend_soft_cap_microusd,
        };
        let path = format!("/v1/projects/{}", segment(id));
        self.plane.call("PATCH", &path, &self.token, Some(&body))
    }

    fn archive_project(&mut self, id: &str) -> Result<ProjectView, Error> {
        self.post(&format!("/v1/projects/{}/archive", segment(id)))
    }

    fn project(&mut self, id: &str) -> Result<ProjectView, Error> {
        self.get(&format!("/v1/projects/{}", segment(id)))
    }

    fn projects(&mut self) -> Result<Vec<ProjectView>, Error> {
        self.get::<List<ProjectView>>("/v1/projects")
            .map(|list| list.data)
    }

    fn create_key(&mut self, new: &NewKey) -> Result<CreatedKeyBody, Error> {
        self.plane
            .call("POST", "/v1/keys", &self.token, Some(&create_body(new)))
    }

    fn keys(&mut self, project: Option<&str>) -> Result<Vec<KeyView>, Error> {
        let path = match project {
            Some(project) => format!("/v1/keys?project={}", segment(project)),
            None => "/v1/keys".to_owned(),
        };
        self.get::<List<KeyView>>(&path).map(|list| list.data)
    }

    fn key(&mut self, id: &str) -> Result<KeyView, Error> {
        self.get(&format!("/v1/keys/{}", segment(id)))
    }

    fn change_status(&mut self, id: &str, change: StatusChange) -> Result<KeyView, Error> {
        let verb = match change {
            StatusChange::Revoke => "revoke",
            StatusChange::Pause => "pause",
            StatusChange::Resume => "resume",
        };
        self.post(&format!("/v1/keys/{}/{verb}", segment(id)))
    }

    fn update_key(&mut self, id: &str, update: &KeyUpdate) -> Result<KeyView, Error> {
        let path = format!("/v1/keys/{}", segment(id));
        self.plane
            .call("PATCH", &path, &self.token, Some(&update_body(update)))
    }

    fn rotate_key(&mut self, id: &str, grace: &str) -> Result<CreatedKeyBody, Error> {
        let body = RotateKeyBody {
            grace: Some(grace.to_owned()),
        };
        let path = format!("/v1/keys/{}/rotate", segment(id));
        self.plane.call("POST", &path, &self.token, Some(&body))
    }

    fn prices(&mut self) -> Result<Vec<PriceView>, Error> {
        self.get::<List<PriceView>>("/v1/prices")
            .map(|list| list.data)
    }

    fn set_price(&mut self, price: &PriceRecord) -> Result<PriceView, Error> {
        let body = PriceBody {
            input_microusd_per_mtok: Some(price.input_microusd_per_mtok),
            output_microusd_per_mtok: Some(price.output_microusd_per_mtok),
            cached_input_microusd_per_mtok: price.cached_input_microusd_per_mtok,
            cache_write_microusd_per_mtok: price.cache_write_microusd_per_mtok,
            ..PriceBody::default()
        };
        let path = format!("/v1/prices/{}", segment(&price.model));
        self.plane.call("PUT", &path, &self.token, Some(&body))
    }

    fn remove_price(&mut self, model: &str) -> Result<PriceView, Error> {
        let path = format!("/v1/prices/{}", segment(model));
        self.plane.call("DELETE", &path, &self.token, NONE)
    }

    fn usage_batches(&mut self, limit: u64) -> Result<Vec<UsageBatchView>, Error> {
        self.get::<List<UsageBatchView>>(&format!("/v1/usage/batches?limit={limit}"))
            .map(|list| list.data)
    }

    fn audit_events(&mut self, limit: Option<u64>) -> Result<Vec<AuditEvent>, Error> {
        let path = match limit {
            Some(limit) => format!("/v1/audit?limit={limit}"),
            None => "/v1/audit".to_owned(),
        };
        self.get::<List<AuditEvent>>(&path).map(|list| list.data)
    }

    fn refused_usage_batches(&mut self, limit: u64) -> Result<Vec<RefusedBatchView>, Error> {
        self.get::<List<RefusedBatchView>>(&format!("/v1/usage/refused?limit={limit}"))
            .map(|list| list.data)
    }

    fn create_dataplane_token(
        &mut self,
        name: &str,
        permissions: &[Permission],
    ) -> Result<CreatedDataplaneToken, Error> {
        let body = serde_json::json!({"name": name, "permissions": permissions});
        self.plane
            .call("POST", "/v1/dataplane-tokens", &self.token, Some(&body))
    }

    fn dataplane_tokens(&mut self) -> Result<Vec<DataplaneTokenView>, Error> {
        self.get::<List<DataplaneTokenView>>("/v1/dataplane-tokens")
            .map(|list| list.data)
    }

    fn revoke_dataplane_token(&mut self, name: &str) -> Result<DataplaneTokenView, Error> {
        self.post(&format!("/v1/dataplane-tokens/{}/revoke", segment(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_change_the_endpoint() {
        assert_eq!(segment("gpt-4o*"), "gpt-4o%2A");
        assert_eq!(segment("../keys"), "%2E%2E%2Fkeys");
        assert_eq!(segment("a?b#c"), "a%3Fb%23c");
    }

    #[test]
    fn rate_limit_updates_travel_as_one_patch() {
        let update = KeyUpdate {
            tokens_per_minute: Some(None),
            ..KeyUpdate::default()
        };
        let body = serde_json::to_value(update_body(&update)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"rate_limits": {"tokens_per_minute": null}})
        );
        let body = serde_json::to_value(update_body(&KeyUpdate {
            expires_at: Some(None),
            ..KeyUpdate::default()
        }))
        .unwrap();
        assert_eq!(body, serde_json::json!({"expires_at": null}));
    }
}
