//! Which request the audit decides for a key on a route, and the routes it goes through. The
//! decision itself is the engine's, run by `crate::synthetic`.

use keyward_engine::config::Settings;
use keyward_engine::route::{ModelSource, Route};
use keyward_engine::snapshot::{KeyRecord, ProjectStatus, Snapshot};

use super::FALLBACK_ROUTE;
use crate::synthetic::RequestShape;

/// The request the audit decides for a key on a route: its own project (an org key names the
/// first active project of its org when the route requires one), and a model of its allow-list
/// when the route reads the model (from a header or the body).
pub(super) fn representative_shape(
    snapshot: &Snapshot,
    route: &Route,
    record: &KeyRecord,
) -> RequestShape {
    let project = match (&record.org, route.require_project) {
        (Some(org), true) => snapshot
            .projects
            .iter()
            .find(|project| &project.org == org && project.status == ProjectStatus::Active)
            .map(|project| project.id.clone()),
        _ => None,
    };
    let reads_model = matches!(
        route.model,
        Some(ModelSource::Header(_) | ModelSource::Body)
    );
    let model = match (reads_model, &record.models) {
        (true, Some(models)) => models.first().map(|model| match model.strip_suffix('*') {
            Some(prefix) => format!("{prefix}x"),
            None => model.clone(),
        }),
        _ => None,
    };
    RequestShape {
        project,
        model,
        ..RequestShape::default()
    }
}

/// Every configured route, then the fallback, with the name the report shows.
pub fn routes(settings: &Settings) -> Vec<(&Route, String)> {
    settings
        .routes
        .iter()
        .map(|route| (route, route.name.clone()))
        .chain(std::iter::once((
            &settings.fallback_route,
            FALLBACK_ROUTE.to_owned(),
        )))
        .collect()
}
