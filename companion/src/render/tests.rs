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
    invalid.plugin_config = Some(json!({"routes": [{"name": "r", "match": {"path_prefix": "x"}}]}));
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
        clusters[1]["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
            ["trusted_ca"]["filename"],
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
    let validation =
        &cluster["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"];
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
    let index = json!({"schemaVersion": 2, "manifests": [{"digest": format!("sha256:{digest}")}]});
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
