//! What `keyward audit --config` may be given: the bare plugin configuration, an Envoy bootstrap
//! (JSON or YAML, rendered or hand-written), or Istio resources (a `WasmPlugin`, alone or in the
//! stream `render istio` prints). keyward's plugin configuration is found inside each.

use serde_json::Value;

use crate::error::Error;

/// Where the plugin configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    /// The plugin configuration itself, as given to `render` or to a filter.
    PluginConfig,
    /// The `configuration` of the keyward Wasm HTTP filter in an Envoy bootstrap.
    EnvoyBootstrap,
    /// `spec.pluginConfig` of a `WasmPlugin`.
    WasmPlugin,
}

impl Artifact {
    pub fn name(self) -> &'static str {
        match self {
            Artifact::PluginConfig => "plugin configuration",
            Artifact::EnvoyBootstrap => "Envoy bootstrap",
            Artifact::WasmPlugin => "WasmPlugin",
        }
    }
}

const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

fn invalid(message: impl Into<String>) -> Error {
    Error::invalid("invalid_plugin_config", message.into())
}

/// The plugin configuration (JSON bytes) inside `bytes`, and what held it.
pub fn plugin_config(bytes: &[u8]) -> Result<(Vec<u8>, Artifact), Error> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_slice(bytes) {
        let value = <Value as serde::Deserialize>::deserialize(document)
            .map_err(|error| invalid(format!("--config: neither JSON nor YAML: {error}")))?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    if let Some(plugin) = documents.iter().find(|doc| doc["kind"] == "WasmPlugin") {
        let config = plugin["spec"]
            .get("pluginConfig")
            .ok_or_else(|| invalid("--config: the WasmPlugin has no spec.pluginConfig"))?;
        return Ok((serde_json::to_vec(config)?, Artifact::WasmPlugin));
    }
    let [document] = documents.as_slice() else {
        return Err(invalid(
            "--config: several documents and no WasmPlugin among them",
        ));
    };
    let is_bootstrap = ["static_resources", "bootstrap_extensions", "admin"]
        .iter()
        .any(|field| document.get(field).is_some());
    if !is_bootstrap {
        return Ok((serde_json::to_vec(document)?, Artifact::PluginConfig));
    }
    let mut found = Vec::new();
    filter_configurations(document, &mut found);
    let Some(text) = found.into_iter().next() else {
        return Err(invalid(
            "--config: this Envoy bootstrap has no keyward Wasm HTTP filter (envoy.extensions.filters.http.wasm.v3.Wasm with a StringValue configuration)",
        ));
    };
    Ok((text.into_bytes(), Artifact::EnvoyBootstrap))
}

/// The `configuration` strings of every Wasm HTTP filter in `value`, in document order. The
/// policy-sync singleton is a bootstrap extension of another type, so it is not among them.
fn filter_configurations(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            if fields.get("@type").and_then(Value::as_str) == Some(WASM_FILTER_TYPE) {
                let text = fields
                    .get("config")
                    .and_then(|config| config.get("configuration"))
                    .and_then(|configuration| configuration.get("value"))
                    .and_then(Value::as_str);
                if let Some(text) = text {
                    found.push(text.to_owned());
                }
                return;
            }
            fields
                .values()
                .for_each(|field| filter_configurations(field, found));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| filter_configurations(item, found)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_plugin_configuration_in_each_artifact() {
        let bare = br#"{"routes": []}"#;
        assert_eq!(plugin_config(bare).unwrap().1, Artifact::PluginConfig);
        let yaml_bootstrap = br#"
admin: {address: {socket_address: {address: 127.0.0.1, port_value: 9901}}}
static_resources:
  listeners:
  - filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          http_filters:
          - name: keyward
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{"mode": "shadow"}'
"#;
        let (config, artifact) = plugin_config(yaml_bootstrap).unwrap();
        assert_eq!(artifact, Artifact::EnvoyBootstrap);
        assert_eq!(config, br#"{"mode": "shadow"}"#);
        let stream = b"---\n{\"kind\": \"WasmPlugin\", \"spec\": {\"pluginConfig\": {\"mode\": \"enforce\"}}}\n---\n{\"kind\": \"ServiceEntry\"}\n";
        let (config, artifact) = plugin_config(stream).unwrap();
        assert_eq!(artifact, Artifact::WasmPlugin);
        assert_eq!(config, br#"{"mode":"enforce"}"#);
        assert!(
            plugin_config(b"admin: {}\n").is_err(),
            "a bootstrap without keyward"
        );
    }
}
