//! Projects: an organization's unit of keys and spend.

use keyward_engine::snapshot::ProjectStatus;
use serde_json::json;

use super::change::{apply_spend_caps, Change, Details};
use super::model::{ProjectUpdate, ProjectView};
use super::sql::{args, Row, Sql, Value};
use super::validate::{nothing_to_change, validate_with_engine};
use super::Store;
use crate::error::Error;

pub(super) const PROJECT_COLUMNS: &str = "id, org, status, spend_cap_microusd, spent_microusd, \
    created_at, archived_at, spend_soft_cap_microusd";

pub(super) fn project_status_str(status: ProjectStatus) -> &'static str {
    match status {
        ProjectStatus::Active => "active",
        ProjectStatus::Archived => "archived",
        ProjectStatus::Suspended => "suspended",
    }
}

fn parse_project_status(text: &str) -> Result<ProjectStatus, Error> {
    match text {
        "active" => Ok(ProjectStatus::Active),
        "archived" => Ok(ProjectStatus::Archived),
        "suspended" => Ok(ProjectStatus::Suspended),
        other => Err(Error::internal(format!(
            "unknown project status {other:?} in the store"
        ))),
    }
}

/// A row of `SELECT {PROJECT_COLUMNS}`.
pub(super) fn project_of(row: &Row) -> Result<ProjectView, Error> {
    let mut columns = row.columns();
    Ok(ProjectView {
        id: columns.text()?,
        org: columns.text()?,
        status: parse_project_status(&columns.text()?)?,
        spend_cap_microusd: columns.opt_uint()?,
        spent_microusd: columns.uint()?,
        created_at: columns.uint()?,
        archived_at: columns.opt_uint()?,
        spend_soft_cap_microusd: columns.opt_uint()?,
    })
}

pub(super) fn find_project(sql: &mut dyn Sql, id: &str) -> Result<Option<ProjectView>, Error> {
    sql.query_opt(
        &format!("SELECT {PROJECT_COLUMNS} FROM projects WHERE id = ?1"),
        args![id],
    )?
    .as_ref()
    .map(project_of)
    .transpose()
}

/// Orgs exist through their projects: an owner naming an org without any project is a typo.
pub(super) fn require_org(sql: &mut dyn Sql, org: &str) -> Result<(), Error> {
    let projects = sql.query_int(
        "SELECT COUNT(*) FROM projects WHERE org = ?1",
        &[Value::from(org)],
    )?;
    if projects == 0 {
        return Err(Error::invalid(
            "unknown_org",
            format!(
                "--org {org}: no project belongs to this org; create one first \
                 (keyward project create PROJECT --org {org})"
            ),
        ));
    }
    Ok(())
}

pub(super) fn all_projects(sql: &mut dyn Sql) -> Result<Vec<ProjectView>, Error> {
    sql.query_map(
        &format!("SELECT {PROJECT_COLUMNS} FROM projects ORDER BY id"),
        &[],
        project_of,
    )
}

fn project_not_found(id: &str) -> Error {
    Error::not_found("project_not_found", format!("No project {id:?}."))
}

impl Change<'_> {
    pub fn project(&mut self, id: &str) -> Result<ProjectView, Error> {
        find_project(self.sql, id)?.ok_or_else(|| project_not_found(id))
    }
}

impl Store {
    pub fn create_project(
        &mut self,
        actor: &str,
        now: u64,
        id: &str,
        org: &str,
        spend_cap_microusd: Option<u64>,
        spend_soft_cap_microusd: Option<u64>,
    ) -> Result<ProjectView, Error> {
        let view = ProjectView {
            id: id.to_owned(),
            org: org.to_owned(),
            status: ProjectStatus::Active,
            spend_cap_microusd,
            spend_soft_cap_microusd,
            spent_microusd: 0,
            created_at: now,
            archived_at: None,
        };
        validate_with_engine(vec![view.record()], vec![], vec![])?;
        self.change(actor, now, |change| {
            if find_project(change.sql, id)?.is_some() {
                return Err(Error::conflict(
                    "project_exists",
                    format!("A project {id:?} already exists."),
                ));
            }
            change.sql.execute(
                "INSERT INTO projects (id, org, status, spend_cap_microusd, \
                 spend_soft_cap_microusd, created_at) VALUES (?1, ?2, 'active', ?3, ?4, ?5)",
                args![
                    id,
                    org,
                    Value::opt_uint(spend_cap_microusd)?,
                    Value::opt_uint(spend_soft_cap_microusd)?,
                    Value::uint(now)?
                ],
            )?;
            change.audit(
                "project.create",
                id,
                json!({"org": org, "spend_cap_microusd": spend_cap_microusd,
                       "spend_soft_cap_microusd": spend_soft_cap_microusd}),
            )?;
            Ok(view)
        })
    }

    pub fn project(&mut self, id: &str) -> Result<ProjectView, Error> {
        self.read(|sql| find_project(sql, id))?
            .ok_or_else(|| project_not_found(id))
    }

    /// Changes a project's caps (checked with the engine, like everything stored).
    pub fn update_project(
        &mut self,
        actor: &str,
        now: u64,
        id: &str,
        update: &ProjectUpdate,
    ) -> Result<ProjectView, Error> {
        if update.spend_cap_microusd.is_none() && update.spend_soft_cap_microusd.is_none() {
            return Err(nothing_to_change());
        }
        self.change(actor, now, |change| {
            let mut view = change.project(id)?;
            let mut details = Details::new();
            apply_spend_caps(
                &mut details,
                [
                    &mut view.spend_cap_microusd,
                    &mut view.spend_soft_cap_microusd,
                ],
                [update.spend_cap_microusd, update.spend_soft_cap_microusd],
            );
            validate_with_engine(vec![view.record()], vec![], vec![])?;
            change.sql.execute(
                "UPDATE projects SET spend_cap_microusd = ?2, spend_soft_cap_microusd = ?3 \
                 WHERE id = ?1",
                args![
                    id,
                    Value::opt_uint(view.spend_cap_microusd)?,
                    Value::opt_uint(view.spend_soft_cap_microusd)?
                ],
            )?;
            change.audit("project.update", id, serde_json::Value::Object(details))?;
            change.project(id)
        })
    }

    pub fn archive_project(
        &mut self,
        actor: &str,
        now: u64,
        id: &str,
    ) -> Result<ProjectView, Error> {
        self.change(actor, now, |change| {
            let project = change.project(id)?;
            if project.status == ProjectStatus::Archived {
                return Err(Error::conflict(
                    "project_archived",
                    format!("The project {id:?} is already archived."),
                ));
            }
            change.sql.execute(
                "UPDATE projects SET status = 'archived', archived_at = ?2 WHERE id = ?1",
                args![id, Value::uint(now)?],
            )?;
            change.audit("project.archive", id, json!({}))?;
            change.project(id)
        })
    }

    pub fn projects(&mut self) -> Result<Vec<ProjectView>, Error> {
        self.read(all_projects)
    }
}

#[cfg(test)]
mod tests {
    use crate::keygen::Format;
    use crate::store::test_support::*;
    use crate::store::Owner;
    use keyward_engine::snapshot::{Policy, ProjectStatus};

    #[test]
    fn archived_projects_get_no_new_keys_and_snapshots_compile() {
        let mut store = store_with_project();
        store
            .create_key("a", 1, &new_key(Owner::Org("org_1".into()), Format::Vpx))
            .unwrap();
        store.archive_project("a", 2, "proj_a").unwrap();
        let error = store
            .create_key(
                "a",
                3,
                &new_key(Owner::Project("proj_a".into()), Format::Ak),
            )
            .unwrap_err();
        assert_eq!(error.code, "project_archived");
        let snapshot = store.snapshot(10).unwrap();
        let policy = Policy::compile(snapshot).unwrap();
        assert_eq!(policy.version, store.policy_version().unwrap());
        assert_eq!(
            policy.project("proj_a").unwrap().status,
            ProjectStatus::Archived
        );
        assert_eq!(policy.keys().len(), 1);
    }
}
