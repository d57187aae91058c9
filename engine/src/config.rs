//! The plugin configuration (Envoy `configuration`, Istio `pluginConfig`): parsed and validated
//! once, in `on_configure`. Any error names its field and rejects the whole configuration.

use serde::Deserialize;

use crate::credential::{CredentialLookup, CredentialSource};
use crate::field_error::{from_json, FieldError};
use crate::key_format::KeyFormat;
use crate::metering::{MeteringDoc, MeteringSettings};
use crate::provider::{PROVIDER_CREDENTIAL_HEADERS, PROVIDER_CREDENTIAL_QUERY_PARAMETERS};
use crate::request::{Header, Request};
use crate::route::{
    is_header_name, ErrorFormat, ModelSource, ProjectSource, Route, RouteConfig, RouteDefaults,
};
use crate::snapshot::{Policy, Snapshot};
use crate::sync::{SyncDoc, SyncSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Enforce,
    /// Decide and report, but let every request through: for rollouts.
    Shadow,
}

/// What this plugin instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The HTTP filter (the default).
    #[default]
    Filter,
    /// The policy poller, as an Envoy bootstrap singleton (`envoy.bootstrap.wasm`).
    SyncService,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyUnavailable {
    #[default]
    FailClosed,
    FailOpen,
}

/// Names of the trusted headers keyward adds upstream. `org` and `environment` can be turned
/// off with `null` (one header write less per allowed request); client-sent copies of every
/// `x-keyward-*` header are removed whatever is configured.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityHeaders {
    pub key_id: String,
    pub project: String,
    pub org: Option<String>,
    pub environment: Option<String>,
}

impl Default for IdentityHeaders {
    fn default() -> Self {
        Self {
            key_id: "x-keyward-key-id".to_owned(),
            project: "x-keyward-project".to_owned(),
            org: Some("x-keyward-org".to_owned()),
            environment: Some("x-keyward-environment".to_owned()),
        }
    }
}

impl IdentityHeaders {
    /// The configured names (the ones turned off are absent).
    pub fn all(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.key_id.as_str()),
            Some(self.project.as_str()),
            self.org.as_deref(),
            self.environment.as_deref(),
        ]
        .into_iter()
        .flatten()
    }
}

/// What a request that no configured route matches gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedPaths {
    /// A valid key, nothing more (the fallback route).
    #[default]
    Authenticate,
    /// 404 `route_not_found`: only the paths the routes name are served.
    Deny,
}

/// Query parameters that carry keys on common APIs; removed from every forwarded request, so a
/// key sent where keyward does not read it never reaches the upstream's logs.
fn default_credential_query_parameters() -> Vec<String> {
    ["api_key", "api-key", "apikey", "key", "access_token"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// With `sync`, a policy older than this (by its `issued_at`) stops deciding unless the
/// configuration says otherwise: two days, twice the control plane's default snapshot lifetime,
/// so a data plane cut off from its control plane fails closed instead of enforcing a stale
/// policy for ever. `keyward serve` re-issues snapshots long before.
pub const DEFAULT_SYNCED_MAX_POLICY_AGE_SECONDS: u64 = 48 * 3600;

fn default_max_credential_bytes() -> usize {
    256
}

fn default_error_header() -> String {
    "x-keyward-error".to_owned()
}

fn default_spend_cap_status() -> u16 {
    403
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigDocument {
    #[serde(default)]
    role: Role,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    policy_unavailable: PolicyUnavailable,
    #[serde(default)]
    max_policy_age_seconds: Option<u64>,
    credential_sources: Option<Vec<CredentialSource>>,
    #[serde(default = "default_max_credential_bytes")]
    max_credential_bytes: usize,
    key_formats: Option<Vec<KeyFormat>>,
    #[serde(default)]
    identity_headers: IdentityHeaders,
    #[serde(default = "default_error_header")]
    error_header: String,
    #[serde(default = "default_spend_cap_status")]
    spend_cap_status: u16,
    #[serde(default)]
    deny_browser_requests: bool,
    #[serde(default)]
    error_format: ErrorFormat,
    #[serde(default)]
    log_allowed: bool,
    #[serde(default)]
    unmatched_paths: UnmatchedPaths,
    #[serde(default)]
    case_insensitive_paths: bool,
    #[serde(default = "default_credential_query_parameters")]
    credential_query_parameters: Vec<String>,
    #[serde(default)]
    routes: Vec<RouteConfig>,
    policy: Option<Snapshot>,
    sync: Option<SyncDoc>,
    metering: Option<MeteringDoc>,
}

/// Everything the data path needs from the configuration, except the policy itself (which a
/// later push may replace on its own).
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub policy_unavailable: PolicyUnavailable,
    pub max_policy_age_seconds: u64,
    pub credential_sources: Vec<CredentialSource>,
    pub max_credential_bytes: usize,
    pub key_formats: Vec<KeyFormat>,
    pub identity_headers: IdentityHeaders,
    pub error_header: String,
    pub spend_cap_status: u16,
    pub log_allowed: bool,
    pub unmatched_paths: UnmatchedPaths,
    /// Paths are folded to lower case before matching and forwarding.
    pub case_insensitive_paths: bool,
    pub routes: Vec<Route>,
    pub fallback_route: Route,
    /// Query parameters removed from every forwarded request: the configured credential names
    /// and every route's `query_parameter`.
    pub credential_query_names: Vec<String>,
    /// Header names keyward reads or writes (credential, identity, project and model headers);
    /// their `_` spellings are removed from every request, since CGI-style servers read
    /// `x_project_id` as `x-project-id`.
    pub guarded_header_names: Vec<String>,
    /// A guarded name itself has a `_`: then every request header takes the folding
    /// comparison (see `gate::Gate::hygiene`).
    pub guarded_names_have_underscores: bool,
    /// Removed from every request as sent: the identity header names and the credential
    /// headers (computed once; checked for every header of every request).
    pub removed_header_names: Vec<String>,
    /// The lengths of `guarded_header_names` and `removed_header_names` as a bit set (bit `n`
    /// for length `n`, bit 63 for 63 and longer). Every comparison `hygiene` makes keeps the
    /// length, so a request header of a length not in the set (and without an `x-keyward-`
    /// prefix) skips them all: most headers, on every request.
    pub hygiene_name_lengths: u64,
    /// Body limits, reservations and reporting for metered routes (defaults when absent).
    pub metering: MeteringSettings,
    /// Whether any route matches on Envoy's route name: decided once here, read per request.
    reads_route_name: bool,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct PluginConfig {
    pub settings: Settings,
    /// The inline policy snapshot, when the configuration carries one. With `sync`, it is the
    /// policy in force until a newer pushed one arrives.
    pub policy: Option<Policy>,
    pub role: Role,
    /// Where pushed policies come from, when they do.
    pub sync: Option<SyncSettings>,
}

impl PluginConfig {
    pub fn from_json(json: &[u8]) -> Result<PluginConfig, FieldError> {
        let document: ConfigDocument = from_json(json)?;
        let defaults = RouteDefaults {
            deny_browser_requests: document.deny_browser_requests,
            error_format: document.error_format,
            case_insensitive_paths: document.case_insensitive_paths,
        };
        if !(16..=4096).contains(&document.max_credential_bytes) {
            return Err(FieldError::new(
                "max_credential_bytes",
                "must be from 16 to 4096",
            ));
        }
        if ![402, 403, 429].contains(&document.spend_cap_status) {
            return Err(FieldError::new(
                "spend_cap_status",
                "must be 402, 403 or 429",
            ));
        }
        let credential_sources = document
            .credential_sources
            .unwrap_or_else(CredentialSource::defaults);
        let key_formats = document.key_formats.unwrap_or_else(KeyFormat::defaults);
        validate_key_formats(&key_formats)?;
        validate_headers(&document.identity_headers, &document.error_header)?;
        let routes = document
            .routes
            .into_iter()
            .enumerate()
            .map(|(position, route)| {
                Route::compile(route, defaults)
                    .map_err(|e| e.within(&format!("routes[{position}]")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sync = document
            .sync
            .map(|sync| SyncSettings::compile(sync).map_err(|e| e.within("sync")))
            .transpose()?;
        if document.role == Role::SyncService && sync.is_none() {
            return Err(FieldError::new(
                "sync",
                "the sync_service role needs a sync block",
            ));
        }
        let metering = MeteringSettings::compile(match document.metering {
            Some(doc) => doc,
            None => from_json(b"{}")?,
        })
        .map_err(|e| e.within("metering"))?;
        let policy = document
            .policy
            .map(|snapshot| Policy::compile(snapshot).map_err(|e| e.within("policy")))
            .transpose()?;
        for (position, name) in document.credential_query_parameters.iter().enumerate() {
            if name.is_empty() || name.contains(['&', '=', '?', '#']) {
                return Err(FieldError::new(
                    format!("credential_query_parameters[{position}]"),
                    "must be a plain parameter name",
                ));
            }
        }
        let mut credential_query_names = document.credential_query_parameters;
        credential_query_names.extend(routes.iter().filter_map(|r| r.query_parameter.clone()));
        if routes.iter().any(|route| route.provider.is_some()) {
            // A provider key sent in the query (Google's `?key=`) must not ride along either.
            credential_query_names.extend(
                PROVIDER_CREDENTIAL_QUERY_PARAMETERS
                    .iter()
                    .map(|name| (*name).to_owned()),
            );
        }
        credential_query_names.sort();
        credential_query_names.dedup();
        let removed_header_names: Vec<String> = document
            .identity_headers
            .all()
            .map(str::to_owned)
            .chain(
                credential_sources
                    .iter()
                    .map(|s| s.header_name().to_owned()),
            )
            .collect();
        let guarded_header_names =
            guarded_header_names(&credential_sources, &document.identity_headers, &routes);
        Ok(PluginConfig {
            settings: Settings {
                mode: document.mode,
                policy_unavailable: document.policy_unavailable,
                max_policy_age_seconds: document.max_policy_age_seconds.unwrap_or(
                    if sync.is_some() {
                        DEFAULT_SYNCED_MAX_POLICY_AGE_SECONDS
                    } else {
                        0
                    },
                ),
                credential_sources,
                max_credential_bytes: document.max_credential_bytes,
                key_formats,
                identity_headers: document.identity_headers,
                error_header: document.error_header,
                spend_cap_status: document.spend_cap_status,
                log_allowed: document.log_allowed,
                unmatched_paths: document.unmatched_paths,
                case_insensitive_paths: document.case_insensitive_paths,
                reads_route_name: routes.iter().any(Route::matches_by_route_name),
                routes,
                fallback_route: Route::fallback(
                    defaults,
                    document.unmatched_paths == UnmatchedPaths::Deny,
                ),
                credential_query_names,
                hygiene_name_lengths: name_lengths(&removed_header_names)
                    | name_lengths(&guarded_header_names),
                removed_header_names,
                guarded_names_have_underscores: guarded_header_names
                    .iter()
                    .any(|name| name.contains('_')),
                guarded_header_names,
                metering,
            },
            policy,
            role: document.role,
            sync,
        })
    }
}

impl Settings {
    /// The request's canonical view under this configuration (case folded when paths fold).
    pub fn request<'r>(&self, headers: &'r [Header], route_name: Option<&'r str>) -> Request<'r> {
        Request::with_case_folding(headers, route_name, self.case_insensitive_paths)
    }

    /// The first configured route the request matches, or the fallback.
    pub fn route_for(&self, request: &Request<'_>) -> &Route {
        self.route_at(self.route_position_for(request))
    }

    /// The position of the matching route in `routes`; `None` for the fallback.
    pub fn route_position_for(&self, request: &Request<'_>) -> Option<usize> {
        self.routes.iter().position(|route| route.matches(request))
    }

    pub fn route_at(&self, position: Option<usize>) -> &Route {
        position
            .and_then(|position| self.routes.get(position))
            .unwrap_or(&self.fallback_route)
    }

    /// Whether any route matches on Envoy's route name; if none does, the filter does not ask
    /// Envoy for it (one host call less per request).
    pub fn needs_route_name(&self) -> bool {
        self.reads_route_name
    }

    pub fn credential_lookup<'c>(&'c self, route: &'c Route) -> CredentialLookup<'c> {
        CredentialLookup {
            sources: &self.credential_sources,
            query_parameter: route.query_parameter.as_deref(),
            max_bytes: self.max_credential_bytes,
        }
    }
}

/// The lengths of `names` as a bit set (see [`Settings::hygiene_name_lengths`]).
pub fn name_lengths(names: &[String]) -> u64 {
    names
        .iter()
        .fold(0, |set, name| set | length_bit(name.len()))
}

/// The bit of a name of `length` bytes in a [`name_lengths`] set.
pub fn length_bit(length: usize) -> u64 {
    1u64 << length.min(63)
}

fn guarded_header_names(
    sources: &[CredentialSource],
    identity: &IdentityHeaders,
    routes: &[Route],
) -> Vec<String> {
    let mut names: Vec<String> = sources
        .iter()
        .map(|source| source.header_name().to_owned())
        .chain(identity.all().map(str::to_owned))
        .collect();
    for route in routes {
        if let Some(ProjectSource::Header(name)) = &route.project {
            names.push(name.clone());
        }
        if let Some(ModelSource::Header(name)) = &route.model {
            names.push(name.clone());
        }
    }
    names.sort();
    names.dedup();
    names
}

fn validate_key_formats(formats: &[KeyFormat]) -> Result<(), FieldError> {
    if formats.is_empty() {
        return Err(FieldError::new(
            "key_formats",
            "must name at least one format",
        ));
    }
    for (position, format) in formats.iter().enumerate() {
        let path = format!("key_formats[{position}]");
        format
            .validate()
            .map_err(|(field, message)| FieldError::new(format!("{path}.{field}"), message))?;
        for (other_position, other) in formats.iter().enumerate().take(position) {
            if other.name() == format.name() {
                return Err(FieldError::new(
                    format!("{path}.name"),
                    "duplicate format name",
                ));
            }
            if other.prefix().starts_with(format.prefix())
                || format.prefix().starts_with(other.prefix())
            {
                return Err(FieldError::new(
                    format!("{path}.prefix"),
                    format!("overlaps the prefix of key_formats[{other_position}]"),
                ));
            }
        }
    }
    Ok(())
}

fn validate_headers(identity: &IdentityHeaders, error_header: &str) -> Result<(), FieldError> {
    let named: Vec<(&str, &str)> = [
        ("identity_headers.key_id", Some(identity.key_id.as_str())),
        ("identity_headers.project", Some(identity.project.as_str())),
        ("identity_headers.org", identity.org.as_deref()),
        (
            "identity_headers.environment",
            identity.environment.as_deref(),
        ),
        ("error_header", Some(error_header)),
    ]
    .into_iter()
    .filter_map(|(path, name)| name.map(|name| (path, name)))
    .collect();
    for (position, (path, name)) in named.iter().enumerate() {
        if !is_header_name(name) {
            return Err(FieldError::new(*path, "must be a lower-case header name"));
        }
        // keyward appends identity headers after removing client copies (`Edit::Add`), and on
        // provider routes it appends the provider key: a name shared with a credential header
        // would arrive twice.
        let reserved = ["host", "cookie", "content-type"];
        if reserved.contains(name) || PROVIDER_CREDENTIAL_HEADERS.contains(name) {
            return Err(FieldError::new(
                *path,
                "must not be a standard or credential header",
            ));
        }
        if named.iter().take(position).any(|(_, other)| other == name) {
            return Err(FieldError::new(
                *path,
                "must differ from the other keyward headers",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn name_lengths_cover_every_length_and_fold_the_long_ones_together() {
        let names = ["x-a".to_owned(), "x".repeat(63), "x".repeat(200)];
        let set = name_lengths(&names);
        assert_eq!(set, length_bit(3) | length_bit(63));
        // A long header is always compared, whatever its exact length.
        assert_ne!(set & length_bit(64), 0);
        assert_ne!(set & length_bit(500), 0);
        assert_eq!(set & length_bit(4), 0);
        assert_eq!(name_lengths(&[]), 0);
    }

    #[test]
    fn empty_configuration_gets_safe_defaults() {
        let config = PluginConfig::from_json(b"{}").expect("valid");
        assert_eq!(config.settings.mode, Mode::Enforce);
        assert_eq!(
            config.settings.policy_unavailable,
            PolicyUnavailable::FailClosed
        );
        assert_eq!(config.settings.key_formats.len(), 2);
        assert!(config.policy.is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"mode": "relaxed"}"#, "mode"),
            (r#"{"modes": "shadow"}"#, "modes"),
            (r#"{"spend_cap_status": 500}"#, "spend_cap_status"),
            (r#"{"max_credential_bytes": 8}"#, "max_credential_bytes"),
            (
                r#"{"credential_sources": ["cookie"]}"#,
                "credential_sources[0]",
            ),
            (
                r#"{"identity_headers": {"key_id": "X-Key"}}"#,
                "identity_headers.key_id",
            ),
            (
                r#"{"identity_headers": {"project": "x-keyward-key-id"}}"#,
                "identity_headers.project",
            ),
            (
                r#"{"identity_headers": {"key_id": null}}"#,
                "identity_headers.key_id",
            ),
            (
                r#"{"identity_headers": {"org": "X-Org"}}"#,
                "identity_headers.org",
            ),
            (
                r#"{"identity_headers": {"environment": "x-goog-api-key"}}"#,
                "identity_headers.environment",
            ),
            (
                r#"{"identity_headers": {"key_id": "api-key"}}"#,
                "identity_headers.key_id",
            ),
            (
                r#"{"routes": [{"name": "a"}, {"name": "b", "match": {"path_prefix": "x"}}]}"#,
                "routes[1].match.path_prefix",
            ),
            (
                r#"{"policy": {"version": 0, "issued_at": 1}}"#,
                "policy.version",
            ),
            (
                r#"{"policy": {"version": 1, "issued_at": 1, "keys": [{"id": "k"}]}}"#,
                "policy.keys[0]",
            ),
            (
                r#"{"key_formats": [
                    {"type": "prefixed_opaque", "name": "a", "prefix": "sk_", "body": {"charset": "hex", "min_length": 8, "max_length": 8}},
                    {"type": "prefixed_opaque", "name": "b", "prefix": "sk_live_", "body": {"charset": "hex", "min_length": 8, "max_length": 8}}]}"#,
                "key_formats[1].prefix",
            ),
            (r#"{"key_formats": []}"#, "key_formats"),
            (r#"not json"#, ""),
        ];
        for (json, path) in cases {
            let error = PluginConfig::from_json(json.as_bytes()).expect_err(json);
            assert!(error.path.starts_with(path), "{json}: got {error}");
        }
    }

    #[test]
    fn org_and_environment_headers_can_be_turned_off() {
        let config = PluginConfig::from_json(
            br#"{"identity_headers": {"org": null, "environment": null, "key_id": "x-key"}}"#,
        )
        .expect("valid");
        let names = &config.settings.identity_headers;
        assert_eq!(names.org, None);
        assert_eq!(names.environment, None);
        assert_eq!(
            names.all().collect::<Vec<_>>(),
            ["x-key", "x-keyward-project"]
        );
        let defaults = PluginConfig::from_json(b"{}").expect("valid");
        assert_eq!(
            defaults.settings.identity_headers.all().collect::<Vec<_>>(),
            [
                "x-keyward-key-id",
                "x-keyward-project",
                "x-keyward-org",
                "x-keyward-environment"
            ]
        );
    }
}
