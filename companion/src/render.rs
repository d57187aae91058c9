//! `keyward render envoy`: a ready Envoy bootstrap with the keyward filter, the policy sync as a
//! bootstrap singleton (same `vm_id`, so both share Envoy's shared data), the control-plane
//! cluster and an upstream cluster. The output is JSON, which Envoy reads as YAML too.

use std::net::IpAddr;

use serde_json::{json, Value};

use crate::error::Error;

pub const CONTROL_PLANE_CLUSTER: &str = "keyward_control_plane";
pub const CONTROL_PLANE_AUTHORITY: &str = "keyward-control-plane";
pub const UPSTREAM_CLUSTER: &str = "upstream";
pub const VM_ID: &str = "keyward";
const WASM_RUNTIME: &str = "envoy.wasm.runtime.v8";
const STRING_VALUE: &str = "type.googleapis.com/google.protobuf.StringValue";

pub struct EnvoyOptions {
    pub wasm: String,
    pub control_plane: String,
    pub signing_key_id: String,
    pub signing_secret_base64: String,
    pub listen: String,
    pub admin: String,
    pub upstream: String,
    pub upstream_tls: bool,
    pub interval_ms: u64,
    pub timeout_ms: u64,
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

/// A cluster of one endpoint: STATIC for an IP, STRICT_DNS for a host name.
fn cluster(name: &str, address: &HostPort) -> Value {
    json!({
        "name": name,
        "type": if address.is_ip() { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address.socket_address()}}]}]
        }
    })
}

/// The `sync` block shared by the filter and the sync service.
fn sync_block(options: &EnvoyOptions) -> Value {
    json!({
        "cluster": CONTROL_PLANE_CLUSTER,
        "authority": CONTROL_PLANE_AUTHORITY,
        "path": "/v1/snapshot",
        "interval_ms": options.interval_ms,
        "timeout_ms": options.timeout_ms,
        "signing_keys": [{"id": options.signing_key_id, "secret_base64": options.signing_secret_base64}],
        "poller": "sync_service"
    })
}

fn string_value(document: &Value) -> Value {
    json!({"@type": STRING_VALUE, "value": document.to_string()})
}

fn vm_config(wasm: &str) -> Value {
    json!({
        "vm_id": VM_ID,
        "runtime": WASM_RUNTIME,
        "code": {"local": {"filename": wasm}}
    })
}

/// The Envoy bootstrap, as a JSON value.
pub fn envoy_bootstrap(options: &EnvoyOptions) -> Result<Value, Error> {
    let listen = ip_address("listen", &options.listen)?;
    let admin = ip_address("admin", &options.admin)?;
    let control_plane = HostPort::parse("control-plane", &options.control_plane)?;
    let upstream = HostPort::parse("upstream", &options.upstream)?;
    let sync = sync_block(options);

    let mut route = json!({"cluster": UPSTREAM_CLUSTER, "timeout": "300s"});
    let mut upstream_cluster = cluster(UPSTREAM_CLUSTER, &upstream);
    if options.upstream_tls {
        if let Some(route) = route.as_object_mut() {
            route.insert("host_rewrite_literal".into(), json!(upstream.host));
        }
        if let Some(cluster) = upstream_cluster.as_object_mut() {
            cluster.insert(
                "transport_socket".into(),
                json!({
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                        "sni": upstream.host
                    }
                }),
            );
        }
    }

    let filter = json!({
        "name": "keyward",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "keyward",
                "root_id": "keyward",
                "vm_config": vm_config(&options.wasm),
                "configuration": string_value(&json!({"sync": sync}))
            }
        }
    });
    let sync_service = json!({
        "name": "envoy.bootstrap.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
            "singleton": true,
            "config": {
                "name": "keyward_sync",
                "root_id": "keyward_sync",
                "vm_config": vm_config(&options.wasm),
                "configuration": string_value(&json!({"role": "sync_service", "sync": sync}))
            }
        }
    });
    Ok(json!({
        "admin": {"address": admin.socket_address()},
        "bootstrap_extensions": [sync_service],
        "static_resources": {
            "listeners": [{
                "name": "keyward",
                "address": listen.socket_address(),
                "filter_chains": [{
                    "filters": [{
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": "keyward",
                            "route_config": {
                                "name": "keyward",
                                "virtual_hosts": [{
                                    "name": "upstream",
                                    "domains": ["*"],
                                    "routes": [{
                                        "name": "default",
                                        "match": {"prefix": "/"},
                                        "route": route
                                    }]
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
                        }
                    }]
                }]
            }],
            "clusters": [cluster(CONTROL_PLANE_CLUSTER, &control_plane), upstream_cluster]
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_engine::config::{PluginConfig, Role};
    use keyward_engine::sync::Poller;

    fn options() -> EnvoyOptions {
        EnvoyOptions {
            wasm: "/opt/keyward.wasm".into(),
            control_plane: "127.0.0.1:7070".into(),
            signing_key_id: "ops-1".into(),
            signing_secret_base64: "QUJD".repeat(11),
            listen: "127.0.0.1:10000".into(),
            admin: "127.0.0.1:9901".into(),
            upstream: "api.example.com:443".into(),
            upstream_tls: true,
            interval_ms: 1000,
            timeout_ms: 2000,
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
        assert_eq!(sync.signing_keys[0].id, "ops-1");

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
    }
}
