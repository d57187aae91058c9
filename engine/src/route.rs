//! Per-route requirements. Envoy gives Wasm filters no per-route configuration, so the plugin
//! carries a route table and matches each request against it (first match wins).

use serde::Deserialize;

use crate::field_error::FieldError;
use crate::limit_headers::LimitHeaders;
use crate::provider::{HeaderStyle, MissingProviderKey, Provider, ProviderRoute};
use crate::request::Request;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorFormat {
    /// `{"error": {"code", "type", "message", "request_id"}}`, as OpenAI SDKs expect.
    #[default]
    Openai,
    /// `{"type": "error", "error": {"type", "message"}, "request_id"}`, as Anthropic SDKs expect.
    Anthropic,
}

/// Conditions on a request; all given ones must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Envoy's route `name` (property `xds.route_name`).
    pub route_name: Option<String>,
    /// The host, compared with the request's canonical host (lower case, without port or
    /// trailing dot).
    pub host: Option<String>,
    /// Leading whole segments of the canonical path: `/healthz` matches `/healthz` and
    /// `/healthz/x`, never `/healthzfoo`.
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
}

/// Where a request names the project it acts on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ProjectSource {
    Header(String),
    /// A path like `/v1/projects/{project}/`: the segment in place of `{project}`.
    PathPattern(String),
}

/// Where the requested model is known before the body is read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSource {
    Header(String),
    Fixed(String),
    /// The JSON request body's top-level `model` (the body is buffered, within
    /// `metering.max_request_body_bytes`, before the request goes upstream).
    Body,
}

/// One route entry as written in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matcher: RouteMatch,
    #[serde(default)]
    pub exempt: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub environments: Vec<String>,
    pub project: Option<ProjectSource>,
    #[serde(default)]
    pub require_project: bool,
    pub model: Option<ModelSource>,
    pub query_parameter: Option<String>,
    pub deny_browser_requests: Option<bool>,
    pub error_format: Option<ErrorFormat>,
    /// Meter spend on this route: read token usage from responses, reserve budget before
    /// forwarding (needs the `metering` block). Implies `model: "body"` unless `model` is set.
    #[serde(default)]
    pub meter: bool,
    /// Whether an OpenAI chat-completions stream request gets `stream_options.include_usage`
    /// added so its usage cannot be dodged. Only bodies on paths ending in `/chat/completions`
    /// are touched.
    #[serde(default = "default_true")]
    pub add_stream_usage: bool,
    /// How answers show the key's limits (per-minute buckets and quotas).
    #[serde(default)]
    pub limit_headers: LimitHeaders,
    /// Also show the tightest spend budget's remaining micro-dollars and its reset.
    #[serde(default)]
    pub budget_headers: bool,
    /// Inject the project's (else its org's) key for this provider on allowed requests.
    pub provider: Option<Provider>,
    /// The header the provider key goes in, when not the provider's own (an OpenAI-compatible
    /// gateway in front of another provider).
    pub provider_header: Option<HeaderStyle>,
    /// What happens when no key is found: `deny` (403 `provider_key_missing`) or `pass`.
    #[serde(default)]
    pub missing_provider_key: MissingProviderKey,
}

fn default_true() -> bool {
    true
}

/// A route entry ready for matching, with the configuration's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    route_name: Option<String>,
    host: Option<String>,
    path_prefix: Option<String>,
    methods: Vec<String>,
    pub exempt: bool,
    pub scopes: Vec<String>,
    pub environments: Vec<String>,
    pub project: Option<ProjectSource>,
    pub require_project: bool,
    pub model: Option<ModelSource>,
    pub query_parameter: Option<String>,
    pub deny_browser_requests: bool,
    pub error_format: ErrorFormat,
    pub meter: bool,
    pub add_stream_usage: bool,
    pub limit_headers: LimitHeaders,
    pub budget_headers: bool,
    pub provider: Option<ProviderRoute>,
    case_insensitive_paths: bool,
    /// The fallback route of `unmatched_paths: deny`: every request on it is refused.
    pub denies_all: bool,
}

/// Defaults a route inherits from the top level of the configuration.
#[derive(Debug, Clone, Copy)]
pub struct RouteDefaults {
    pub deny_browser_requests: bool,
    pub error_format: ErrorFormat,
    /// Compare path prefixes and project path patterns without case (for upstreams that do).
    pub case_insensitive_paths: bool,
}

pub fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Route {
    /// The route used when no configured route matches: a valid key, nothing more, or (with
    /// `denies_all`) a refusal.
    pub fn fallback(defaults: RouteDefaults, denies_all: bool) -> Route {
        Route {
            name: String::new(),
            route_name: None,
            host: None,
            path_prefix: None,
            methods: Vec::new(),
            exempt: false,
            scopes: Vec::new(),
            environments: Vec::new(),
            project: None,
            require_project: false,
            model: None,
            query_parameter: None,
            deny_browser_requests: defaults.deny_browser_requests,
            error_format: defaults.error_format,
            meter: false,
            add_stream_usage: false,
            limit_headers: LimitHeaders::Openai,
            budget_headers: false,
            provider: None,
            case_insensitive_paths: defaults.case_insensitive_paths,
            denies_all,
        }
    }

    /// Whether the request body must be read before the request may go upstream.
    pub fn reads_body(&self) -> bool {
        self.meter || self.model == Some(ModelSource::Body)
    }

    pub fn compile(config: RouteConfig, defaults: RouteDefaults) -> Result<Route, FieldError> {
        if config.name.is_empty() {
            return Err(FieldError::new("name", "must not be empty"));
        }
        let RouteMatch {
            route_name,
            host,
            path_prefix,
            methods,
        } = config.matcher;
        if let Some(prefix) = &path_prefix {
            let canonical = crate::canonical::canonical_path(prefix);
            if !canonical
                .as_deref()
                .is_ok_and(|canonical| canonical == prefix)
            {
                return Err(FieldError::new(
                    "match.path_prefix",
                    "must be a canonical path: start with /, no //, . or .. segments, no %2F, ; or \\\\",
                ));
            }
        }
        if let Some(wanted) = &host {
            let canonical = crate::canonical::canonical_host(wanted);
            let plain = canonical.as_deref().is_ok_and(|canonical| {
                canonical.eq_ignore_ascii_case(wanted.trim_end_matches('.'))
            });
            if wanted.is_empty() || !plain || wanted.contains(':') && !wanted.starts_with('[') {
                return Err(FieldError::new(
                    "match.host",
                    "must be a host name without port or user information",
                ));
            }
        }
        for (position, method) in methods.iter().enumerate() {
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(FieldError::new(
                    format!("match.methods[{position}]"),
                    "must be an upper-case HTTP method",
                ));
            }
        }
        if config.exempt && (!config.scopes.is_empty() || config.project.is_some()) {
            return Err(FieldError::new(
                "exempt",
                "an exempt route cannot also require scopes or a project",
            ));
        }
        match &config.project {
            Some(ProjectSource::Header(name)) if !is_header_name(name) => {
                return Err(FieldError::new(
                    "project.header",
                    "must be a lower-case header name",
                ))
            }
            Some(ProjectSource::PathPattern(pattern)) => {
                let ok = pattern.starts_with('/') && pattern.matches("{project}").count() == 1;
                if !ok {
                    return Err(FieldError::new(
                        "project.path_pattern",
                        "must start with / and contain {project} once",
                    ));
                }
            }
            _ => {}
        }
        if config.require_project && config.project.is_none() {
            return Err(FieldError::new(
                "require_project",
                "needs a project source (project.header or project.path_pattern)",
            ));
        }
        if let Some(ModelSource::Header(name)) = &config.model {
            if !is_header_name(name) {
                return Err(FieldError::new(
                    "model.header",
                    "must be a lower-case header name",
                ));
            }
        }
        if let Some(parameter) = &config.query_parameter {
            if parameter.is_empty() || parameter.contains(['&', '=', '?', '#']) {
                return Err(FieldError::new(
                    "query_parameter",
                    "must be a plain parameter name",
                ));
            }
        }
        if config.provider.is_none()
            && (config.provider_header.is_some()
                || config.missing_provider_key != MissingProviderKey::Deny)
        {
            return Err(FieldError::new(
                "provider",
                "provider_header and missing_provider_key need a provider",
            ));
        }
        if config.exempt && config.provider.is_some() {
            return Err(FieldError::new(
                "provider",
                "an exempt route has no project to take a provider key from",
            ));
        }
        let provider = config.provider.map(|provider| ProviderRoute {
            provider,
            header: config
                .provider_header
                .unwrap_or_else(|| provider.default_header()),
            missing: config.missing_provider_key,
        });
        Ok(Route {
            name: config.name,
            route_name,
            host: host.map(|host| host.trim_end_matches('.').to_ascii_lowercase()),
            path_prefix,
            methods,
            exempt: config.exempt,
            scopes: config.scopes,
            environments: config.environments,
            project: config.project,
            require_project: config.require_project,
            model: match (config.model, config.meter) {
                (None, true) => Some(ModelSource::Body),
                (model, _) => model,
            },
            query_parameter: config.query_parameter,
            deny_browser_requests: config
                .deny_browser_requests
                .unwrap_or(defaults.deny_browser_requests),
            error_format: config.error_format.unwrap_or(defaults.error_format),
            meter: config.meter,
            add_stream_usage: config.add_stream_usage,
            limit_headers: config.limit_headers,
            budget_headers: config.budget_headers,
            provider,
            case_insensitive_paths: defaults.case_insensitive_paths,
            denies_all: false,
        })
    }

    /// Whether matching this route needs Envoy's route name (a host call per request).
    pub fn matches_by_route_name(&self) -> bool {
        self.route_name.is_some()
    }

    /// The Envoy route name this route matches, if it matches on one.
    pub fn envoy_route_name(&self) -> Option<&str> {
        self.route_name.as_deref()
    }

    /// The host this route matches, if it matches on one (canonical: lower case).
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    pub fn path_prefix(&self) -> Option<&str> {
        self.path_prefix.as_deref()
    }

    pub fn methods(&self) -> &[String] {
        &self.methods
    }

    pub fn matches(&self, request: &Request<'_>) -> bool {
        let route_name_ok = self
            .route_name
            .as_deref()
            .is_none_or(|wanted| request.route_name() == Some(wanted));
        let host_ok = self
            .host
            .as_deref()
            .is_none_or(|wanted| request.host() == wanted);
        let path_ok = self.path_prefix.as_deref().is_none_or(|prefix| {
            segment_prefix(
                prefix,
                request.path_without_query(),
                self.case_insensitive_paths,
            )
        });
        // Methods compare without case: some servers upper-case what they receive.
        let method_ok = self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| m.eq_ignore_ascii_case(request.method()));
        route_name_ok && host_ok && path_ok && method_ok
    }

    /// What the request says about the project it targets. Bytes that cannot be read are a
    /// named project that matches nothing, never "no project".
    pub fn requested_project<'q>(&self, request: &'q Request<'_>) -> RequestedProject<'q> {
        match &self.project {
            None => RequestedProject::None,
            Some(ProjectSource::Header(name)) => {
                let mut values = request.header_values(name);
                match (values.next(), values.next()) {
                    (None, _) => RequestedProject::None,
                    (Some(value), None) => match core::str::from_utf8(value) {
                        Ok(text) if !text.trim().is_empty() => RequestedProject::Named(text.trim()),
                        Ok(_) => RequestedProject::None,
                        Err(_) => RequestedProject::Unreadable,
                    },
                    (Some(_), Some(_)) => RequestedProject::Unreadable,
                }
            }
            Some(ProjectSource::PathPattern(pattern)) => project_from_path(
                pattern,
                request.path_without_query(),
                self.case_insensitive_paths,
            )
            .map_or(RequestedProject::None, RequestedProject::Named),
        }
    }

    /// The model the request asks for, when the route knows it before the body.
    pub fn requested_model<'a>(&'a self, request: &Request<'a>) -> Option<&'a str> {
        match self.model.as_ref()? {
            ModelSource::Fixed(model) => Some(model),
            ModelSource::Header(name) => request.single_header(name),
            ModelSource::Body => None,
        }
    }

    /// Whether the model is only known once the body has been read.
    pub fn model_from_body(&self) -> bool {
        self.model == Some(ModelSource::Body)
    }
}

/// The project a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedProject<'r> {
    None,
    Named(&'r str),
    /// Repeated or non-UTF-8: treated as naming a project the key cannot have.
    Unreadable,
}

/// Whether `prefix` is made of leading whole segments of `path`. A trailing `/` in the prefix
/// does not matter: `/v1/chat/` matches `/v1/chat` too, since servers often treat them alike.
pub fn segment_prefix(prefix: &str, path: &str, case_insensitive: bool) -> bool {
    let prefix = prefix.trim_end_matches('/');
    let Some(head) = path.get(..prefix.len()) else {
        return false;
    };
    let same = if case_insensitive {
        head.eq_ignore_ascii_case(prefix)
    } else {
        head == prefix
    };
    same && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

fn strip_prefix_with_case<'p>(
    path: &'p str,
    prefix: &str,
    case_insensitive: bool,
) -> Option<&'p str> {
    let head = path.get(..prefix.len())?;
    let same = if case_insensitive {
        head.eq_ignore_ascii_case(prefix)
    } else {
        head == prefix
    };
    same.then(|| path.get(prefix.len()..)).flatten()
}

fn project_from_path<'p>(pattern: &str, path: &'p str, case_insensitive: bool) -> Option<&'p str> {
    let (before, after) = pattern.split_once("{project}")?;
    let rest = strip_prefix_with_case(path, before, case_insensitive)?;
    let end = rest.find('/').unwrap_or(rest.len());
    let (segment, tail) = rest.split_at(end);
    // What follows `{project}` must match whole segments too: `/p/{project}/runs` names no
    // project in `/p/x/runsX`.
    let tail_ok = segment_prefix(after, tail, case_insensitive);
    (!segment.is_empty() && tail_ok).then_some(segment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Header;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const DEFAULTS: RouteDefaults = RouteDefaults {
        deny_browser_requests: false,
        error_format: ErrorFormat::Openai,
        case_insensitive_paths: false,
    };

    fn route(json: &str) -> Result<Route, FieldError> {
        let config: RouteConfig =
            serde_json::from_str(json).map_err(|e| FieldError::new("", e.to_string()))?;
        Route::compile(config, DEFAULTS)
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn matches_all_given_conditions() {
        let chat = route(
            r#"{"name": "chat", "match": {"host": "API.example.com", "path_prefix": "/v1/chat/", "methods": ["POST"]}}"#,
        )
        .expect("valid");
        let list = headers(&[
            (":method", "POST"),
            (":path", "/v1/chat/completions?x=1"),
            (":authority", "api.example.com:443"),
        ]);
        assert!(chat.matches(&Request::new(&list, None)));
        let get = headers(&[
            (":method", "GET"),
            (":path", "/v1/chat/x"),
            (":authority", "api.example.com"),
        ]);
        assert!(!chat.matches(&Request::new(&get, None)));
        let by_name =
            route(r#"{"name": "n", "match": {"route_name": "openai_chat"}}"#).expect("valid");
        assert!(by_name.matches(&Request::new(&list, Some("openai_chat"))));
        assert!(!by_name.matches(&Request::new(&list, Some("other"))));
        assert!(!by_name.matches(&Request::new(&list, None)));
    }

    #[test]
    fn project_from_path_pattern() {
        assert_eq!(
            project_from_path("/v1/projects/{project}/", "/v1/projects/p1/chat", false),
            Some("p1")
        );
        assert_eq!(
            project_from_path("/v1/projects/{project}/", "/v1/projects/p1", false),
            Some("p1")
        );
        assert_eq!(
            project_from_path("/v1/projects/{project}/", "/v1/projects//chat", false),
            None
        );
        assert_eq!(
            project_from_path("/v1/projects/{project}/", "/v2/projects/p1/", false),
            None
        );
        assert_eq!(
            project_from_path("/p/{project}/runs", "/p/x/runs", false),
            Some("x")
        );
        assert_eq!(
            project_from_path("/p/{project}/runs", "/p/x/other", false),
            None
        );
        assert_eq!(
            project_from_path("/p/{project}/runs", "/p/x/runsX", false),
            None
        );
        assert_eq!(
            project_from_path("/P/{project}/runs", "/p/x/RUNS/1", true),
            Some("x")
        );
    }

    #[test]
    fn requested_project_from_header() {
        let r = route(r#"{"name": "r", "project": {"header": "x-project-id"}}"#).expect("valid");
        let named = headers(&[("x-project-id", "p1")]);
        assert_eq!(
            r.requested_project(&Request::new(&named, None)),
            RequestedProject::Named("p1")
        );
        let twice = headers(&[("x-project-id", "p1"), ("x-project-id", "p2")]);
        assert_eq!(
            r.requested_project(&Request::new(&twice, None)),
            RequestedProject::Unreadable
        );
        let none = headers(&[]);
        assert_eq!(
            r.requested_project(&Request::new(&none, None)),
            RequestedProject::None
        );
    }

    #[test]
    fn invalid_routes_name_their_field() {
        let cases = [
            (
                r#"{"name": "r", "match": {"path_prefix": "v1"}}"#,
                "match.path_prefix",
            ),
            (
                r#"{"name": "r", "match": {"methods": ["post"]}}"#,
                "match.methods[0]",
            ),
            (
                r#"{"name": "r", "require_project": true}"#,
                "require_project",
            ),
            (
                r#"{"name": "r", "project": {"path_pattern": "/v1/x/"}}"#,
                "project.path_pattern",
            ),
            (
                r#"{"name": "r", "project": {"header": "X-Project"}}"#,
                "project.header",
            ),
            (
                r#"{"name": "r", "exempt": true, "scopes": ["a"]}"#,
                "exempt",
            ),
        ];
        for (json, path) in cases {
            let error = route(json).expect_err(json);
            assert_eq!(error.path, path, "{json}");
        }
    }
}
