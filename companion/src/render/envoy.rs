//! `keyward render envoy`: the Envoy bootstrap (listener, filter, clusters, sync singleton).

use super::*;

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
pub(super) const DYNAMIC_MODULE_FILTER_TYPE: &str =
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

/// A cluster of one endpoint: STATIC for an IP, STRICT_DNS for a host name; with the TLS
/// `tls` asks for (verified unless told otherwise).
pub(super) fn cluster(name: &str, address: &HostPort, tls: &Tls) -> Value {
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

/// The `sync` block shared by the filter and the sync service. The native build has no sync
/// service: the filter configurations of one Envoy process elect one poller among themselves
/// (the lease, in process memory), so one poll and one usage report per Envoy.
pub(super) fn sync_block(options: &EnvoyOptions) -> Value {
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

/// The VM reads the fleet's private key (for provider keys) from Envoy's own environment by
/// name: `/config_dump` shows the name, never the value (a `key_values` entry would show it).
pub(super) fn vm_config(wasm: &str) -> Value {
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
