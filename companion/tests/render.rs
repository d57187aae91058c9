//! `keyward render envoy`: the printed bootstrap is JSON (so YAML too) with the filter, the
//! sync singleton sharing its vm_id, and both clusters; both plugin configurations parse with
//! the engine's own configuration parser.

// Test code (helpers included): a failed unwrap or index is a failed test, as clippy.toml
// already allows inside #[test] functions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{Workspace, SIGNING_KEY_ID};
use keyward_engine::config::{PluginConfig, Role};
use keyward_engine::sync::Poller;
use serde_json::Value;

fn render_args(ws: &Workspace, extra: &[&str]) -> Vec<String> {
    let token = ws.path("dataplane.token");
    ws.dataplane_token();
    let mut args = vec![
        "render".to_owned(),
        "envoy".into(),
        "--wasm".into(),
        "/etc/envoy/keyward.wasm".into(),
        "--dataplane-token-file".into(),
        token.to_string_lossy().into_owned(),
    ];
    args.extend(ws.public_key_args());
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

fn render(ws: &Workspace, extra: &[&str]) -> Value {
    serde_json::from_str(&ws.ok(&render_args(ws, extra))).unwrap()
}

fn plugin_config(config: &Value) -> PluginConfig {
    assert_eq!(
        config["configuration"]["@type"],
        "type.googleapis.com/google.protobuf.StringValue"
    );
    let text = config["configuration"]["value"].as_str().unwrap();
    PluginConfig::from_json(text.as_bytes()).unwrap()
}

#[test]
fn render_envoy_prints_a_complete_bootstrap() {
    let ws = Workspace::new();
    let bootstrap = render(&ws, &["--control-plane", "127.0.0.1:7070"]);

    assert_eq!(
        bootstrap["admin"]["address"]["socket_address"],
        serde_json::json!({"address": "127.0.0.1", "port_value": 9901})
    );
    let listener = &bootstrap["static_resources"]["listeners"][0];
    assert_eq!(listener["address"]["socket_address"]["port_value"], 10000);
    let hcm = &listener["filter_chains"][0]["filters"][0];
    assert_eq!(hcm["name"], "envoy.filters.network.http_connection_manager");
    let filters = hcm["typed_config"]["http_filters"].as_array().unwrap();
    assert_eq!(filters.len(), 2);
    assert_eq!(
        filters[0]["typed_config"]["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
    );
    assert_eq!(
        filters[1]["name"], "envoy.filters.http.router",
        "router last"
    );

    let filter = &filters[0]["typed_config"]["config"];
    assert_eq!(filter["root_id"], "keyward");
    assert_eq!(filter["vm_config"]["vm_id"], "keyward");
    assert_eq!(filter["vm_config"]["runtime"], "envoy.wasm.runtime.v8");
    assert_eq!(
        filter["vm_config"]["code"]["local"]["filename"],
        "/etc/envoy/keyward.wasm"
    );
    let config = plugin_config(filter);
    assert_eq!(config.role, Role::Filter);
    let sync = config.sync.unwrap();
    assert_eq!(sync.cluster, "keyward_control_plane");
    assert_eq!(sync.authority, "keyward-control-plane");
    assert_eq!(sync.path, "/v1/snapshot");
    assert_eq!((sync.interval_ms, sync.timeout_ms), (1000, 2000));
    assert_eq!(sync.poller, Poller::SyncService);
    assert_eq!(sync.public_keys, [ws.public_key()]);
    assert_eq!(sync.public_keys[0].id, SIGNING_KEY_ID);
    assert_eq!(sync.token, Some(ws.dataplane_token()));
    // Nothing in the rendering can sign: no private key, no shared secret.
    let text = bootstrap.to_string();
    let private = std::fs::read_to_string(ws.path("signing.key")).unwrap();
    let private_body: String = private
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    assert!(!text.contains(&private_body) && !text.contains("secret_base64"));

    let extension = &bootstrap["bootstrap_extensions"][0];
    assert_eq!(extension["name"], "envoy.bootstrap.wasm");
    let service = &extension["typed_config"];
    assert_eq!(
        service["@type"],
        "type.googleapis.com/envoy.extensions.wasm.v3.WasmService"
    );
    assert_eq!(service["singleton"], true);
    assert_eq!(service["config"]["root_id"], "keyward_sync");
    assert_eq!(
        service["config"]["vm_config"], filter["vm_config"],
        "same VM"
    );
    let service_config = plugin_config(&service["config"]);
    assert_eq!(service_config.role, Role::SyncService);
    assert_eq!(
        service_config.sync.unwrap().cluster,
        "keyward_control_plane"
    );

    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array()
        .unwrap();
    let cluster = |name: &str| {
        clusters
            .iter()
            .find(|cluster| cluster["name"] == name)
            .unwrap()
    };
    let control_plane = cluster("keyward_control_plane");
    assert_eq!(control_plane["type"], "STATIC");
    assert_eq!(
        control_plane["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"],
        serde_json::json!({"address": "127.0.0.1", "port_value": 7070})
    );
    let upstream = cluster("upstream");
    assert_eq!(upstream["type"], "STATIC");
    let route = &hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"][0];
    assert_eq!(route["route"]["cluster"], "upstream");
}

#[test]
fn render_envoy_handles_dns_names_tls_and_bad_addresses() {
    let ws = Workspace::new();
    let bootstrap = render(
        &ws,
        &[
            "--control-plane",
            "keyward.internal:7070",
            "--upstream",
            "api.openai.com:443",
            "--upstream-tls",
            "--listen",
            "0.0.0.0:8080",
        ],
    );
    let clusters = bootstrap["static_resources"]["clusters"]
        .as_array()
        .unwrap();
    assert_eq!(clusters[0]["type"], "STRICT_DNS");
    assert_eq!(clusters[1]["type"], "STRICT_DNS");
    assert_eq!(
        clusters[1]["transport_socket"]["typed_config"]["sni"],
        "api.openai.com"
    );

    let upstream = &clusters[1]["transport_socket"]["typed_config"];
    assert_eq!(
        upstream["common_tls_context"]["validation_context"]["trusted_ca"]["filename"],
        "/etc/ssl/certs/ca-certificates.crt",
        "verified against the system bundle by default"
    );
    assert_eq!(
        upstream["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0]
            ["matcher"]["exact"],
        "api.openai.com"
    );

    // https:// to the control plane is verified too, against --control-plane-ca.
    let bootstrap = render(
        &ws,
        &[
            "--control-plane",
            "https://keyward.internal:7070",
            "--control-plane-ca",
            "/etc/keyward/ca.pem",
        ],
    );
    let control_plane = &bootstrap["static_resources"]["clusters"][0]["transport_socket"]
        ["typed_config"]["common_tls_context"]["validation_context"];
    assert_eq!(
        control_plane["trusted_ca"]["filename"],
        "/etc/keyward/ca.pem"
    );

    // Skipping verification takes an explicit flag, is warned about, and audit flags it.
    let out = ws.path("insecure.json");
    let output = ws.run(&render_args(
        &ws,
        &[
            "--control-plane",
            "127.0.0.1:7070",
            "--upstream",
            "api.openai.com:443",
            "--upstream-tls",
            "--upstream-insecure-skip-verify",
            "--out",
            out.to_str().unwrap(),
        ],
    ));
    assert!(output.status.success());
    assert!(output.stdout.is_empty(), "written to --out, not printed");
    assert!(String::from_utf8_lossy(&output.stderr).contains("NOT verified"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "it holds the data-plane token");
    }
    let audit = ws.run(&["audit", "--envoy-config", out.to_str().unwrap()]);
    assert_eq!(audit.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&audit.stdout).contains("tls_not_verified"));
    let verified = ws.path("verified.json");
    ws.ok(&render_args(
        &ws,
        &[
            "--control-plane",
            "127.0.0.1:7070",
            "--upstream",
            "https://api.openai.com:443",
            "--out",
            verified.to_str().unwrap(),
        ],
    ));
    ws.ok(&["audit", "--envoy-config", verified.to_str().unwrap()]);
    assert!(ws
        .fails(&render_args(
            &ws,
            &[
                "--control-plane",
                "127.0.0.1:7070",
                "--upstream-insecure-skip-verify"
            ]
        ))
        .contains("go with TLS"));

    let args = render_args(&ws, &[]);
    let mut bad = args.clone();
    bad.extend(["--control-plane".to_owned(), "no-port".to_owned()]);
    assert!(ws.fails(&bad).contains("HOST:PORT"));
    let mut bad = args.clone();
    bad.extend([
        "--control-plane".to_owned(),
        "127.0.0.1:7070".to_owned(),
        "--listen".to_owned(),
        "localhost:10000".to_owned(),
    ]);
    assert!(ws.fails(&bad).contains("IP"));
}
