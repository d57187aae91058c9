//! The control plane as operators run it: `keyward serve` over TLS, managed with the remote CLI
//! (`--server URL --token-file F --ca-file F`) and never through the database file; the local
//! mode refusing to create a store by accident; `/readyz`, `/metrics` and `/openapi.json`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::fs;
use std::process::Child;

use common::{spawn_serve, Workspace, ADMIN_NAME};
use keyward_engine::signed_snapshot::verify_snapshot;
use keyward_engine::snapshot::KeyStatus;

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A self-signed CA and a server certificate for 127.0.0.1 and localhost, as PEM files.
fn certificates(ws: &Workspace) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let server = server_params.signed_by(&server_key, &issuer).unwrap();
    fs::write(ws.path("ca.pem"), ca.pem()).unwrap();
    fs::write(ws.path("server.pem"), server.pem()).unwrap();
    fs::write(ws.path("server.key"), server_key.serialize_pem()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(ws.path("server.key"), fs::Permissions::from_mode(0o600)).unwrap();
    }
}

fn serve_tls(ws: &Workspace) -> (Served, String) {
    let mut args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-token-file",
        ws.path("admin.tokens").to_str().unwrap(),
        "--tls-cert",
        ws.path("server.pem").to_str().unwrap(),
        "--tls-key",
        ws.path("server.key").to_str().unwrap(),
        "--access-log",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    args.extend(ws.signing_args());
    let (child, base) = spawn_serve(ws, &args);
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    (Served(child), base)
}

/// `keyward --server BASE --token-file … --ca-file … ARGS`, from a directory with no store.
fn remote(ws: &Workspace, base: &str, args: &[&str]) -> std::process::Output {
    ws.command()
        .env_remove("KEYWARD_DB")
        .current_dir(ws.path("elsewhere"))
        .args(["--server", base, "--token-file"])
        .arg(ws.path("admin.tokens"))
        .arg("--ca-file")
        .arg(ws.path("ca.pem"))
        .args(args)
        .output()
        .unwrap()
}

fn agent_trusting(ws: &Workspace) -> ureq::Agent {
    let pem = fs::read(ws.path("ca.pem")).unwrap();
    let certificates: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item.unwrap() {
            ureq::tls::PemItem::Certificate(certificate) => Some(certificate),
            _ => None,
        })
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certificates))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .new_agent()
}

#[test]
fn the_remote_cli_manages_keys_over_tls_without_the_database() {
    let ws = Workspace::new();
    certificates(&ws);
    fs::create_dir(ws.path("elsewhere")).unwrap();
    let (_served, base) = serve_tls(&ws);

    let created = remote(
        &ws,
        &base,
        &["project", "create", "proj_r", "--org", "org_r", "--json"],
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let output = remote(
        &ws,
        &base,
        &[
            "key",
            "create",
            "--project",
            "proj_r",
            "--scopes",
            "chat:write",
            "--spend-cap-usd",
            "5",
            "--json",
        ],
    );
    assert!(output.status.success());
    let key: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let id = key["id"].as_str().unwrap().to_owned();
    assert!(key["key"].as_str().unwrap().starts_with("ak_"));
    assert_eq!(key["spend_cap_microusd"], 5_000_000);
    let output = remote(&ws, &base, &["key", "pause", &id]);
    assert!(output.status.success());
    let output = remote(
        &ws,
        &base,
        &["key", "set", &id, "--rpm", "60", "--no-spend-cap"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The changes are in the store, recorded as the token's name; nothing was written where the
    // CLI ran.
    let shown = ws.json(&["key", "show", &id, "--json"]);
    assert_eq!(shown["status"], "paused");
    assert_eq!(shown["rate_limits"]["requests_per_minute"], 60);
    assert!(shown["spend_cap_microusd"].is_null());
    let events = ws.json(&["audit", "--json"]);
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .all(|event| event["actor"] == ADMIN_NAME));
    assert_eq!(fs::read_dir(ws.path("elsewhere")).unwrap().count(), 0);

    // Errors come back with the server's message; a bad token is refused.
    let output = remote(&ws, &base, &["key", "show", "nope00000000"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("key_not_found"));
    fs::write(
        ws.path("wrong.token"),
        "kwadm_wrongwrongwrongwrongwrongwrongwrong",
    )
    .unwrap();
    let output = ws
        .command()
        .args(["--server", &base, "--token-file"])
        .arg(ws.path("wrong.token"))
        .arg("--ca-file")
        .arg(ws.path("ca.pem"))
        .args(["key", "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid_admin_token"), "{stderr}");
    // Without the CA, the certificate does not verify: no silent downgrade.
    let output = ws
        .command()
        .args(["--server", &base, "--token-file"])
        .arg(ws.path("admin.tokens"))
        .args(["key", "list"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr).to_lowercase();
    assert!(
        stderr.contains("certificate") || stderr.contains("issuer"),
        "{stderr}"
    );

    // The snapshot over TLS verifies; readiness, metrics and the OpenAPI document answer.
    let agent = agent_trusting(&ws);
    let mut snapshot = agent.get(format!("{base}/v1/snapshot")).call().unwrap();
    let policy = verify_snapshot(
        &snapshot.body_mut().read_to_vec().unwrap(),
        &[ws.signing_key()],
    )
    .unwrap();
    assert_eq!(policy.key_by_id(&id).unwrap().status, KeyStatus::Paused);
    let mut ready = agent.get(format!("{base}/readyz")).call().unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.body_mut().read_json().unwrap();
    assert_eq!(ready["status"], "ready");
    let metrics = agent
        .get(format!("{base}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        metrics.contains(
            "keyward_http_requests_total{endpoint=\"/v1/keys/{id}\",method=\"PATCH\",status=\"200\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("keyward_snapshot_version "), "{metrics}");
    let openapi: serde_json::Value = agent
        .get(format!("{base}/openapi.json"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    assert!(openapi["paths"]["/v1/keys/{id}/rotate"]["post"].is_object());
}

#[test]
fn the_local_mode_never_creates_a_store_by_accident() {
    let ws = Workspace::new();
    let bare = |args: &[&str]| {
        ws.command()
            .env_remove("KEYWARD_DB")
            .args(args)
            .output()
            .unwrap()
    };
    let output = bare(&["key", "list"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("keyward init"));
    assert!(
        !ws.path("keyward.db").exists(),
        "no empty store left behind"
    );
    let output = bare(&["init"]);
    assert!(output.status.success());
    assert!(ws.path("keyward.db").exists());
    assert!(bare(&["key", "list"]).status.success());
    // Remote mode refuses the commands that need the store itself.
    let output = bare(&["--server", "http://127.0.0.1:9", "init"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("--db"));
}
