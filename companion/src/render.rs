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

/// Which build of the filter Envoy runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterBuild {
    /// The proxy-wasm module, at this path as Envoy sees it.
    Wasm(String),
    /// The dynamic module `lib<name>.so`, which Envoy looks up in the directories of
    /// `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
    Native(String),
}

/// The name under which the native build is installed (`libkeyward.so`) by default.
pub const NATIVE_MODULE_NAME: &str = "keyward";
const DYNAMIC_MODULE_FILTER_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter";

pub struct EnvoyOptions {
    /// Sync in the chunked layout (large key counts, see docs/scale.md).
    pub chunked: bool,
    pub build: FilterBuild,
    pub control_plane: String,
    pub control_plane_tls: Tls,
    /// The control plane's public keys the filters trust (several while keys rotate).
    pub public_keys: Vec<PublicKey>,
    /// The data-plane token the filters send (it reads snapshots and reports usage, no more).
    pub dataplane_token: Option<String>,
    pub listen: String,
    pub admin: String,
    pub upstream: String,
    pub upstream_tls: Tls,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Named Envoy routes placed before the catch-all `default` route: `(name, path prefix)`.
    /// Plugin routes match them through `match.route_name`.
    pub routes: Vec<(String, String)>,
    /// Envoy route names on which the filter is switched off (`FilterConfig{disabled: true}`).
    pub disabled_on: Vec<String>,
    /// The rest of the plugin configuration (routes, mode, formats...); `sync` is set here.
    pub plugin_config: Option<Value>,
    /// The last-known-good snapshot file, as Envoy sees it (see [`crate::last_good`]).
    pub last_good_file: Option<String>,
    /// The loopback address Envoy serves that file to itself on.
    pub last_good_listen: String,
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

/// A cluster of one endpoint: STATIC for an IP, STRICT_DNS for a host name; with the TLS
/// `tls` asks for (verified unless told otherwise).
fn cluster(name: &str, address: &HostPort, tls: &Tls) -> Value {
    let mut cluster = json!({
        "name": name,
        "type": if address.is_ip() { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address.socket_address()}}]}]
        }
    });
    let Some(fields) = cluster.as_object_mut() else {
        return cluster;
    };
    if !address.is_ip() {
        // `localhost` and dual-stack names: try IPv4 first, as most control planes and
        // providers listen there (Envoy's default, AUTO, tries IPv6 first).
        fields.insert("dns_lookup_family".into(), json!("V4_PREFERRED"));
    }
    if let Some(socket) = tls.envoy_transport_socket(&address.host) {
        fields.insert("transport_socket".into(), socket);
    }
    cluster
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

/// The `sync` block shared by the filter and the sync service. The native build has no sync
/// service: the filter configurations of one Envoy process elect one poller among themselves
/// (the lease, in process memory), so one poll and one usage report per Envoy.
fn sync_block(options: &EnvoyOptions) -> Value {
    let poller = match options.build {
        FilterBuild::Wasm(_) => "sync_service",
        FilterBuild::Native(_) => "lease",
    };
    let mut sync = json!({
        "cluster": CONTROL_PLANE_CLUSTER,
        "authority": CONTROL_PLANE_AUTHORITY,
        "path": "/v1/snapshot",
        "interval_ms": options.interval_ms,
        "timeout_ms": options.timeout_ms,
        "poller": poller
    });
    add_credentials(
        &mut sync,
        &options.public_keys,
        options.dataplane_token.as_deref(),
    );
    with_layout(&mut sync, options.chunked);
    if let (Some(_), Some(fields)) = (&options.last_good_file, sync.as_object_mut()) {
        fields.insert("last_good".into(), last_good::sync_source());
    }
    sync
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

/// The VM reads the fleet's private key (for provider keys) from Envoy's own environment by
/// name: `/config_dump` shows the name, never the value (a `key_values` entry would show it).
fn vm_config(wasm: &str) -> Value {
    json!({
        "vm_id": VM_ID,
        "runtime": WASM_RUNTIME,
        "code": {"local": {"filename": wasm}},
        "environment_variables": {
            "host_env_keys": [keyward_engine::provider_keys::FLEET_PRIVATE_KEY_ENV]
        }
    })
}

/// The Envoy bootstrap, as a JSON value.
pub fn envoy_bootstrap(options: &EnvoyOptions) -> Result<Value, Error> {
    let listen = ip_address("listen", &options.listen)?;
    let admin = ip_address("admin", &options.admin)?;
    let control_plane = HostPort::parse("control-plane", split_scheme(&options.control_plane).0)?;
    let upstream = HostPort::parse("upstream", split_scheme(&options.upstream).0)?;
    if options.chunked && options.last_good_file.is_some() {
        return Err(Error::invalid(
            "invalid_last_good",
            "--last-good-file works with the envelope layout only, not --chunked-sync: a \
             manifest and its chunks are not one file",
        ));
    }
    let sync = sync_block(options);

    let mut route = json!({"cluster": UPSTREAM_CLUSTER, "timeout": "300s"});
    let upstream_cluster = cluster(UPSTREAM_CLUSTER, &upstream, &options.upstream_tls);
    if options.upstream_tls.is_tls() {
        if let Some(route) = route.as_object_mut() {
            route.insert("host_rewrite_literal".into(), json!(upstream.host));
        }
    }

    let mut plugin_config = options.plugin_config.clone().unwrap_or_else(|| json!({}));
    let Some(plugin_fields) = plugin_config.as_object_mut() else {
        return Err(Error::invalid(
            "invalid_plugin_config",
            "--plugin-config: must be a JSON object",
        ));
    };
    if plugin_fields.contains_key("sync") || plugin_fields.contains_key("role") {
        return Err(Error::invalid(
            "invalid_plugin_config",
            "--plugin-config: must not set sync or role: render envoy writes them",
        ));
    }
    plugin_fields.insert("sync".into(), sync.clone());
    let plugin_text = serde_json::to_string(&plugin_config)
        .map_err(|e| Error::invalid("invalid_plugin_config", format!("--plugin-config: {e}")))?;
    // Envoy picks the route whose name keyward matches on: it must fold case as keyward does.
    let case_sensitive = !plugin_fields_case_insensitive(&plugin_config);
    let mut envoy_routes = Vec::new();
    for (name, prefix) in &options.routes {
        if name.is_empty() || name == "default" || !prefix.starts_with('/') {
            return Err(Error::invalid(
                "invalid_route",
                format!("--route {name}={prefix}: needs a name other than default and a path prefix starting with /"),
            ));
        }
        if options
            .routes
            .iter()
            .filter(|(other, _)| other == name)
            .count()
            > 1
        {
            return Err(Error::invalid(
                "invalid_route",
                format!("--route {name}: named twice"),
            ));
        }
        envoy_routes.push(json!({
            "name": name,
            "match": {"prefix": prefix, "case_sensitive": case_sensitive},
            "route": route.clone()
        }));
    }
    envoy_routes.push(json!({"name": "default", "match": {"prefix": "/"}, "route": route}));
    for name in &options.disabled_on {
        let Some(target) = envoy_routes
            .iter_mut()
            .find(|candidate| candidate["name"] == json!(name))
        else {
            return Err(Error::invalid(
                "invalid_route",
                format!("--disable-on {name}: no route of that name"),
            ));
        };
        if let Some(fields) = target.as_object_mut() {
            fields.insert(
                "typed_per_filter_config".into(),
                json!({"keyward": {
                    "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
                    "disabled": true
                }}),
            );
        }
    }

    let (filter, bootstrap_extensions) = match &options.build {
        FilterBuild::Wasm(wasm) => (
            json!({
                "name": "keyward",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "keyward",
                        "root_id": "keyward",
                        // Lets a pause in the request headers hold them back while a metered
                        // route's body is read (metering.hold_headers); Envoy 1.35+.
                        "allow_on_headers_stop_iteration": true,
                        "vm_config": vm_config(wasm),
                        "configuration": {"@type": STRING_VALUE, "value": plugin_text}
                    }
                }
            }),
            vec![json!({
                "name": "envoy.bootstrap.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                    "singleton": true,
                    "config": {
                        "name": "keyward_sync",
                        "root_id": "keyward_sync",
                        "vm_config": vm_config(wasm),
                        "configuration": string_value(&json!({"role": "sync_service", "sync": sync}))
                    }
                }
            })],
        ),
        // A dynamic module holds the headers while it reads the body without any option.
        FilterBuild::Native(module) => (
            json!({
                "name": "keyward",
                "typed_config": {
                    "@type": DYNAMIC_MODULE_FILTER_TYPE,
                    "dynamic_module_config": {"name": module},
                    "filter_name": "keyward",
                    "filter_config": {"@type": STRING_VALUE, "value": plugin_text}
                }
            }),
            Vec::new(),
        ),
    };
    let parsed = keyward_engine::config::PluginConfig::from_json(plugin_text.as_bytes())
        .map_err(|e| Error::invalid("invalid_plugin_config", format!("--plugin-config: {e}")))?;
    let buffer_limit = parsed
        .settings
        .metering
        .max_request_body_bytes
        .saturating_add(BUFFER_HEADROOM);
    let mut listeners = vec![json!({
        "name": "keyward",
        "address": listen.socket_address(),
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": hardened_connection_manager(json!({
                    "@type": CONNECTION_MANAGER_TYPE,
                    "stat_prefix": "keyward",
                    "route_config": {
                        "name": "keyward",
                        "virtual_hosts": [{
                            "name": "upstream",
                            "domains": ["*"],
                            "routes": envoy_routes
                        }]
                    },
                    "http_filters": [
                        filter,
                        {
                            "name": "envoy.filters.http.router",
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                            }
                        }
                    ]
                }))
            }]
        }],
        // Room for a body keyward reads whole, so that keyward, not Envoy's buffer
        // limit, answers one that is too large (with its JSON error).
        "per_connection_buffer_limit_bytes": buffer_limit
    })];
    let mut clusters = vec![
        cluster(
            CONTROL_PLANE_CLUSTER,
            &control_plane,
            &options.control_plane_tls,
        ),
        upstream_cluster,
    ];
    if let Some(file) = &options.last_good_file {
        if !file.starts_with('/') {
            return Err(Error::invalid(
                "invalid_last_good",
                format!("--last-good-file {file:?}: give an absolute path, as Envoy sees it"),
            ));
        }
        let address = ip_address("last-good-listen", &options.last_good_listen)?;
        let loopback = address
            .host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err(Error::invalid(
                "invalid_address",
                "--last-good-listen: must be a loopback address (the file is for this Envoy only)",
            ));
        }
        listeners.push(last_good::listener(
            file,
            address.socket_address(),
            options.dataplane_token.as_deref(),
            CONNECTION_MANAGER_TYPE,
        ));
        clusters.push(last_good::cluster(address.socket_address()));
    }
    Ok(json!({
        "admin": {"address": admin.socket_address()},
        "bootstrap_extensions": bootstrap_extensions,
        "static_resources": {"listeners": listeners, "clusters": clusters}
    }))
}

pub const ISTIO_SNAPSHOT_PATH: &str = "/v1/snapshot";

/// Where the `WasmPlugin` applies: workloads by label, or a Gateway (or Service) by reference.
pub enum IstioTarget {
    /// `spec.selector.matchLabels`; empty means every workload of the namespace.
    Selector(Vec<(String, String)>),
    /// `spec.targetRefs`: one `{group, kind, name}`.
    TargetRef { kind: String, name: String },
}

pub struct IstioOptions {
    /// Sync in the chunked layout (large key counts, see docs/scale.md).
    pub chunked: bool,
    pub name: String,
    pub namespace: Option<String>,
    /// `oci://…`, `file://…`, `http(s)://…`: where istio-agent fetches the module.
    pub wasm_url: String,
    /// `spec.sha256`, 64 lower-case hex: see [`wasm_plugin_sha256`].
    pub sha256: String,
    pub control_plane: String,
    /// TLS to the control plane, originated by the sidecar (a `DestinationRule`).
    pub control_plane_tls: Tls,
    pub public_keys: Vec<PublicKey>,
    pub dataplane_token: Option<String>,
    pub target: IstioTarget,
    /// `spec.match[].mode`: `CLIENT`, `SERVER` or `CLIENT_AND_SERVER`.
    pub match_mode: Option<String>,
    /// A keyward plugin configuration (routes, mode, …) to which the `sync` block is added.
    pub base_config: Option<Value>,
    pub service_entry: bool,
    /// An `EnvoyFilter` with Envoy's own request hardening for the same workloads.
    pub hardening: bool,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

const WASM_URL_SCHEMES: [&str; 4] = ["oci://", "file://", "http://", "https://"];
/// The *oci* variant of the Wasm Artifact Image Specification, which istio-agent reads: two
/// layers, the runtime configuration and the raw module (written by `scripts/oci.py`).
pub const OCI_WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
pub const OCI_RUNTIME_CONFIG_LAYER: &str = "application/vnd.module.wasm.config.v1+json";

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(keyward_engine::hash::sha256(bytes))
}

fn layout_error(dir: &Path, message: impl std::fmt::Display) -> Error {
    Error::invalid(
        "invalid_oci_layout",
        format!("--oci-layout {}: {message}", dir.display()),
    )
}

/// `"sha256:HEX"` in a descriptor, as lower-case HEX.
fn descriptor_digest(descriptor: &Value) -> Option<String> {
    let hex = descriptor
        .get("digest")?
        .as_str()?
        .strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

fn media_type(descriptor: &Value) -> Option<&str> {
    descriptor.get("mediaType")?.as_str()
}

/// The digests (hex) of the one manifest in an OCI image layout written by `make oci`, and of
/// its Wasm layer. The manifest blob is checked against its digest.
pub fn oci_layout_digests(dir: &Path) -> Result<(String, String), Error> {
    let read_json = |path: &Path| -> Result<(Vec<u8>, Value), Error> {
        let bytes = std::fs::read(path).map_err(|error| layout_error(dir, error))?;
        let value = serde_json::from_slice(&bytes).map_err(|error| layout_error(dir, error))?;
        Ok((bytes, value))
    };
    let (_, index) = read_json(&dir.join("index.json"))?;
    let manifests = index.get("manifests").and_then(Value::as_array);
    let Some([entry]) = manifests.map(Vec::as_slice) else {
        return Err(layout_error(
            dir,
            "index.json must list exactly one manifest",
        ));
    };
    let digest = descriptor_digest(entry)
        .ok_or_else(|| layout_error(dir, "the manifest digest is not sha256:HEX"))?;
    let (bytes, manifest) = read_json(&dir.join("blobs").join("sha256").join(&digest))?;
    if hex_sha256(&bytes) != digest {
        return Err(layout_error(
            dir,
            "the manifest blob does not match its digest",
        ));
    }
    let layers = manifest.get("layers").and_then(Value::as_array);
    let Some([first, second]) = layers.map(Vec::as_slice) else {
        return Err(layout_error(
            dir,
            "Istio needs exactly two layers (runtime config, module)",
        ));
    };
    if media_type(first) != Some(OCI_RUNTIME_CONFIG_LAYER)
        || media_type(second) != Some(OCI_WASM_LAYER)
    {
        return Err(layout_error(
            dir,
            format!("the layers must be {OCI_RUNTIME_CONFIG_LAYER} and {OCI_WASM_LAYER}"),
        ));
    }
    let layer = descriptor_digest(second)
        .ok_or_else(|| layout_error(dir, "the Wasm layer digest is not sha256:HEX"))?;
    Ok((digest, layer))
}

/// The WasmPlugin's `sha256`: what istio-agent compares. For an `oci://` URL that is the
/// digest of the image *manifest* (from the layout `make oci` wrote, which `oras cp` pushes
/// unchanged); for `file://` and `http(s)://`, the module's own SHA-256.
pub fn wasm_plugin_sha256(
    wasm_url: &str,
    wasm: Option<&[u8]>,
    oci_layout: Option<&Path>,
) -> Result<String, Error> {
    if wasm_url.starts_with("oci://") {
        let dir = oci_layout.ok_or_else(|| {
            Error::invalid(
                "missing_oci_layout",
                "--wasm-url oci://…: pass --oci-layout target/oci (from `make oci`): for OCI \
                 images Istio checks the manifest digest, not the module's",
            )
        })?;
        let (manifest, layer) = oci_layout_digests(dir)?;
        if let Some(wasm) = wasm {
            if hex_sha256(wasm) != layer {
                return Err(layout_error(
                    dir,
                    "its Wasm layer is not --wasm-file (stale layout? run `make oci`)",
                ));
            }
        }
        return Ok(manifest);
    }
    if oci_layout.is_some() {
        return Err(Error::invalid(
            "invalid_oci_layout",
            "--oci-layout goes with an oci:// --wasm-url",
        ));
    }
    let wasm = wasm.ok_or_else(|| {
        Error::invalid(
            "missing_wasm_file",
            "--wasm-file is needed to compute the module's sha256",
        )
    })?;
    Ok(hex_sha256(wasm))
}
const MATCH_MODES: [&str; 3] = ["CLIENT", "SERVER", "CLIENT_AND_SERVER"];

/// Istio names the outbound cluster of a service `outbound|PORT||HOST` (no subset).
pub fn istio_outbound_cluster(host: &str, port: u16) -> String {
    format!("outbound|{port}||{host}")
}

fn metadata(name: &str, namespace: Option<&str>) -> Value {
    let mut metadata = json!({"name": name, "labels": {"app.kubernetes.io/part-of": "keyward"}});
    if let (Some(namespace), Some(object)) = (namespace, metadata.as_object_mut()) {
        object.insert("namespace".into(), json!(namespace));
    }
    metadata
}

/// A Kubernetes object name: DNS-1123 label (lower case, digits, `-`), at most 63 characters.
fn check_k8s_name(field: &str, text: &str) -> Result<(), Error> {
    let valid = !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(Error::invalid(
            "invalid_name",
            format!("--{field}: {text:?} is not a Kubernetes name (a-z, 0-9, '-', at most 63)"),
        ))
    }
}

/// The `pluginConfig`: the base configuration plus a lease-mode `sync` to the control plane.
fn istio_plugin_config(options: &IstioOptions, control_plane: &HostPort) -> Result<Value, Error> {
    let mut config = options.base_config.clone().unwrap_or_else(|| json!({}));
    let object = config.as_object_mut().ok_or_else(|| {
        Error::invalid(
            "invalid_plugin_config",
            "--plugin-config: the keyward configuration must be a JSON object",
        )
    })?;
    for field in ["sync", "role"] {
        if object.contains_key(field) {
            return Err(Error::invalid(
                "invalid_plugin_config",
                format!("--plugin-config: `{field}` is set by render istio; remove it"),
            ));
        }
    }
    // A WasmPlugin cannot set Envoy's allow_on_headers_stop_iteration, without which holding
    // the headers would also stop the body: metered routes let the headers go first.
    let metering = object.entry("metering").or_insert_with(|| json!({}));
    if let Some(metering) = metering.as_object_mut() {
        metering.entry("hold_headers").or_insert(Value::Bool(false));
    }
    let mut sync = json!({
        "cluster": istio_outbound_cluster(&control_plane.host, control_plane.port),
        "authority": control_plane.host,
        "path": ISTIO_SNAPSHOT_PATH,
        "interval_ms": options.interval_ms,
        "timeout_ms": options.timeout_ms,
        "poller": "lease"
    });
    add_credentials(
        &mut sync,
        &options.public_keys,
        options.dataplane_token.as_deref(),
    );
    with_layout(&mut sync, options.chunked);
    object.insert("sync".into(), sync);
    // The filter would refuse it in on_configure: refuse it here, with the same field path.
    keyward_engine::config::PluginConfig::from_json(config.to_string().as_bytes()).map_err(
        |error| {
            Error::invalid(
                "invalid_plugin_config",
                format!("plugin configuration: {error}"),
            )
        },
    )?;
    Ok(config)
}

/// The Istio resources: the `WasmPlugin`, then (unless disabled) the control plane's
/// `ServiceEntry`.
pub fn istio_resources(options: &IstioOptions) -> Result<Vec<Value>, Error> {
    check_k8s_name("name", &options.name)?;
    if let Some(namespace) = &options.namespace {
        check_k8s_name("namespace", namespace)?;
    }
    if !WASM_URL_SCHEMES
        .iter()
        .any(|scheme| options.wasm_url.starts_with(scheme))
    {
        return Err(Error::invalid(
            "invalid_wasm_url",
            format!(
                "--wasm-url: {:?} must start with one of {}",
                options.wasm_url,
                WASM_URL_SCHEMES.join(", ")
            ),
        ));
    }
    let control_plane = HostPort::parse("control-plane", split_scheme(&options.control_plane).0)?;
    if control_plane.is_ip() {
        return Err(Error::invalid(
            "invalid_address",
            "--control-plane: Istio needs a host name here (a Kubernetes Service or a DNS \
             name), since the sync reaches it through the cluster outbound|PORT||HOST",
        ));
    }
    if let Some(mode) = &options.match_mode {
        if !MATCH_MODES.contains(&mode.as_str()) {
            return Err(Error::invalid(
                "invalid_match_mode",
                format!(
                    "--match-mode: {mode:?} is not one of {}",
                    MATCH_MODES.join(", ")
                ),
            ));
        }
    }
    let namespace = options.namespace.as_deref();

    let mut spec = serde_json::Map::new();
    spec.insert("url".into(), json!(options.wasm_url));
    spec.insert("sha256".into(), json!(options.sha256));
    spec.insert("phase".into(), json!("AUTHN"));
    spec.insert("failStrategy".into(), json!("FAIL_CLOSE"));
    // The fleet's private key (provider keys) comes from the istio-proxy container's own
    // environment, by name: the WasmPlugin never holds it (docs/deploy-istio.md).
    spec.insert(
        "vmConfig".into(),
        json!({"env": [{
            "name": keyward_engine::provider_keys::FLEET_PRIVATE_KEY_ENV,
            "valueFrom": "HOST"
        }]}),
    );
    spec.insert("type".into(), json!("HTTP"));
    spec.insert("pluginName".into(), json!("keyward"));
    match &options.target {
        IstioTarget::Selector(labels) if labels.is_empty() => {}
        IstioTarget::Selector(labels) => {
            let labels: serde_json::Map<String, Value> = labels
                .iter()
                .map(|(key, value)| (key.clone(), json!(value)))
                .collect();
            spec.insert("selector".into(), json!({ "matchLabels": labels }));
        }
        IstioTarget::TargetRef { kind, name } => {
            let group = if kind == "Gateway" {
                "gateway.networking.k8s.io"
            } else {
                ""
            };
            spec.insert(
                "targetRefs".into(),
                json!([{"group": group, "kind": kind, "name": name}]),
            );
        }
    }
    if let Some(mode) = &options.match_mode {
        spec.insert("match".into(), json!([{ "mode": mode }]));
    }
    spec.insert(
        "pluginConfig".into(),
        istio_plugin_config(options, &control_plane)?,
    );

    let hardening_target = spec
        .get("selector")
        .map(|selector| {
            (
                "workloadSelector",
                json!({"labels": selector["matchLabels"]}),
            )
        })
        .or_else(|| {
            spec.get("targetRefs")
                .map(|refs| ("targetRefs", refs.clone()))
        });
    let mut resources = vec![json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": metadata(&options.name, namespace),
        "spec": spec
    })];
    if options.hardening {
        let mut hardening = json!({
            "configPatches": [{
                "applyTo": "NETWORK_FILTER",
                "match": {"listener": {"filterChain": {"filter": {
                    "name": "envoy.filters.network.http_connection_manager"
                }}}},
                "patch": {
                    "operation": "MERGE",
                    "value": {"typed_config": hardened_connection_manager(
                        json!({"@type": CONNECTION_MANAGER_TYPE})
                    )}
                }
            }]
        });
        if let (Some((field, value)), Some(fields)) = (hardening_target, hardening.as_object_mut())
        {
            fields.insert(field.into(), value);
        }
        resources.push(json!({
            "apiVersion": "networking.istio.io/v1alpha3",
            "kind": "EnvoyFilter",
            "metadata": metadata(&format!("{}-hardening", options.name), namespace),
            "spec": hardening
        }));
    }
    if let Some(tls) = options
        .control_plane_tls
        .istio_client_tls(&control_plane.host)
    {
        // The filter calls outbound|PORT||HOST in plain HTTP; the sidecar originates TLS to the
        // control plane and verifies its certificate.
        resources.push(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "DestinationRule",
            "metadata": metadata(&format!("{}-control-plane", options.name), namespace),
            "spec": {
                "host": control_plane.host,
                "trafficPolicy": {"portLevelSettings": [{
                    "port": {"number": control_plane.port},
                    "tls": tls
                }]}
            }
        }));
    }
    if options.service_entry {
        resources.push(json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": metadata(&format!("{}-control-plane", options.name), namespace),
            "spec": {
                "hosts": [control_plane.host],
                "location": "MESH_EXTERNAL",
                "ports": [{"number": control_plane.port, "name": "http-keyward", "protocol": "HTTP"}],
                "resolution": "DNS"
            }
        }));
    }
    Ok(resources)
}

/// `--selector app=x,tier=y` as label pairs.
pub fn parse_selector(text: &str) -> Result<Vec<(String, String)>, Error> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                Error::invalid(
                    "invalid_selector",
                    format!("--selector: {part:?} is not LABEL=VALUE"),
                )
            })?;
            if key.is_empty() {
                return Err(Error::invalid(
                    "invalid_selector",
                    format!("--selector: {part:?} has an empty label"),
                ));
            }
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The documents as a YAML stream: each one JSON (which YAML reads), separated by `---`.
pub fn yaml_stream(documents: &[Value]) -> Result<String, Error> {
    let mut out = String::new();
    for document in documents {
        out.push_str("---\n");
        out.push_str(&serde_json::to_string_pretty(document)?);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream_tls::SYSTEM_CA_BUNDLE;
    use keyward_engine::config::{PluginConfig, Role};
    use keyward_engine::signature::SigningKey;
    use keyward_engine::sync::Poller;

    fn public_key() -> PublicKey {
        SigningKey::from_seed("ops-1", &[8; 32])
            .unwrap()
            .public_key()
    }

    fn options() -> EnvoyOptions {
        EnvoyOptions {
            build: FilterBuild::Wasm("/opt/keyward.wasm".into()),
            control_plane: "127.0.0.1:7070".into(),
            control_plane_tls: Tls::Plaintext,
            public_keys: vec![public_key()],
            dataplane_token: Some("kwdp_render_test".into()),
            listen: "127.0.0.1:10000".into(),
            admin: "127.0.0.1:9901".into(),
            upstream: "api.example.com:443".into(),
            upstream_tls: Tls::Verified {
                ca_file: SYSTEM_CA_BUNDLE.into(),
            },
            interval_ms: 1000,
            chunked: false,
            timeout_ms: 2000,
            routes: vec![],
            disabled_on: vec![],
            plugin_config: None,
            last_good_file: None,
            last_good_listen: "127.0.0.1:9902".into(),
        }
    }

    #[test]
    fn routes_off_switches_and_plugin_config_are_rendered_and_checked() {
        let mut with_routes = options();
        with_routes.routes = vec![
            ("chat".into(), "/v1/chat/".into()),
            ("health".into(), "/healthz".into()),
        ];
        with_routes.disabled_on = vec!["health".into()];
        with_routes.plugin_config = Some(
            json!({"routes": [{"name": "chat", "match": {"route_name": "chat"}, "scopes": ["chat:write"]}]}),
        );
        let bootstrap = envoy_bootstrap(&with_routes).unwrap();
        let hcm = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap();
        let names: Vec<&str> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["chat", "health", "default"]);
        assert_eq!(
            routes[1]["typed_per_filter_config"]["keyward"]["disabled"],
            true
        );
        assert!(routes[0].get("typed_per_filter_config").is_none());
        assert_eq!(hcm["normalize_path"], true);
        assert_eq!(hcm["merge_slashes"], true);
        assert_eq!(hcm["path_with_escaped_slashes_action"], "REJECT_REQUEST");
        assert_eq!(
            hcm["common_http_protocol_options"]["headers_with_underscores_action"],
            "REJECT_REQUEST"
        );
        assert_eq!(
            bootstrap["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"],
            (1 << 20) + BUFFER_HEADROOM
        );
        let text = hcm["http_filters"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap();
        let config = PluginConfig::from_json(text.as_bytes()).unwrap();
        assert_eq!(config.settings.routes.len(), 1);
        assert!(config.sync.is_some());

        let mut unknown = options();
        unknown.disabled_on = vec!["nope".into()];
        assert!(envoy_bootstrap(&unknown).is_err());
        let mut twice = options();
        twice.routes = vec![("a".into(), "/a".into()), ("a".into(), "/b".into())];
        assert!(envoy_bootstrap(&twice).is_err());
        let mut sync_given = options();
        sync_given.plugin_config = Some(json!({"sync": {}}));
        assert!(envoy_bootstrap(&sync_given).is_err());
        let mut invalid = options();
        invalid.plugin_config =
            Some(json!({"routes": [{"name": "r", "match": {"path_prefix": "x"}}]}));
        assert!(envoy_bootstrap(&invalid).is_err());
    }

    #[test]
    fn a_last_good_file_is_served_on_loopback_to_the_token_only() {
        let mut with_file = options();
        with_file.last_good_file = Some("/var/lib/keyward/last-good.json".into());
        let bootstrap = envoy_bootstrap(&with_file).unwrap();
        let listener = &bootstrap["static_resources"]["listeners"][1];
        assert_eq!(
            listener["address"]["socket_address"]["address"],
            "127.0.0.1"
        );
        let routes = &listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
            ["virtual_hosts"][0]["routes"];
        assert_eq!(
            routes[0]["match"]["headers"][0]["string_match"]["exact"],
            "Bearer kwdp_render_test"
        );
        assert_eq!(
            routes[0]["direct_response"]["body"]["filename"],
            "/var/lib/keyward/last-good.json"
        );
        assert_eq!(routes[1]["direct_response"]["status"], 404);
        let clusters = bootstrap["static_resources"]["clusters"]
            .as_array()
            .unwrap();
        assert!(clusters.iter().any(|c| c["name"] == "keyward_last_good"));
        let text = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"]["http_filters"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap();
        let config = PluginConfig::from_json(text.as_bytes()).unwrap();
        let sync = config.sync.expect("sync");
        assert_eq!(sync.last_good.unwrap().cluster, "keyward_last_good");
        // Without the option, nothing of it is rendered.
        let plain = envoy_bootstrap(&options()).unwrap();
        assert_eq!(
            plain["static_resources"]["listeners"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        let mut relative = options();
        relative.last_good_file = Some("last-good.json".into());
        let mut public = options();
        public.last_good_file = Some("/f.json".into());
        public.last_good_listen = "0.0.0.0:9902".into();
        let mut chunked = options();
        chunked.last_good_file = Some("/f.json".into());
        chunked.chunked = true;
        for refused in [relative, public, chunked] {
            assert!(envoy_bootstrap(&refused).is_err());
        }
    }

    #[test]
    fn host_ports_parse() {
        assert_eq!(
            HostPort::parse("x", "[::1]:80").unwrap(),
            HostPort {
                host: "::1".into(),
                port: 80
            }
        );
        assert!(HostPort::parse("x", "host").is_err());
        assert!(HostPort::parse("x", "host:99999").is_err());
        assert!(HostPort::parse("x", ":80").is_err());
        assert!(ip_address("listen", "localhost:80").is_err());
    }

    #[test]
    fn the_filter_and_the_sync_service_configurations_parse_with_the_engine() {
        let bootstrap = envoy_bootstrap(&options()).unwrap();
        let hcm = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let filter = &hcm["http_filters"][0]["typed_config"]["config"];
        let text = filter["configuration"]["value"].as_str().unwrap();
        let config = PluginConfig::from_json(text.as_bytes()).unwrap();
        assert_eq!(config.role, Role::Filter);
        let sync = config.sync.unwrap();
        assert_eq!(sync.cluster, CONTROL_PLANE_CLUSTER);
        assert_eq!(sync.poller, Poller::SyncService);
        assert_eq!(sync.public_keys, [public_key()]);
        assert_eq!(sync.token.as_deref(), Some("kwdp_render_test"));

        let service = &bootstrap["bootstrap_extensions"][0]["typed_config"];
        assert_eq!(service["singleton"], true);
        assert_eq!(service["config"]["vm_config"]["vm_id"], VM_ID);
        let text = service["config"]["configuration"]["value"]
            .as_str()
            .unwrap();
        let config = PluginConfig::from_json(text.as_bytes()).unwrap();
        assert_eq!(config.role, Role::SyncService);

        let clusters = bootstrap["static_resources"]["clusters"]
            .as_array()
            .unwrap();
        assert_eq!(clusters[0]["type"], "STATIC");
        assert_eq!(clusters[1]["type"], "STRICT_DNS");
        assert_eq!(
            clusters[1]["transport_socket"]["typed_config"]["sni"],
            "api.example.com"
        );
        assert_eq!(
            clusters[1]["transport_socket"]["typed_config"]["common_tls_context"]
                ["validation_context"]["trusted_ca"]["filename"],
            SYSTEM_CA_BUNDLE
        );
        assert!(clusters[0].get("transport_socket").is_none(), "loopback");
        assert!(crate::upstream_tls::bootstrap_findings(&bootstrap).is_empty());
    }

    #[test]
    fn an_https_control_plane_is_verified_and_no_rendering_holds_a_signing_secret() {
        let mut tls = options();
        tls.control_plane = "https://keyward.example.com:7070".into();
        tls.control_plane_tls = Tls::Verified {
            ca_file: "/etc/keyward/ca.pem".into(),
        };
        let bootstrap = envoy_bootstrap(&tls).unwrap();
        let cluster = &bootstrap["static_resources"]["clusters"][0];
        assert_eq!(cluster["type"], "STRICT_DNS");
        let validation = &cluster["transport_socket"]["typed_config"]["common_tls_context"]
            ["validation_context"];
        assert_eq!(validation["trusted_ca"]["filename"], "/etc/keyward/ca.pem");
        assert_eq!(
            validation["match_typed_subject_alt_names"][0]["matcher"]["exact"],
            "keyward.example.com"
        );
        let text = bootstrap.to_string();
        assert!(!text.contains("secret_base64") && !text.contains("signing_keys"));
        assert!(text.contains(&public_key().to_base64()));
        let resources = istio_resources(&istio_options()).unwrap();
        let text = serde_json::to_string(&resources).unwrap();
        assert!(!text.contains("secret_base64") && !text.contains("signing_keys"));
    }

    #[test]
    fn the_native_build_is_a_dynamic_module_filter_that_syncs_itself() {
        let mut native = options();
        native.build = FilterBuild::Native(NATIVE_MODULE_NAME.into());
        let bootstrap = envoy_bootstrap(&native).unwrap();
        assert_eq!(
            bootstrap["bootstrap_extensions"],
            json!([]),
            "no sync singleton"
        );
        let hcm = &bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
            ["typed_config"];
        let filter = &hcm["http_filters"][0];
        assert_eq!(
            filter["name"], "keyward",
            "per-route switches find it by name"
        );
        assert_eq!(filter["typed_config"]["@type"], DYNAMIC_MODULE_FILTER_TYPE);
        assert_eq!(
            filter["typed_config"]["dynamic_module_config"]["name"],
            "keyward"
        );
        let text = filter["typed_config"]["filter_config"]["value"]
            .as_str()
            .unwrap();
        let config = PluginConfig::from_json(text.as_bytes()).unwrap();
        assert_eq!(config.role, Role::Filter);
        assert_eq!(config.sync.unwrap().poller, Poller::Lease);
        assert_eq!(hcm["normalize_path"], true, "the same hardening");
    }

    fn istio_options() -> IstioOptions {
        IstioOptions {
            name: "keyward".into(),
            namespace: Some("llm-gateway".into()),
            wasm_url: "oci://registry.example.com/keyward:0.1.0".into(),
            sha256: hex_sha256(b"\0asm\x01\0\0\0"),
            control_plane: "keyward.keyward-system.svc.cluster.local:7070".into(),
            control_plane_tls: Tls::Plaintext,
            public_keys: vec![public_key()],
            dataplane_token: Some("kwdp_render_test".into()),
            target: IstioTarget::Selector(vec![("app".into(), "llm-gateway".into())]),
            match_mode: None,
            base_config: None,
            service_entry: true,
            hardening: true,
            interval_ms: 1000,
            chunked: false,
            timeout_ms: 2000,
        }
    }

    #[test]
    fn the_istio_plugin_config_is_a_lease_sync_through_the_outbound_cluster() {
        let resources = istio_resources(&istio_options()).unwrap();
        let kinds: Vec<&str> = resources
            .iter()
            .filter_map(|r| r["kind"].as_str())
            .collect();
        assert_eq!(kinds, ["WasmPlugin", "EnvoyFilter", "ServiceEntry"]);
        let plugin = &resources[0];
        assert_eq!(plugin["kind"], "WasmPlugin");
        assert_eq!(plugin["metadata"]["namespace"], "llm-gateway");
        assert_eq!(plugin["spec"]["phase"], "AUTHN");
        assert_eq!(plugin["spec"]["failStrategy"], "FAIL_CLOSE");
        assert_eq!(plugin["spec"]["sha256"], hex_sha256(b"\0asm\x01\0\0\0"));
        assert_eq!(
            plugin["spec"]["selector"]["matchLabels"]["app"],
            "llm-gateway"
        );
        let text = plugin["spec"]["pluginConfig"].to_string();
        let config = PluginConfig::from_json(text.as_bytes()).unwrap();
        assert_eq!(config.role, Role::Filter);
        let sync = config.sync.unwrap();
        assert_eq!(sync.poller, Poller::Lease);
        assert_eq!(
            sync.cluster,
            "outbound|7070||keyward.keyward-system.svc.cluster.local"
        );
        let hardening = &resources[1]["spec"];
        assert_eq!(
            hardening["workloadSelector"]["labels"]["app"],
            "llm-gateway"
        );
        let manager = &hardening["configPatches"][0]["patch"]["value"]["typed_config"];
        assert_eq!(manager["normalize_path"], true);
        assert_eq!(manager["merge_slashes"], true);
        assert_eq!(
            manager["path_with_escaped_slashes_action"],
            "REJECT_REQUEST"
        );
        assert_eq!(
            manager["common_http_protocol_options"]["headers_with_underscores_action"],
            "REJECT_REQUEST"
        );
        let entry = &resources[2];
        assert_eq!(entry["kind"], "ServiceEntry");
        assert_eq!(
            entry["spec"]["hosts"][0],
            "keyward.keyward-system.svc.cluster.local"
        );
        assert_eq!(entry["spec"]["ports"][0]["number"], 7070);

        let mut tls = istio_options();
        tls.control_plane_tls = Tls::Verified {
            ca_file: SYSTEM_CA_BUNDLE.into(),
        };
        let resources = istio_resources(&tls).unwrap();
        let rule = &resources[2];
        assert_eq!(rule["kind"], "DestinationRule");
        assert_eq!(
            rule["spec"]["host"],
            "keyward.keyward-system.svc.cluster.local"
        );
        let setting = &rule["spec"]["trafficPolicy"]["portLevelSettings"][0];
        assert_eq!(setting["port"]["number"], 7070);
        assert_eq!(setting["tls"]["mode"], "SIMPLE");
        assert_eq!(
            setting["tls"]["subjectAltNames"][0],
            "keyward.keyward-system.svc.cluster.local"
        );
    }

    #[test]
    fn istio_target_refs_base_config_and_refusals() {
        let mut options = istio_options();
        options.target = IstioTarget::TargetRef {
            kind: "Gateway".into(),
            name: "llm".into(),
        };
        options.match_mode = Some("SERVER".into());
        options.base_config = Some(json!({"mode": "shadow"}));
        options.service_entry = false;
        let resources = istio_resources(&options).unwrap();
        assert_eq!(resources.len(), 2, "the WasmPlugin and its EnvoyFilter");
        assert_eq!(resources[1]["spec"]["targetRefs"][0]["name"], "llm");
        options.hardening = false;
        assert_eq!(istio_resources(&options).unwrap().len(), 1);
        let spec = &resources[0]["spec"];
        assert_eq!(spec["targetRefs"][0]["group"], "gateway.networking.k8s.io");
        assert!(spec.get("selector").is_none());
        assert_eq!(spec["match"][0]["mode"], "SERVER");
        assert_eq!(spec["pluginConfig"]["mode"], "shadow");

        for (mutate, code) in [
            (
                (|o: &mut IstioOptions| o.base_config = Some(json!({"mode": "enforcing"})))
                    as fn(&mut IstioOptions),
                "invalid_plugin_config",
            ),
            (
                |o: &mut IstioOptions| o.base_config = Some(json!({"sync": {}})),
                "invalid_plugin_config",
            ),
            (
                |o: &mut IstioOptions| o.control_plane = "10.0.0.1:7070".into(),
                "invalid_address",
            ),
            (
                |o: &mut IstioOptions| o.wasm_url = "/tmp/keyward.wasm".into(),
                "invalid_wasm_url",
            ),
            (
                |o: &mut IstioOptions| o.name = "Keyward".into(),
                "invalid_name",
            ),
            (
                |o: &mut IstioOptions| o.match_mode = Some("INBOUND".into()),
                "invalid_match_mode",
            ),
        ] {
            let mut options = istio_options();
            mutate(&mut options);
            let error = istio_resources(&options).unwrap_err();
            assert_eq!(error.code, code);
        }
        assert_eq!(
            parse_selector("app=a,tier=b").unwrap(),
            vec![("app".into(), "a".into()), ("tier".into(), "b".into())]
        );
        assert!(parse_selector("app").is_err());
    }

    /// A layout as `scripts/oci.py` writes it (the index, the manifest and the blobs it names).
    fn write_layout(dir: &Path, wasm: &[u8], layer_types: [&str; 2]) -> String {
        let blobs = dir.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let runtime = br#"{"type":"envoy_proxy"}"#;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.unknown.config.v1+json",
                       "digest": format!("sha256:{}", hex_sha256(b"{}")), "size": 2},
            "layers": [
                {"mediaType": layer_types[0], "digest": format!("sha256:{}", hex_sha256(runtime)), "size": runtime.len()},
                {"mediaType": layer_types[1], "digest": format!("sha256:{}", hex_sha256(wasm)), "size": wasm.len()}
            ]
        })
        .to_string();
        let digest = hex_sha256(manifest.as_bytes());
        for blob in [manifest.as_bytes(), runtime, wasm, b"{}"] {
            std::fs::write(blobs.join(hex_sha256(blob)), blob).unwrap();
        }
        let index =
            json!({"schemaVersion": 2, "manifests": [{"digest": format!("sha256:{digest}")}]});
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
        digest
    }

    #[test]
    fn the_sha256_is_the_manifest_digest_for_oci_and_the_module_digest_otherwise() {
        let wasm = b"\0asm\x01\0\0\0";
        let dir = tempfile::tempdir().unwrap();
        let manifest = write_layout(dir.path(), wasm, [OCI_RUNTIME_CONFIG_LAYER, OCI_WASM_LAYER]);
        let oci = "oci://registry.example.com/keyward:1";
        assert_eq!(
            wasm_plugin_sha256(oci, Some(wasm), Some(dir.path())).unwrap(),
            manifest
        );
        assert_eq!(
            wasm_plugin_sha256(oci, None, Some(dir.path())).unwrap(),
            manifest
        );
        let code = |result: Result<String, Error>| result.unwrap_err().code;
        assert_eq!(
            code(wasm_plugin_sha256(oci, Some(b"other"), Some(dir.path()))),
            "invalid_oci_layout"
        );
        assert_eq!(
            code(wasm_plugin_sha256(oci, Some(wasm), None)),
            "missing_oci_layout"
        );
        let file = "file:///opt/keyward.wasm";
        assert_eq!(
            wasm_plugin_sha256(file, Some(wasm), None).unwrap(),
            hex_sha256(wasm)
        );
        assert_eq!(
            code(wasm_plugin_sha256(file, Some(wasm), Some(dir.path()))),
            "invalid_oci_layout"
        );
        assert_eq!(
            code(wasm_plugin_sha256(file, None, None)),
            "missing_wasm_file"
        );

        let single = tempfile::tempdir().unwrap();
        write_layout(
            single.path(),
            wasm,
            [OCI_WASM_LAYER, OCI_RUNTIME_CONFIG_LAYER],
        );
        assert_eq!(
            code(wasm_plugin_sha256(oci, Some(wasm), Some(single.path()))),
            "invalid_oci_layout"
        );
        std::fs::write(dir.path().join("index.json"), r#"{"manifests": []}"#).unwrap();
        assert_eq!(
            code(oci_layout_digests(dir.path()).map(|d| d.0)),
            "invalid_oci_layout"
        );
    }

    #[test]
    fn yaml_stream_separates_documents() {
        let text = yaml_stream(&[json!({"a": 1}), json!({"b": 2})]).unwrap();
        assert_eq!(text.matches("---\n").count(), 2);
    }
}
