//! `keyward serve` on 127.0.0.1 (an OS-chosen free port): the admin API behind its token, the
//! key lifecycle over HTTP, and the snapshot endpoint with ETag, 304 and re-issue.

// Test code (helpers included): a failed unwrap or index is a failed test, as clippy.toml
// already allows inside #[test] functions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{Workspace, ADMIN_NAME};
use keyward_engine::hash::sha256;
use keyward_engine::signed_snapshot::verify_snapshot;
use keyward_engine::snapshot::{KeyStatus, Policy};
use serde_json::{json, Value};

/// A running `keyward serve`, stopped when dropped.
struct Server {
    child: Child,
    base: String,
    agent: ureq::Agent,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    }

    /// Asserts the error contract and returns the error's code.
    fn error(&self, status: u16, kind: &str) -> String {
        assert_eq!(
            self.status,
            status,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/json")
        );
        let body = self.json();
        assert_eq!(body["error"]["type"], kind);
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
        body["error"]["code"].as_str().unwrap().to_owned()
    }
}

fn start(ws: &Workspace, extra: &[&str]) -> Server {
    let mut args = vec![
        "serve".to_owned(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--admin-token-file".into(),
        ws.path("admin.tokens").to_string_lossy().into_owned(),
    ];
    args.extend(ws.signing_args());
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let mut child = ws
        .command()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("keyward: listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(10)))
        .build();
    Server {
        child,
        base,
        agent: ureq::Agent::new_with_config(config),
    }
}

impl Server {
    fn reply(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut response = response.unwrap();
        Reply {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.body_mut().read_to_vec().unwrap(),
        }
    }

    fn get(&self, path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Server::reply(request.call())
    }

    fn post(&self, path: &str, token: &str, body: Option<Value>) -> Reply {
        let request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {token}"));
        Server::reply(match body {
            Some(body) => request.send_json(body),
            None => request.send_empty(),
        })
    }

    fn send_raw(&self, method: &str, path: &str, token: &str, body: &str) -> Reply {
        let url = format!("{}{path}", self.base);
        let request = match method {
            "PATCH" => self.agent.patch(url),
            _ => self.agent.post(url),
        };
        Server::reply(
            request
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .send(body),
        )
    }

    fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send_raw("PATCH", path, token, &body.to_string())
    }

    /// Fetches and verifies the snapshot; returns it with its ETag.
    fn snapshot(&self, ws: &Workspace) -> (Policy, String, Vec<u8>) {
        let reply = self.get("/v1/snapshot", None, &[]);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/json")
        );
        let etag = reply.header("etag").unwrap();
        let policy = verify_snapshot(&reply.body, &[ws.signing_key()]).unwrap();
        assert_eq!(etag, format!("\"{}-{}\"", policy.version, policy.issued_at));
        (policy, etag, reply.body)
    }
}

fn status_of(policy: &Policy, id: &str) -> KeyStatus {
    policy
        .keys()
        .iter()
        .find(|key| key.id == id)
        .unwrap()
        .status
}

#[test]
fn admin_api_needs_the_token_and_runs_the_key_lifecycle() {
    let ws = Workspace::new();
    let server = start(&ws, &[]);
    let token = ws.admin_token();

    // No token, a wrong token, another scheme: 401 in the JSON contract.
    let reply = server.get("/v1/keys", None, &[]);
    assert_eq!(
        reply.error(401, "authentication_error"),
        "missing_admin_token"
    );
    assert!(reply
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));
    let wrong = format!("{}x", token);
    let reply = server.get("/v1/keys", Some(&wrong), &[]);
    assert_eq!(
        reply.error(401, "authentication_error"),
        "invalid_admin_token"
    );
    let reply = server.get(
        "/v1/projects",
        None,
        &[("authorization", &format!("Basic {token}"))],
    );
    reply.error(401, "authentication_error");
    let reply = server.post("/v1/keys", "nope", Some(json!({"project": "p"})));
    reply.error(401, "authentication_error");
    assert_eq!(
        server
            .get("/v1/nothing", Some(&token), &[])
            .error(404, "invalid_request_error"),
        "not_found"
    );

    // Projects.
    let reply = server.post(
        "/v1/projects",
        &token,
        Some(json!({"id": "proj_a", "org": "org_acme", "spend_cap_microusd": 5_000_000})),
    );
    assert_eq!(reply.status, 201);
    assert_eq!(reply.json()["status"], "active");
    let reply = server.post(
        "/v1/projects",
        &token,
        Some(json!({"id": "proj_a", "org": "org_acme"})),
    );
    assert_eq!(reply.error(409, "invalid_request_error"), "project_exists");
    server.post(
        "/v1/projects",
        &token,
        Some(json!({"id": "proj_b", "org": "org_acme"})),
    );
    let reply = server.post("/v1/projects/proj_b/archive", &token, None);
    assert_eq!(reply.json()["status"], "archived");
    let listed = server.get("/v1/projects", Some(&token), &[]).json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);

    // Create: the plaintext comes back once, with no-store.
    let reply = server.post(
        "/v1/keys",
        &token,
        Some(json!({
            "project": "proj_a", "scopes": ["chat:write"], "models": ["gpt-4o-mini"],
            "expires_in": "30d", "note": "ci pipeline"
        })),
    );
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    let created = reply.json();
    let id = created["id"].as_str().unwrap().to_owned();
    let plaintext = created["key"].as_str().unwrap().to_owned();
    let secret = plaintext.split_once('.').unwrap().1.to_owned();
    assert!(plaintext.starts_with(&format!("ak_{id}.")));
    let reply = server.post(
        "/v1/keys",
        &token,
        Some(json!({"org": "org_acme", "format": "vpx", "environment": "test"})),
    );
    let vpx = reply.json();
    let vpx_key = vpx["key"].as_str().unwrap().to_owned();
    assert!(vpx_key.starts_with("vpx_test_"));

    // Reads never carry secrets or hashes.
    let hash = hex::encode(sha256(secret.as_bytes()));
    let vpx_hash = hex::encode(sha256(vpx_key.as_bytes()));
    for path in [
        "/v1/keys",
        "/v1/keys?project=proj_a",
        &format!("/v1/keys/{id}"),
        "/v1/audit",
    ] {
        let reply = server.get(path, Some(&token), &[]);
        assert_eq!(reply.status, 200, "{path}");
        let text = String::from_utf8(reply.body).unwrap();
        for forbidden in [&plaintext, &secret, &hash, &vpx_key, &vpx_hash] {
            assert!(
                !text.contains(forbidden.as_str()),
                "{path} shows a secret or hash"
            );
        }
    }
    let shown = server
        .get(&format!("/v1/keys/{id}"), Some(&token), &[])
        .json();
    assert_eq!(shown["note"], "ci pipeline");
    assert!(shown["last_seen_at"].is_null());
    let reply = server.get("/v1/keys/doesnotexist", Some(&token), &[]);
    assert_eq!(reply.error(404, "invalid_request_error"), "key_not_found");

    // Bad requests.
    let reply = server.send_raw("POST", "/v1/keys", &token, "{not json");
    assert_eq!(reply.error(400, "invalid_request_error"), "invalid_json");
    let reply = server.post(
        "/v1/keys",
        &token,
        Some(json!({"project": "proj_a", "colour": "red"})),
    );
    assert_eq!(reply.error(400, "invalid_request_error"), "invalid_json");
    let reply = server.post(
        "/v1/keys",
        &token,
        Some(json!({"project": "proj_a", "org": "org_acme"})),
    );
    reply.error(400, "invalid_request_error");
    let reply = server.post("/v1/keys", &token, Some(json!({"project": "proj_b"})));
    assert_eq!(
        reply.error(409, "invalid_request_error"),
        "project_archived"
    );

    // Update, pause, resume, rotate, revoke.
    let reply = server.patch(&format!("/v1/keys/{id}"), &token, json!({"models": null, "spend_cap_microusd": 2_000_000, "scopes": ["chat:write", "files:read"]}));
    assert_eq!(reply.status, 200);
    let updated = reply.json();
    assert!(updated["models"].is_null());
    assert_eq!(updated["spend_cap_microusd"], 2_000_000);
    assert_eq!(updated["note"], "ci pipeline", "untouched");
    assert_eq!(
        server
            .post(&format!("/v1/keys/{id}/pause"), &token, None)
            .json()["status"],
        "paused"
    );
    let reply = server.post(&format!("/v1/keys/{id}/pause"), &token, None);
    assert_eq!(reply.error(409, "invalid_request_error"), "key_paused");
    assert_eq!(
        server
            .post(&format!("/v1/keys/{id}/resume"), &token, None)
            .json()["status"],
        "active"
    );
    let reply = server.post(
        &format!("/v1/keys/{id}/rotate"),
        &token,
        Some(json!({"grace": "1h"})),
    );
    assert_eq!(reply.status, 201);
    let rotation = reply.json();
    let new_id = rotation["id"].as_str().unwrap().to_owned();
    assert!(rotation["key"]
        .as_str()
        .unwrap()
        .starts_with(&format!("ak_{new_id}.")));
    assert_eq!(rotation["scopes"], json!(["chat:write", "files:read"]));
    assert_eq!(rotation["previous"]["id"], id.as_str());
    assert!(rotation["previous"]["revoke_at"].as_u64().is_some());
    let (policy, _, _) = server.snapshot(&ws);
    assert_eq!(
        status_of(&policy, &id),
        KeyStatus::Active,
        "in its grace period"
    );
    assert_eq!(
        server
            .post(&format!("/v1/keys/{id}/revoke"), &token, None)
            .json()["status"],
        "revoked"
    );
    let reply = server.post(&format!("/v1/keys/{id}/revoke"), &token, None);
    assert_eq!(reply.error(409, "invalid_request_error"), "key_revoked");
    let reply = server.patch(&format!("/v1/keys/{id}"), &token, json!({"note": "x"}));
    assert_eq!(reply.error(409, "invalid_request_error"), "key_revoked");

    let (policy, _, _) = server.snapshot(&ws);
    assert_eq!(status_of(&policy, &id), KeyStatus::Revoked);
    assert_eq!(status_of(&policy, &new_id), KeyStatus::Active);

    // A change made with the CLI while the server runs shows up in the next snapshot.
    ws.ok(&["--actor", "alice", "key", "pause", &new_id]);
    let (policy, _, _) = server.snapshot(&ws);
    assert_eq!(status_of(&policy, &new_id), KeyStatus::Paused);

    // The audit trail names the admin token's owner.
    let events = server.get("/v1/audit", Some(&token), &[]).json();
    let events = events["data"].as_array().unwrap();
    let actions: Vec<(&str, &str)> = events
        .iter()
        .map(|event| {
            (
                event["actor"].as_str().unwrap(),
                event["action"].as_str().unwrap(),
            )
        })
        .collect();
    for expected in [
        "project.create",
        "project.archive",
        "key.create",
        "key.update",
        "key.pause",
        "key.resume",
        "key.rotate",
        "key.revoke",
    ] {
        assert!(
            actions.contains(&(ADMIN_NAME, expected)),
            "{expected}: {actions:?}"
        );
    }
    assert_eq!(actions.last(), Some(&("alice", "key.pause")));
    let limited = server.get("/v1/audit?limit=2", Some(&token), &[]).json();
    assert_eq!(limited["data"].as_array().unwrap().len(), 2);
}

#[test]
fn snapshot_endpoint_serves_cached_signed_envelopes_with_etags() {
    let ws = Workspace::new();
    ws.ok(&["project", "create", "proj_a", "--org", "org_acme"]);
    let (id, _) = ws.create_key(&["--project", "proj_a"]);
    let server = start(&ws, &[]);
    let token = ws.admin_token();

    // No admin token needed: hashes only, signed.
    let (policy, etag, body) = server.snapshot(&ws);
    assert_eq!(status_of(&policy, &id), KeyStatus::Active);
    let (again, etag_again, body_again) = server.snapshot(&ws);
    assert_eq!(
        (etag_again.as_str(), &body_again),
        (etag.as_str(), &body),
        "cached bytes"
    );
    assert_eq!(again.version, policy.version);

    let reply = server.get("/v1/snapshot", None, &[("if-none-match", &etag)]);
    assert_eq!(reply.status, 304);
    assert!(reply.body.is_empty());
    assert_eq!(reply.header("etag"), Some(etag.clone()));
    let reply = server.get("/v1/snapshot", None, &[("if-none-match", "\"0-0\"")]);
    assert_eq!(reply.status, 200);

    // A change: new version, new ETag, the old one no longer matches.
    server.post(&format!("/v1/keys/{id}/revoke"), &token, None);
    let reply = server.get("/v1/snapshot", None, &[("if-none-match", &etag)]);
    assert_eq!(reply.status, 200);
    let (changed, changed_etag, _) = server.snapshot(&ws);
    assert_eq!(changed.version, policy.version + 1);
    assert_ne!(changed_etag, etag);
    assert_eq!(status_of(&changed, &id), KeyStatus::Revoked);
    let reply = server.get("/v1/snapshot", None, &[("if-none-match", &changed_etag)]);
    assert_eq!(reply.status, 304);

    // Admin routes are not reachable through the snapshot's openness.
    server
        .get("/v1/keys", None, &[])
        .error(401, "authentication_error");
}

#[test]
fn unchanged_snapshots_are_reissued_and_rotation_deadlines_are_applied() {
    let ws = Workspace::new();
    ws.ok(&["project", "create", "proj_a", "--org", "org_acme"]);
    let (id, _) = ws.create_key(&["--project", "proj_a"]);
    let server = start(&ws, &["--reissue-seconds", "1"]);
    let token = ws.admin_token();

    let (first, first_etag, _) = server.snapshot(&ws);
    sleep(Duration::from_millis(1100));
    let (second, second_etag, _) = server.snapshot(&ws);
    assert_eq!(second.version, first.version, "same policy");
    assert!(second.issued_at > first.issued_at, "re-issued");
    assert_ne!(second_etag, first_etag);
    let reply = server.get("/v1/snapshot", None, &[("if-none-match", &first_etag)]);
    assert_eq!(reply.status, 200);

    // A rotation with a short grace: the server revokes the old key by itself.
    let reply = server.post(
        &format!("/v1/keys/{id}/rotate"),
        &token,
        Some(json!({"grace": "1s"})),
    );
    assert_eq!(reply.status, 201);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (policy, _, _) = server.snapshot(&ws);
        if status_of(&policy, &id) == KeyStatus::Revoked {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated key was never revoked"
        );
        sleep(Duration::from_millis(200));
    }
    let events = server.get("/v1/audit?limit=1", Some(&token), &[]).json();
    assert_eq!(events["data"][0]["actor"], "system");
}

#[test]
fn serve_refuses_non_loopback_addresses_and_bad_secrets() {
    let ws = Workspace::new();
    let mut args = vec![
        "serve".to_owned(),
        "--listen".into(),
        "0.0.0.0:0".into(),
        "--admin-token-file".into(),
        ws.path("admin.tokens").to_string_lossy().into_owned(),
    ];
    args.extend(ws.signing_args());
    let stderr = ws.fails(&args);
    assert!(stderr.contains("loopback"), "{stderr}");
    assert!(!ws.db().exists(), "refused before touching the store");

    std::fs::write(ws.path("weak.tokens"), "short\n").unwrap();
    args[2] = "127.0.0.1:0".into();
    args[4] = ws.path("weak.tokens").to_string_lossy().into_owned();
    assert!(ws.fails(&args).contains("32 characters"));

    std::fs::write(ws.path("weak.key"), "c2hvcnQ=\n").unwrap();
    args[4] = ws.path("admin.tokens").to_string_lossy().into_owned();
    let last = args.len() - 1;
    args[last] = ws.path("weak.key").to_string_lossy().into_owned();
    assert!(ws.fails(&args).contains("32 bytes"));
}
