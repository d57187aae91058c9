//! One error type for the store, the CLI and the admin API. Over HTTP it becomes the same JSON
//! shape the filter answers with: `{"error":{"code","type","message"}}`.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The HTTP status this error maps to (the CLI exits 1 for all of them).
    pub status: u16,
    /// A short, stable, machine-readable code (`key_not_found`).
    pub code: &'static str,
    /// A sentence for people. Never carries a key, a secret or a hash.
    pub message: String,
}

impl Error {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Error {
        Error {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Error {
        Error::new(400, code, message)
    }

    /// 404.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Error {
        Error::new(404, code, message)
    }

    /// 409: the request is well-formed but conflicts with the current state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Error {
        Error::new(409, code, message)
    }

    /// 500: something on our side failed (store, randomness, signing).
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(500, "internal_error", message)
    }

    /// 401.
    pub fn unauthenticated(message: impl Into<String>) -> Error {
        Error::new(401, "invalid_admin_token", message)
    }

    /// The `type` field of the JSON error, following the status like the filter's errors do.
    pub fn error_type(&self) -> &'static str {
        match self.status {
            401 => "authentication_error",
            402 | 403 => "permission_error",
            500..=599 => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON error body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                kind: self.error_type().to_owned(),
                message: self.message.clone(),
            },
        }
    }
}

/// `{"error": {"code", "type", "message"}}`: the filter's error shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Short, stable, machine-readable (`key_not_found`).
    pub code: String,
    /// `authentication_error`, `permission_error`, `invalid_request_error` or `api_error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(error: rusqlite::Error) -> Error {
        Error::internal(format!("store error: {error}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Error {
        Error::internal(format!("JSON error: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_the_status() {
        assert_eq!(
            Error::unauthenticated("x").error_type(),
            "authentication_error"
        );
        assert_eq!(Error::new(403, "x", "x").error_type(), "permission_error");
        assert_eq!(
            Error::not_found("x", "x").error_type(),
            "invalid_request_error"
        );
        assert_eq!(
            Error::conflict("x", "x").error_type(),
            "invalid_request_error"
        );
        assert_eq!(Error::internal("x").error_type(), "api_error");
        let body = serde_json::to_value(Error::invalid("bad", "Bad.").body()).unwrap();
        assert_eq!(body["error"]["code"], "bad");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["message"], "Bad.");
    }
}
