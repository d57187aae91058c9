//! `render --preset`: the route table of a provider's API, so that a key's scopes, model
//! allow-list and spend caps are enforced from the first request. Each preset serves only the
//! paths it names (`unmatched_paths: deny`), reads the model from the JSON body, meters the
//! paths that cost money, and leaves `/healthz` without authentication.

use clap::ValueEnum;
use serde_json::{json, Value};

use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// OpenAI's API: chat completions, completions, responses, embeddings (metered), models.
    Openai,
    /// Anthropic's API: messages (metered), count_tokens, models; Anthropic's error shape.
    Anthropic,
}

fn route(name: &str, prefix: &str, methods: &[&str]) -> Value {
    json!({"name": name, "match": {"path_prefix": prefix, "methods": methods}})
}

fn metered(name: &str, prefix: &str, scope: &str) -> Value {
    let mut route = route(name, prefix, &["POST"]);
    if let Some(fields) = route.as_object_mut() {
        fields.insert("meter".into(), json!(true));
        fields.insert("scopes".into(), json!([scope]));
    }
    route
}

fn health() -> Value {
    json!({"name": "health", "match": {"path_prefix": "/healthz"}, "exempt": true})
}

/// The preset's plugin configuration: `unmatched_paths` and `routes` (and the error format).
pub fn config(preset: Preset) -> Value {
    match preset {
        Preset::Openai => json!({
            "unmatched_paths": "deny",
            "routes": [
                health(),
                metered("chat", "/v1/chat/completions", "chat:write"),
                metered("completions", "/v1/completions", "chat:write"),
                metered("responses", "/v1/responses", "responses:write"),
                {
                    "name": "responses_read",
                    "match": {"path_prefix": "/v1/responses", "methods": ["GET", "DELETE"]},
                    "scopes": ["responses:write"]
                },
                metered("embeddings", "/v1/embeddings", "embeddings:write"),
                route("models", "/v1/models", &["GET"]),
            ]
        }),
        Preset::Anthropic => json!({
            "unmatched_paths": "deny",
            "error_format": "anthropic",
            "routes": [
                health(),
                {
                    "name": "count_tokens",
                    "match": {"path_prefix": "/v1/messages/count_tokens", "methods": ["POST"]},
                    "model": "body",
                    "scopes": ["chat:write"]
                },
                metered("messages", "/v1/messages", "chat:write"),
                route("models", "/v1/models", &["GET"]),
            ]
        }),
    }
}

/// The preset under the operator's own configuration: fields of `--plugin-config` win, except
/// `routes` and `unmatched_paths`, which the preset owns (a route table of one's own is
/// `--plugin-config` without `--preset`).
pub fn apply(preset: Option<Preset>, own: Option<Value>) -> Result<Option<Value>, Error> {
    let Some(preset) = preset else {
        return Ok(own);
    };
    let mut merged = config(preset);
    let Some(own) = own else {
        return Ok(Some(merged));
    };
    let Value::Object(own) = own else {
        return Err(Error::invalid(
            "invalid_plugin_config",
            "--plugin-config: must be a JSON object",
        ));
    };
    for field in ["routes", "unmatched_paths"] {
        if own.contains_key(field) {
            return Err(Error::invalid(
                "invalid_plugin_config",
                format!(
                    "--plugin-config sets `{field}`, which --preset writes: use one or the other"
                ),
            ));
        }
    }
    if let Some(fields) = merged.as_object_mut() {
        fields.extend(own);
    }
    Ok(Some(merged))
}

/// A warning when no route of `config` checks anything a key can be restricted by: scopes,
/// models, spend. Keys may carry such restrictions, and nothing would enforce them.
pub fn enforcement_warning(config: Option<&Value>) -> Option<&'static str> {
    let routes = config
        .and_then(|config| config.get("routes"))
        .and_then(Value::as_array);
    let checks = |route: &&Value| {
        route.get("meter") == Some(&json!(true))
            || route.get("model").is_some()
            || route
                .get("scopes")
                .and_then(Value::as_array)
                .is_some_and(|scopes| !scopes.is_empty())
    };
    let enforced = routes.is_some_and(|routes| routes.iter().any(|route| checks(&route)));
    (!enforced).then_some(
        "warning: no route checks scopes, models or spend, so keys' scopes, model allow-lists \
         and spend caps are NOT enforced (only that a key is valid). Use --preset openai|anthropic \
         or give routes in --plugin-config (docs/configuration.md#routes)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_engine::config::{PluginConfig, UnmatchedPaths};

    #[test]
    fn presets_are_valid_configurations_that_enforce() {
        for preset in [Preset::Openai, Preset::Anthropic] {
            let config = config(preset);
            let parsed = PluginConfig::from_json(config.to_string().as_bytes()).unwrap();
            assert_eq!(parsed.settings.unmatched_paths, UnmatchedPaths::Deny);
            assert!(parsed.settings.routes.iter().any(|route| route.meter));
            assert!(parsed.settings.routes.iter().any(|route| route.exempt));
            assert!(enforcement_warning(Some(&config)).is_none());
        }
    }

    #[test]
    fn the_operators_fields_merge_but_not_their_routes() {
        let merged = apply(Some(Preset::Openai), Some(json!({"mode": "shadow"})))
            .unwrap()
            .unwrap();
        assert_eq!(merged["mode"], "shadow");
        assert!(merged["routes"].as_array().unwrap().len() > 3);
        assert!(apply(Some(Preset::Openai), Some(json!({"routes": []}))).is_err());
        assert_eq!(apply(None, None).unwrap(), None);
    }

    #[test]
    fn configurations_that_enforce_nothing_are_warned_about() {
        assert!(enforcement_warning(None).is_some());
        assert!(enforcement_warning(Some(&json!({"routes": [health()]}))).is_some());
        let scoped = json!({"routes": [{"name": "a", "scopes": ["x"]}]});
        assert!(enforcement_warning(Some(&scoped)).is_none());
    }
}
