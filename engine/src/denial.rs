//! The error contract (DESIGN §4): codes, statuses, and the JSON bodies SDKs can display.
//! Nothing here ever takes the presented key, a hash, or another project's id as input.

use serde::Serialize;

use crate::route::ErrorFormat;

/// Every reason keyward refuses a request, in decision-table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyCode {
    InvalidRequest,
    RouteNotFound,
    PolicyUnavailable,
    MissingApiKey,
    MalformedApiKey,
    InvalidApiKey,
    KeyRevoked,
    KeyExpired,
    KeyPaused,
    ProjectArchived,
    EnvironmentMismatch,
    ProjectMismatch,
    ProjectRequired,
    BrowserRequestDenied,
    InsufficientScope,
    ModelNotAllowed,
    SpendCapExceeded,
    RateLimited,
    /// A request or token quota of the day, week or month is used up.
    QuotaExceeded,
    /// The body had to be read (model, metering) and was larger than allowed.
    RequestTooLarge,
    /// The body had to be read and is not a JSON object.
    InvalidRequestBody,
    /// Not a policy decision: the host failed us, so the request is refused rather than guessed.
    InternalError,
    /// A provider route, and neither the project nor its org has a key for its provider.
    ProviderKeyMissing,
    /// A provider route, and this data plane cannot open the snapshot's provider keys (no fleet
    /// private key, or the wrong one).
    ProviderKeyUnavailable,
}

impl DenyCode {
    pub const ALL: [DenyCode; 24] = [
        DenyCode::InvalidRequest,
        DenyCode::RouteNotFound,
        DenyCode::PolicyUnavailable,
        DenyCode::MissingApiKey,
        DenyCode::MalformedApiKey,
        DenyCode::InvalidApiKey,
        DenyCode::KeyRevoked,
        DenyCode::KeyExpired,
        DenyCode::KeyPaused,
        DenyCode::ProjectArchived,
        DenyCode::EnvironmentMismatch,
        DenyCode::ProjectMismatch,
        DenyCode::ProjectRequired,
        DenyCode::BrowserRequestDenied,
        DenyCode::InsufficientScope,
        DenyCode::ModelNotAllowed,
        DenyCode::SpendCapExceeded,
        DenyCode::RateLimited,
        DenyCode::QuotaExceeded,
        DenyCode::RequestTooLarge,
        DenyCode::InvalidRequestBody,
        DenyCode::InternalError,
        DenyCode::ProviderKeyMissing,
        DenyCode::ProviderKeyUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::InvalidRequest => "invalid_request",
            DenyCode::RouteNotFound => "route_not_found",
            DenyCode::PolicyUnavailable => "policy_unavailable",
            DenyCode::MissingApiKey => "missing_api_key",
            DenyCode::MalformedApiKey => "malformed_api_key",
            DenyCode::InvalidApiKey => "invalid_api_key",
            DenyCode::KeyRevoked => "key_revoked",
            DenyCode::KeyExpired => "key_expired",
            DenyCode::KeyPaused => "key_paused",
            DenyCode::ProjectArchived => "project_archived",
            DenyCode::EnvironmentMismatch => "environment_mismatch",
            DenyCode::ProjectMismatch => "project_mismatch",
            DenyCode::ProjectRequired => "project_required",
            DenyCode::BrowserRequestDenied => "browser_request_denied",
            DenyCode::InsufficientScope => "insufficient_scope",
            DenyCode::ModelNotAllowed => "model_not_allowed",
            DenyCode::SpendCapExceeded => "spend_cap_exceeded",
            DenyCode::RateLimited => "rate_limited",
            DenyCode::QuotaExceeded => "quota_exceeded",
            DenyCode::RequestTooLarge => "request_too_large",
            DenyCode::InvalidRequestBody => "invalid_request_body",
            DenyCode::InternalError => "internal_error",
            DenyCode::ProviderKeyMissing => "provider_key_missing",
            DenyCode::ProviderKeyUnavailable => "provider_key_unavailable",
        }
    }

    /// The HTTP status; `spend_cap_status` is the configured status for spend caps.
    pub fn status(self, spend_cap_status: u16) -> u16 {
        match self {
            DenyCode::PolicyUnavailable | DenyCode::ProviderKeyUnavailable => 503,
            DenyCode::MissingApiKey
            | DenyCode::MalformedApiKey
            | DenyCode::InvalidApiKey
            | DenyCode::KeyRevoked
            | DenyCode::KeyExpired => 401,
            DenyCode::SpendCapExceeded => spend_cap_status,
            DenyCode::RateLimited | DenyCode::QuotaExceeded => 429,
            DenyCode::RequestTooLarge => 413,
            DenyCode::InvalidRequestBody | DenyCode::InvalidRequest => 400,
            DenyCode::RouteNotFound => 404,
            DenyCode::InternalError => 500,
            _ => 403,
        }
    }

    fn default_message(self) -> &'static str {
        match self {
            DenyCode::InvalidRequest => {
                "The request's path or host is ambiguous, so this gateway cannot check it."
            }
            DenyCode::RouteNotFound => "No route of this gateway serves this path.",
            DenyCode::PolicyUnavailable => {
                "The API key policy is not available right now. Try again later."
            }
            DenyCode::MissingApiKey => {
                "No API key provided. Send it as 'Authorization: Bearer <key>'."
            }
            DenyCode::MalformedApiKey => "The API key is malformed.",
            DenyCode::InvalidApiKey => "Incorrect API key provided.",
            DenyCode::KeyRevoked => "This API key has been revoked.",
            DenyCode::KeyExpired => "This API key has expired.",
            DenyCode::KeyPaused => "This API key is paused.",
            DenyCode::ProjectArchived => "The project of this request is archived or suspended.",
            DenyCode::EnvironmentMismatch => "This key's environment is not allowed on this route.",
            DenyCode::ProjectMismatch => "This key may not act on the requested project.",
            DenyCode::ProjectRequired => "This route needs the request to name a project.",
            DenyCode::BrowserRequestDenied => {
                "Secret API keys must not be used from a browser. Call this API from your backend."
            }
            DenyCode::InsufficientScope => "This key lacks a scope this route requires.",
            DenyCode::ModelNotAllowed => "This key may not use the requested model.",
            DenyCode::SpendCapExceeded => "The spend cap for this key or project has been reached.",
            DenyCode::RateLimited => {
                "Rate limit reached for this API key. Retry after the time in retry-after."
            }
            DenyCode::QuotaExceeded => {
                "The request or token quota of this period is used up. Retry after the time in retry-after."
            }
            DenyCode::RequestTooLarge => "The request body is larger than this gateway reads.",
            DenyCode::InvalidRequestBody => "The request body must be a JSON object.",
            DenyCode::InternalError => "The gateway could not check this request. Try again.",
            DenyCode::ProviderKeyMissing => {
                "No provider key is configured for this project and provider."
            }
            DenyCode::ProviderKeyUnavailable => {
                "The gateway cannot use its provider keys right now. Try again later."
            }
        }
    }
}

/// The `type` field SDKs switch on, from the status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 | 403 => "permission_error",
        429 => "rate_limit_error",
        400 | 413 => "invalid_request_error",
        404 => "not_found_error",
        _ => "api_error",
    }
}

/// A refusal ready to be sent: status, code and the safe human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub code: DenyCode,
    pub status: u16,
    /// Safe to show: built only from fixed texts and route configuration.
    pub message: String,
}

impl Denial {
    pub fn new(code: DenyCode, spend_cap_status: u16) -> Self {
        Self {
            code,
            status: code.status(spend_cap_status),
            message: code.default_message().to_owned(),
        }
    }

    /// Adds a fixed explanation (never request data) to the message.
    pub fn with_detail(mut self, detail: &str) -> Self {
        self.message = format!("{} ({detail})", self.message.trim_end_matches('.'));
        self.message.push('.');
        self
    }

    /// The JSON body in the route's shape.
    pub fn body(&self, format: ErrorFormat, request_id: &str) -> String {
        let kind = error_type(self.status);
        let rendered = match format {
            ErrorFormat::Openai => serde_json::to_string(&OpenAiBody {
                error: OpenAiError {
                    code: self.code.as_str(),
                    kind,
                    message: &self.message,
                    request_id,
                },
            }),
            ErrorFormat::Anthropic => serde_json::to_string(&AnthropicBody {
                kind: "error",
                error: AnthropicError {
                    kind,
                    message: &self.message,
                },
                request_id,
            }),
        };
        // Serializing plain strings cannot fail; should it ever, a fixed body still says no.
        rendered.unwrap_or_else(|_| {
            String::from(r#"{"error":{"code":"internal","type":"api_error","message":"denied"}}"#)
        })
    }
}

#[derive(Serialize)]
struct OpenAiBody<'a> {
    error: OpenAiError<'a>,
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    code: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
    request_id: &'a str,
}

#[derive(Serialize)]
struct AnthropicBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    error: AnthropicError<'a>,
    request_id: &'a str,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn openai_body_shape() {
        let denial = Denial::new(DenyCode::InvalidApiKey, 403);
        let body: serde_json::Value =
            serde_json::from_str(&denial.body(ErrorFormat::Openai, "req-1")).expect("json");
        assert_eq!(body["error"]["code"], "invalid_api_key");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(body["error"]["request_id"], "req-1");
        assert_eq!(denial.status, 401);
    }

    #[test]
    fn anthropic_body_shape() {
        let denial = Denial::new(DenyCode::KeyPaused, 403);
        let body: serde_json::Value =
            serde_json::from_str(&denial.body(ErrorFormat::Anthropic, "r\"2")).expect("json");
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "permission_error");
        assert_eq!(body["request_id"], "r\"2");
    }

    #[test]
    fn statuses_follow_the_table() {
        assert_eq!(DenyCode::PolicyUnavailable.status(403), 503);
        assert_eq!(DenyCode::KeyExpired.status(403), 401);
        assert_eq!(DenyCode::ProjectRequired.status(403), 403);
        assert_eq!(DenyCode::SpendCapExceeded.status(402), 402);
        assert_eq!(error_type(402), "permission_error");
        let mut names: Vec<&str> = DenyCode::ALL.iter().map(|c| c.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), DenyCode::ALL.len());
    }
}
