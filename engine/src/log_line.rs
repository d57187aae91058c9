//! One structured log line per decision: JSON, with ids only. There is no field a secret could
//! travel in: the line is built from the decision, never from raw headers.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DecisionLog<'a> {
    /// `deny`, `shadow_deny`, `allow`, `fail_open`.
    pub event: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_label: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<&'a str>,
    pub route: &'a str,
    pub request_id: &'a str,
    pub policy_version: u64,
}

impl DecisionLog<'_> {
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from(r#"{"event":"unloggable"}"#))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn renders_compact_json_without_empty_fields() {
        let line = DecisionLog {
            event: "deny",
            code: Some("invalid_api_key"),
            status: Some(401),
            route: "chat",
            request_id: "r-1",
            policy_version: 4,
            ..DecisionLog::default()
        }
        .to_line();
        assert_eq!(
            line,
            r#"{"event":"deny","code":"invalid_api_key","status":401,"route":"chat","request_id":"r-1","policy_version":4}"#
        );
    }
}
