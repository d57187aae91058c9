//! `keyward render envoy`: a ready Envoy bootstrap with the keyward filter, the control-plane
//! cluster and an upstream cluster. The output is JSON, which Envoy reads as YAML too. Two builds
//! of the filter: the Wasm build, with the policy sync as a bootstrap singleton (same `vm_id`, so
//! both share Envoy's shared data), or the native build (an Envoy dynamic module), whose filter
//! configuration syncs itself once per process.
//!
//! `keyward render istio`: a `WasmPlugin` (the filter, with a lease-mode policy sync, since Istio
//! installs only HTTP filters) and a `ServiceEntry` for the control plane, as JSON documents
//! separated by `---` (a multi-document YAML stream that `kubectl apply -f` reads).

use std::net::IpAddr;
use std::path::Path;

use keyward_engine::signature::PublicKey;
use serde_json::{json, Value};

use crate::error::Error;
use crate::last_good;
use crate::upstream_tls::Tls;

mod envoy;
mod istio;
mod oci;
#[cfg(test)]
mod tests;

pub use envoy::*;
pub use istio::*;
pub use oci::*;

pub const CONTROL_PLANE_CLUSTER: &str = "keyward_control_plane";
pub const CONTROL_PLANE_AUTHORITY: &str = "keyward-control-plane";
pub const UPSTREAM_CLUSTER: &str = "upstream";
pub const VM_ID: &str = "keyward";
const WASM_RUNTIME: &str = "envoy.wasm.runtime.v8";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";
const CONNECTION_MANAGER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
/// Envoy's buffer over keyward's body limit: one more chunk fits before Envoy's own 413.
const BUFFER_HEADROOM: usize = 256 * 1024;

/// Envoy's own request hardening, set on every connection manager keyward renders: paths are
/// normalized (RFC 3986), slashes merged, escaped slashes and header names with underscores
/// refused. keyward holds without them (it decides on its own canonical view and refuses
/// ambiguous spellings); with them, such requests never reach any filter or upstream.
fn hardening_fields() -> Value {
    json!({
        "normalize_path": true,
        "merge_slashes": true,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"}
    })
}

fn plugin_fields_case_insensitive(plugin_config: &Value) -> bool {
    plugin_config
        .get("case_insensitive_paths")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn hardened_connection_manager(mut manager: Value) -> Value {
    if let (Some(fields), Value::Object(hardening)) = (manager.as_object_mut(), hardening_fields())
    {
        fields.extend(hardening);
    }
    manager
}

/// A `host:port` (or `[v6]:port`) split in two.
#[derive(Debug, PartialEq, Eq)]
struct HostPort {
    host: String,
    port: u16,
}

impl HostPort {
    fn parse(field: &str, text: &str) -> Result<HostPort, Error> {
        let bad = || {
            Error::invalid(
                "invalid_address",
                format!("--{field}: {text:?} is not HOST:PORT"),
            )
        };
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            (host, after.strip_prefix(':').ok_or_else(bad)?)
        } else {
            text.rsplit_once(':').ok_or_else(bad)?
        };
        let valid_host = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
        if !valid_host {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_owned(),
            port: port.parse().map_err(|_| bad())?,
        })
    }

    fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    fn socket_address(&self) -> Value {
        json!({"socket_address": {"address": self.host, "port_value": self.port}})
    }
}

/// Listener and admin addresses must be IP literals for Envoy.
fn ip_address(field: &str, text: &str) -> Result<HostPort, Error> {
    let address = HostPort::parse(field, text)?;
    if !address.is_ip() {
        return Err(Error::invalid(
            "invalid_address",
            format!(
                "--{field}: Envoy binds to IP addresses; {:?} is not one",
                address.host
            ),
        ));
    }
    Ok(address)
}

/// A `HOST:PORT`, `http://HOST:PORT` or `https://HOST:PORT` address; https means TLS.
pub fn split_scheme(address: &str) -> (&str, bool) {
    if let Some(rest) = address.strip_prefix("https://") {
        (rest.trim_end_matches('/'), true)
    } else {
        (
            address
                .strip_prefix("http://")
                .unwrap_or(address)
                .trim_end_matches('/'),
            false,
        )
    }
}

/// What the filters trust and present: the control plane's public keys (never a key that can
/// sign) and the data-plane token.
fn add_credentials(sync: &mut Value, public_keys: &[PublicKey], token: Option<&str>) {
    let Some(fields) = sync.as_object_mut() else {
        return;
    };
    let keys: Vec<Value> = public_keys
        .iter()
        .map(|key| json!({"id": key.id, "public_key_base64": key.to_base64()}))
        .collect();
    fields.insert("public_keys".into(), Value::Array(keys));
    if let Some(token) = token {
        fields.insert("token".into(), json!(token));
    }
}

/// The chunked layout (a signed manifest and content-addressed chunks, for large key counts)
/// uses the filter's default paths, which `keyward serve` serves.
fn with_layout(sync: &mut Value, chunked: bool) {
    if let (true, Some(fields)) = (chunked, sync.as_object_mut()) {
        fields.remove("path");
        fields.insert("layout".into(), Value::String("chunked".into()));
    }
}

fn string_value(document: &Value) -> Value {
    json!({"@type": STRING_VALUE, "value": document.to_string()})
}
