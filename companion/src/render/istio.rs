//! `keyward render istio`: the `WasmPlugin`, `ServiceEntry`, `DestinationRule` and hardening
//! `EnvoyFilter` documents.

use super::*;

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

pub(super) const MATCH_MODES: [&str; 3] = ["CLIENT", "SERVER", "CLIENT_AND_SERVER"];

/// Istio names the outbound cluster of a service `outbound|PORT||HOST` (no subset).
pub fn istio_outbound_cluster(host: &str, port: u16) -> String {
    format!("outbound|{port}||{host}")
}

pub(super) fn metadata(name: &str, namespace: Option<&str>) -> Value {
    let mut metadata = json!({"name": name, "labels": {"app.kubernetes.io/part-of": "keyward"}});
    if let (Some(namespace), Some(object)) = (namespace, metadata.as_object_mut()) {
        object.insert("namespace".into(), json!(namespace));
    }
    metadata
}

/// A Kubernetes object name: DNS-1123 label (lower case, digits, `-`), at most 63 characters.
pub(super) fn check_k8s_name(field: &str, text: &str) -> Result<(), Error> {
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
pub(super) fn istio_plugin_config(
    options: &IstioOptions,
    control_plane: &HostPort,
) -> Result<Value, Error> {
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
