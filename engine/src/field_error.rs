//! Configuration and snapshot errors that name the offending field.

use core::fmt;

/// An error at one field of a JSON document, e.g. `policy.keys[3].project: unknown project`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The same error, seen from one level up (`keys[3]` inside `policy` becomes `policy.keys[3]`).
    pub fn within(mut self, parent: &str) -> Self {
        self.path = if self.path.is_empty() || self.path == "." {
            parent.to_owned()
        } else if self.path.starts_with('[') {
            format!("{parent}{}", self.path)
        } else {
            format!("{parent}.{}", self.path)
        };
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Deserializes `json` into `T`, reporting a failure at the path where it happened.
pub fn from_json<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, FieldError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        FieldError::new(path, describe(&inner))
    })?;
    deserializer
        .end()
        .map_err(|error| FieldError::new("", describe(&error)))?;
    Ok(value)
}

/// serde_json's message with its "at line L column C" suffix kept: for a one-line JSON string
/// inside Envoy YAML the column is still the best pointer there is.
fn describe(error: &serde_json::Error) -> String {
    error.to_string()
}
