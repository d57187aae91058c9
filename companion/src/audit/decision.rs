//! The engine's decision for one key on one route: a synthetic credential of a configured format,
//! a one-key snapshot, and a representative request.

use keyward_engine::config::Settings;
use keyward_engine::credential::CredentialSource;
use keyward_engine::decision::{decide, Outcome};
use keyward_engine::hash::sha256;
use keyward_engine::key_format::{crc32_base62, parse_key, Checksum, KeyFormat, ParsedKey};
use keyward_engine::request::{Header, Request};
use keyward_engine::route::{ModelSource, ProjectSource, Route};
use keyward_engine::snapshot::{KeyRecord, Policy, ProjectStatus, Snapshot};
use serde::Serialize;

use super::*;

/// A credential of a configured format for a copy of `record` whose stored hash is the
/// credential's. Tries every configured format; `None` when no format can carry this key.
pub struct Synthetic {
    pub record: KeyRecord,
    pub credential: String,
}

fn fill(length: usize, byte: u8) -> String {
    String::from_utf8(vec![byte; length]).unwrap_or_default()
}

/// `body` followed by the checksum of `covered_prefix + body`, when the format has one.
fn with_checksum(checksum: Checksum, covered_prefix: &str, body: String) -> String {
    match checksum {
        Checksum::None => body,
        Checksum::Crc32Base62 => {
            let covered = format!("{covered_prefix}{body}");
            let digits = crc32_base62(covered.as_bytes());
            format!("{body}{}", String::from_utf8_lossy(&digits))
        }
    }
}

fn body_length(checksum: Checksum, min: usize) -> usize {
    match checksum {
        Checksum::None => min.max(1),
        Checksum::Crc32Base62 => min.max(7).saturating_sub(6),
    }
}

pub fn synthesize(formats: &[KeyFormat], record: &KeyRecord) -> Option<Synthetic> {
    for format in formats {
        let candidate = match format {
            KeyFormat::KeyIdSecret {
                prefix,
                separator,
                key_id,
                secret,
                checksum,
                ..
            } => {
                let id = fill(key_id.min_length.max(1), b'a');
                let body = fill(body_length(*checksum, secret.min_length), b'b');
                let secret = with_checksum(*checksum, &format!("{prefix}{id}{separator}"), body);
                format!("{prefix}{id}{separator}{secret}")
            }
            KeyFormat::PrefixedOpaque {
                prefix,
                environments,
                body,
                checksum,
                ..
            } => {
                let head = if environments.is_empty() {
                    prefix.clone()
                } else if environments.contains(&record.environment) {
                    format!("{prefix}{}_", record.environment)
                } else {
                    continue;
                };
                let body = fill(body_length(*checksum, body.min_length), b'b');
                format!("{head}{}", with_checksum(*checksum, &head, body))
            }
        };
        let mut copy = record.clone();
        match parse_key(formats, candidate.as_bytes()) {
            Ok(ParsedKey::KeyIdSecret { key_id, secret }) => {
                copy.id = key_id.to_owned();
                copy.secret_sha256 = Some(hex::encode(sha256(secret)));
                copy.key_sha256 = None;
            }
            Ok(ParsedKey::Opaque { whole_key, .. }) => {
                copy.secret_sha256 = None;
                copy.key_sha256 = Some(hex::encode(sha256(whole_key)));
            }
            Err(_) => continue,
        }
        return Some(Synthetic {
            record: copy,
            credential: candidate,
        });
    }
    None
}

/// What a representative request names besides the key.
#[derive(Default, Debug, Clone)]
pub struct RequestShape {
    pub project: Option<String>,
    pub model: Option<String>,
    pub origin: bool,
}

/// The engine's decision for one key on one route.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouteDecision {
    pub route: String,
    /// `allow`, `deny`, `exempt`, `fail_open`, or `unknown` (no configured key format can
    /// carry this key).
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

fn credential_header(settings: &Settings, route: &Route, credential: &str) -> Option<Header> {
    let source = settings.credential_sources.first();
    match source {
        Some(CredentialSource::AuthorizationBearer) => Some((
            "authorization".to_owned(),
            format!("Bearer {credential}").into_bytes(),
        )),
        Some(CredentialSource::ApiKeyHeader) => {
            Some(("x-api-key".to_owned(), credential.as_bytes().to_vec()))
        }
        None => route.query_parameter.as_ref().map(|name| {
            (
                ":path".to_owned(),
                format!("/?{name}={credential}").into_bytes(),
            )
        }),
    }
}

/// Decides one request for `record` on `route` with the engine. `snapshot` gives the projects
/// (and the snapshot's times); the key is the only one of the one-key copy.
pub fn engine_decision(
    loaded: &Loaded,
    route: &Route,
    route_label: &str,
    record: &KeyRecord,
    shape: &RequestShape,
) -> RouteDecision {
    let settings = &loaded.config.settings;
    let unknown = RouteDecision {
        route: route_label.to_owned(),
        decision: "unknown",
        code: None,
        status: None,
    };
    let Some(synthetic) = synthesize(&settings.key_formats, record) else {
        return unknown;
    };
    let copy = Snapshot {
        version: loaded.snapshot.version,
        issued_at: loaded.snapshot.issued_at,
        expires_at: loaded.snapshot.expires_at,
        projects: loaded.snapshot.projects.clone(),
        keys: vec![synthetic.record],
        prices: loaded.snapshot.prices.clone(),
    };
    let Ok(policy) = Policy::compile(copy) else {
        return unknown;
    };
    let mut headers: Vec<Header> = vec![
        (":method".to_owned(), b"POST".to_vec()),
        (":authority".to_owned(), b"audit.invalid".to_vec()),
    ];
    let mut path = "/".to_owned();
    match credential_header(settings, route, &synthetic.credential) {
        Some((name, value)) if name == ":path" => {
            path = String::from_utf8_lossy(&value).into_owned();
        }
        Some(header) => headers.push(header),
        None => {}
    }
    if let Some(project) = &shape.project {
        match &route.project {
            Some(ProjectSource::Header(name)) => {
                headers.push((name.clone(), project.clone().into_bytes()));
            }
            Some(ProjectSource::PathPattern(pattern)) => {
                let named = pattern.replace("{project}", project);
                path = match path.split_once('?') {
                    Some((_, query)) => format!("{named}?{query}"),
                    None => named,
                };
            }
            None => {}
        }
    }
    if let (Some(model), Some(ModelSource::Header(name))) = (&shape.model, &route.model) {
        headers.push((name.clone(), model.clone().into_bytes()));
    }
    if shape.origin {
        headers.push(("origin".to_owned(), b"https://browser.invalid".to_vec()));
    }
    headers.push((":path".to_owned(), path.into_bytes()));
    let request = Request::new(&headers, None);
    let outcome = decide(settings, route, &request, Some(&policy), loaded.now);
    let (decision, code, status) = match &outcome {
        Outcome::Exempt => ("exempt", None, None),
        Outcome::FailOpen => ("fail_open", None, None),
        Outcome::Allow(_) => ("allow", None, None),
        Outcome::Deny(rejection) => (
            "deny",
            Some(rejection.denial.code.as_str()),
            Some(rejection.denial.code.status(settings.spend_cap_status)),
        ),
    };
    RouteDecision {
        route: route_label.to_owned(),
        decision,
        code,
        status,
    }
}

/// The request the audit decides for a key on a route: its own project (an org key names the
/// first active project of its org when the route requires one), and a model of its allow-list
/// when the route reads the model from a header.
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
    let model = match (&route.model, &record.models) {
        (Some(ModelSource::Header(_)), Some(models)) => {
            models.first().map(|model| match model.strip_suffix('*') {
                Some(prefix) => format!("{prefix}x"),
                None => model.clone(),
            })
        }
        _ => None,
    };
    RequestShape {
        project,
        model,
        origin: false,
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
