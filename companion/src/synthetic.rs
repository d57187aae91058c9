//! A representative request for one key on one route, decided by the engine's own request core
//! (`keyward_engine::explain`): what `keyward audit` tabulates and `keyward explain` prints.
//!
//! The key's secret is unknown here, so the request carries a synthetic credential of a
//! configured key format, and the decision runs on a one-key copy of the snapshot whose hash
//! is that credential's. Everything else (projects, prices, times, the configuration) is the
//! real one, and the route is the one the engine's matcher picks for the request.

use keyward_engine::config::Settings;
use keyward_engine::credential::CredentialSource;
use keyward_engine::denial::DenyCode;
use keyward_engine::explain::{explain, Explanation, Verdict};
use keyward_engine::hash::sha256;
use keyward_engine::key_format::{crc32_base62, parse_key, Checksum, KeyFormat, ParsedKey};
use keyward_engine::request::Header;
use keyward_engine::route::{ModelSource, ProjectSource, Route};
use keyward_engine::snapshot::{KeyRecord, Policy, Snapshot};
use serde::Serialize;

use crate::audit::Loaded;

/// Where an unmatched request goes: a path no route names.
const UNMATCHED_PATH: &str = "/keyward-audit/unmatched";

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

/// A credential of a configured format for `record`, and the record with that credential's
/// hash. The key keeps its own id where the format can carry it.
pub fn synthesize(formats: &[KeyFormat], record: &KeyRecord) -> Option<Synthetic> {
    for format in formats {
        let candidates: Vec<String> = match format {
            KeyFormat::KeyIdSecret {
                prefix,
                separator,
                key_id,
                secret,
                checksum,
                ..
            } => [record.id.clone(), fill(key_id.min_length.max(1), b'a')]
                .into_iter()
                .map(|id| {
                    let body = fill(body_length(*checksum, secret.min_length), b'b');
                    let secret =
                        with_checksum(*checksum, &format!("{prefix}{id}{separator}"), body);
                    format!("{prefix}{id}{separator}{secret}")
                })
                .collect(),
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
                vec![format!("{head}{}", with_checksum(*checksum, &head, body))]
            }
        };
        for candidate in candidates {
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
    }
    None
}

/// What a representative request names besides the key.
#[derive(Default, Debug, Clone)]
pub struct RequestShape {
    pub project: Option<String>,
    pub model: Option<String>,
    pub origin: bool,
    /// The whole JSON body, for routes that read it (default: `{"model": …}`).
    pub body: Option<Vec<u8>>,
}

/// The engine's decision for one key on one route.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RouteDecision {
    pub route: String,
    /// `allow`, `deny`, `exempt`, `fail_open`, `unknown` (no configured key format can carry
    /// this key) or `unreachable` (an earlier route takes every request this one would match).
    pub decision: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// The request, as Envoy would hand it to the filter.
pub struct SyntheticRequest {
    pub headers: Vec<Header>,
    pub route_name: Option<String>,
    pub body: Option<Vec<u8>>,
    pub policy: Policy,
}

fn credential(settings: &Settings, route: &Route, credential: &str) -> (Option<Header>, String) {
    match settings.credential_sources.first() {
        Some(CredentialSource::AuthorizationBearer) => (
            Some((
                "authorization".to_owned(),
                format!("Bearer {credential}").into_bytes(),
            )),
            String::new(),
        ),
        Some(CredentialSource::ApiKeyHeader) => (
            Some(("x-api-key".to_owned(), credential.as_bytes().to_vec())),
            String::new(),
        ),
        None => (
            None,
            route
                .query_parameter
                .as_ref()
                .map(|name| format!("?{name}={credential}"))
                .unwrap_or_default(),
        ),
    }
}

/// The fallback route stands for requests no route matches.
fn configured<'r>(settings: &Settings, route: &'r Route) -> Option<&'r Route> {
    (!std::ptr::eq(route, &settings.fallback_route)).then_some(route)
}

/// Builds the request for `record` on `route` (the fallback: a path no route names). `None`
/// when no configured key format can carry the key.
pub fn build(
    loaded: &Loaded,
    route: &Route,
    record: &KeyRecord,
    shape: &RequestShape,
) -> Option<SyntheticRequest> {
    let settings = &loaded.config.settings;
    let synthetic = synthesize(&settings.key_formats, record)?;
    let copy = Snapshot {
        version: loaded.snapshot.version,
        issued_at: loaded.snapshot.issued_at,
        expires_at: loaded.snapshot.expires_at,
        projects: loaded.snapshot.projects.clone(),
        keys: vec![synthetic.record],
        prices: loaded.snapshot.prices.clone(),
        price_catalog: None,
        plans: loaded.snapshot.plans.clone(),
        provider_keys: None,
    };
    let policy = Policy::compile(copy).ok()?;
    let target = route;
    let route = configured(settings, route);
    let (credential_header, query) = credential(settings, target, &synthetic.credential);
    let mut path = match route {
        None => UNMATCHED_PATH.to_owned(),
        Some(route) => route.path_prefix().unwrap_or("/").to_owned(),
    };
    let mut headers: Vec<Header> = Vec::new();
    if let Some(project) = &shape.project {
        match &target.project {
            Some(ProjectSource::Header(name)) => {
                headers.push((name.clone(), project.clone().into_bytes()));
            }
            Some(ProjectSource::PathPattern(pattern)) => {
                path = pattern.replace("{project}", project);
            }
            None => {}
        }
    }
    if let (Some(model), Some(ModelSource::Header(name))) = (&shape.model, &target.model) {
        headers.push((name.clone(), model.clone().into_bytes()));
    }
    if shape.origin {
        headers.push(("origin".to_owned(), b"https://browser.invalid".to_vec()));
    }
    headers.extend(credential_header);
    let method = target
        .methods()
        .first()
        .cloned()
        .unwrap_or_else(|| "POST".to_owned());
    let host = target.host().unwrap_or("audit.invalid").to_owned();
    let body = target.reads_body().then(|| {
        shape.body.clone().unwrap_or_else(|| match &shape.model {
            Some(model) => serde_json::json!({ "model": model })
                .to_string()
                .into_bytes(),
            None => b"{}".to_vec(),
        })
    });
    if let Some(body) = &body {
        headers.push((
            "content-length".to_owned(),
            body.len().to_string().into_bytes(),
        ));
    }
    headers.extend([
        (":method".to_owned(), method.into_bytes()),
        (":path".to_owned(), format!("{path}{query}").into_bytes()),
        (":authority".to_owned(), host.into_bytes()),
    ]);
    Some(SyntheticRequest {
        headers,
        route_name: target.envoy_route_name().map(str::to_owned),
        body,
        policy,
    })
}

/// Whether the engine's matcher sends `request` to `route`.
pub fn reaches(settings: &Settings, route: &Route, request: &SyntheticRequest) -> bool {
    let view = settings.request(&request.headers, request.route_name.as_deref());
    let picked = settings.route_position_for(&view);
    match configured(settings, route) {
        None => picked.is_none(),
        Some(route) => picked.and_then(|position| settings.routes.get(position)) == Some(route),
    }
}

/// The engine's explanation of `request`.
pub fn decide(loaded: &Loaded, request: &SyntheticRequest) -> Explanation {
    explain(
        &loaded.config.settings,
        Some(&request.policy),
        &request.headers,
        request.route_name.as_deref(),
        loaded.now,
        request.body.as_deref(),
    )
}

/// The decision for `record` on `route` as the audit tabulates it: what the filter enforces
/// (in shadow mode, what it would enforce; the audit flags shadow mode on its own).
pub fn route_decision(
    loaded: &Loaded,
    route: &Route,
    route_label: &str,
    record: &KeyRecord,
    shape: &RequestShape,
) -> RouteDecision {
    let of = |decision: &'static str, code: Option<String>, status: Option<u16>| RouteDecision {
        route: route_label.to_owned(),
        decision,
        code,
        status,
    };
    let Some(request) = build(loaded, route, record, shape) else {
        return of("unknown", None, None);
    };
    if !reaches(&loaded.config.settings, route, &request) {
        return of("unreachable", None, None);
    }
    match decide(loaded, &request).verdict {
        Verdict::Exempt => of("exempt", None, None),
        Verdict::FailOpen => of("fail_open", None, None),
        Verdict::Allow {
            shadow_denied: Some(code),
            ..
        } => {
            let status = DenyCode::ALL
                .iter()
                .find(|candidate| candidate.as_str() == code)
                .map(|candidate| candidate.status(loaded.config.settings.spend_cap_status));
            of("deny", Some(code), status)
        }
        Verdict::Allow { .. } => of("allow", None, None),
        Verdict::Deny { status, code, .. } => of("deny", Some(code), Some(status)),
    }
}
