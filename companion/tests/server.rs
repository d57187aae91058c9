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

use std::process::Child;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{Workspace, ADMIN_NAME};
use keyward_engine::hash::sha256;
use keyward_engine::signed_snapshot::verify_snapshot;
use keyward_engine::snapshot::{KeyStatus, Policy};
use keyward_engine::usage_report::{UsageAck, UsageEntry, UsageReport};
use serde_json::{json, Value};

/// A running `keyward serve`, stopped when dropped.
struct Server {
    child: Child,
    base: String,
    agent: ureq::Agent,
    /// A data-plane token (snapshot and usage), as the filters hold it.
    dataplane: String,
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
        // Each usage batch makes its version at once, so a test can read it back directly;
        // the interval mode is covered by the store's tests and the Envoy tests.
        "--spend-publish-ms".into(),
        "0".into(),
    ];
    args.extend(ws.signing_args());
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let dataplane = ws.dataplane_token();
    let (child, base) = common::spawn_serve(ws, &args);
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
        dataplane,
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
            "PUT" => self.agent.put(url),
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

    fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.send_raw("PUT", path, token, &body.to_string())
    }

    fn delete(&self, path: &str, token: &str) -> Reply {
        Server::reply(
            self.agent
                .delete(format!("{}{path}", self.base))
                .header("authorization", format!("Bearer {token}"))
                .call(),
        )
    }

    /// POSTs a usage report body as the data plane does: with a bearer token (`None`: none).
    fn usage_as(&self, body: &[u8], token: Option<&str>) -> Reply {
        let mut request = self
            .agent
            .post(format!("{}/v1/usage", self.base))
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        Server::reply(request.send(body))
    }

    /// POSTs a usage report body with the workspace's data-plane token.
    fn usage(&self, body: &[u8]) -> Reply {
        self.usage_as(body, Some(&self.dataplane))
    }

    /// GETs a snapshot endpoint with the data-plane token.
    fn dataplane_get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.get(path, Some(&self.dataplane), headers)
    }

    /// Fetches and verifies the snapshot; returns it with its ETag.
    fn snapshot(&self, ws: &Workspace) -> (Policy, String, Vec<u8>) {
        let reply = self.dataplane_get("/v1/snapshot", &[]);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.header("content-type").as_deref(),
            Some("application/json")
        );
        let etag = reply.header("etag").unwrap();
        let policy = verify_snapshot(&reply.body, &[ws.public_key()], common::now()).unwrap();
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

    // A data-plane token (or an admin token), never nothing.
    let reply = server.get("/v1/snapshot", None, &[]);
    assert_eq!(
        reply.error(401, "authentication_error"),
        "missing_dataplane_token"
    );
    assert_eq!(
        reply.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"keyward-dataplane\"")
    );
    for path in ["/v1/snapshot/manifest", "/v1/snapshot/chunks/00"] {
        let reply = server.get(path, Some("kwdp_guessed"), &[]);
        assert_eq!(
            reply.error(401, "authentication_error"),
            "invalid_dataplane_token"
        );
    }
    assert_eq!(server.get("/v1/snapshot", Some(&token), &[]).status, 200);
    let (policy, etag, body) = server.snapshot(&ws);
    let expires_at = policy.expires_at.unwrap();
    assert_eq!(expires_at, policy.issued_at + 86_400, "24 h by default");
    assert_eq!(status_of(&policy, &id), KeyStatus::Active);
    let (again, etag_again, body_again) = server.snapshot(&ws);
    assert_eq!(
        (etag_again.as_str(), &body_again),
        (etag.as_str(), &body),
        "cached bytes"
    );
    assert_eq!(again.version, policy.version);

    let reply = server.dataplane_get("/v1/snapshot", &[("if-none-match", &etag)]);
    assert_eq!(reply.status, 304);
    assert!(reply.body.is_empty());
    assert_eq!(reply.header("etag"), Some(etag.clone()));
    let reply = server.dataplane_get("/v1/snapshot", &[("if-none-match", "\"0-0\"")]);
    assert_eq!(reply.status, 200);

    // A change: new version, new ETag, the old one no longer matches.
    server.post(&format!("/v1/keys/{id}/revoke"), &token, None);
    let reply = server.dataplane_get("/v1/snapshot", &[("if-none-match", &etag)]);
    assert_eq!(reply.status, 200);
    let (changed, changed_etag, _) = server.snapshot(&ws);
    assert_eq!(changed.version, policy.version + 1);
    assert_ne!(changed_etag, etag);
    assert_eq!(status_of(&changed, &id), KeyStatus::Revoked);
    let reply = server.dataplane_get("/v1/snapshot", &[("if-none-match", &changed_etag)]);
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
    let reply = server.dataplane_get("/v1/snapshot", &[("if-none-match", &first_etag)]);
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
    let mut short_ttl = args.clone();
    short_ttl[2] = "127.0.0.1:0".into();
    short_ttl.extend(["--snapshot-ttl".to_owned(), "1s".to_owned()]);
    assert!(ws.fails(&short_ttl).contains("at least 2s"));

    std::fs::write(ws.path("weak.tokens"), "short\n").unwrap();
    args[2] = "127.0.0.1:0".into();
    args[4] = ws.path("weak.tokens").to_string_lossy().into_owned();
    assert!(ws.fails(&args).contains("32 characters"));

    // A shared HMAC secret of an older keyward is no signing key any more.
    std::fs::write(
        ws.path("hmac.key"),
        "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==\n",
    )
    .unwrap();
    args[4] = ws.path("admin.tokens").to_string_lossy().into_owned();
    let last = args.len() - 1;
    args[last] = ws.path("hmac.key").to_string_lossy().into_owned();
    assert!(ws.fails(&args).contains("HMAC"));
}

fn usage_entry(key_id: &str, project: Option<&str>, cost: u64, last_used_at: u64) -> UsageEntry {
    UsageEntry {
        key_id: key_id.to_owned(),
        project: project.map(str::to_owned),
        cost_microusd: cost,
        requests: 3,
        input_tokens: 1200,
        output_tokens: 300,
        last_used_at: Some(last_used_at),
        key_windows: vec![],
        project_windows: vec![],
        provider_key: None,
    }
}

fn body_of(report: &UsageReport) -> Vec<u8> {
    serde_json::to_vec(report).unwrap()
}

fn ack(reply: &Reply) -> UsageAck {
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    serde_json::from_slice(&reply.body).unwrap()
}

/// The plain snapshot inside an envelope, as JSON (for fields the compiled policy drops).
fn snapshot_json(envelope: &[u8]) -> Value {
    let envelope: Value = serde_json::from_slice(envelope).unwrap();
    envelope["snapshot"].clone()
}

fn key_json<'a>(snapshot: &'a Value, id: &str) -> &'a Value {
    snapshot["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["id"] == id)
        .unwrap()
}

#[test]
fn usage_reports_are_applied_once_and_reach_the_next_snapshot() {
    let ws = Workspace::new();
    ws.ok(&[
        "project",
        "create",
        "proj_a",
        "--org",
        "org_acme",
        "--spend-cap-usd",
        "100",
    ]);
    let (id, _) = ws.create_key(&["--project", "proj_a", "--spend-cap-usd", "5"]);
    let server = start(&ws, &[]);
    let token = ws.admin_token();
    let (before, before_etag, _) = server.snapshot(&ws);

    let report = UsageReport::new(
        "envoy-1",
        "envoy-1-0001",
        vec![
            usage_entry(&id, Some("proj_a"), 1_250_000, 1_790_000_000),
            usage_entry(&id, Some("proj_a"), 75_001, 1_790_000_100),
        ],
    );
    let body = body_of(&report);
    let first = ack(&server.usage(&body));
    assert_eq!(
        first,
        UsageAck {
            batch_id: "envoy-1-0001".into(),
            version: before.version + 1,
            duplicate: false
        }
    );

    // The next snapshot: a new version and ETag, carrying the exact spend and the last use.
    let (after, after_etag, envelope) = server.snapshot(&ws);
    assert_eq!(after.version, first.version);
    assert_ne!(after_etag, before_etag);
    assert_eq!(after.key_by_id(&id).unwrap().spent_microusd, 1_325_001);
    assert_eq!(after.project("proj_a").unwrap().spent_microusd, 1_325_001);
    let plain = snapshot_json(&envelope);
    assert_eq!(key_json(&plain, &id)["last_used_at"], 1_790_000_100u64);
    assert!(key_json(&plain, &id)["created_at"].as_u64().is_some());

    // A retry: the same acknowledgement, marked duplicate; nothing changes.
    let again = ack(&server.usage(&body));
    assert_eq!((again.version, again.duplicate), (first.version, true));
    let reply = server.dataplane_get("/v1/snapshot", &[("if-none-match", &after_etag)]);
    assert_eq!(reply.status, 304, "no new version for a duplicate");

    // The admin API shows the spend.
    let shown = server
        .get(&format!("/v1/keys/{id}"), Some(&token), &[])
        .json();
    assert_eq!(shown["spent_microusd"], 1_325_001);
    assert_eq!(shown["spend_cap_microusd"], 5_000_000);
    assert!(shown["spend_soft_cap_microusd"].is_null());
    assert!(shown["rate_limits"].is_null());
    assert_eq!(shown["last_seen_at"], 1_790_000_100u64);
    let projects = server.get("/v1/projects", Some(&token), &[]).json();
    assert_eq!(projects["data"][0]["spent_microusd"], 1_325_001);
    assert_eq!(projects["data"][0]["spend_cap_microusd"], 100_000_000);
    let batches = server
        .get("/v1/usage/batches?limit=5", Some(&token), &[])
        .json();
    let batches = batches["data"].as_array().unwrap();
    assert_eq!(batches.len(), 1);
    // Batch ids are kept per data-plane token: another fleet cannot take this one's.
    assert_eq!(batches[0]["batch_id"], "fleet-test/envoy-1-0001");
    assert_eq!(batches[0]["policy_version"], first.version);
    assert_eq!(
        (
            &batches[0]["entries"],
            &batches[0]["applied"],
            &batches[0]["skipped"]
        ),
        (&json!(2), &json!(2), &json!(0))
    );
    server
        .get("/v1/usage/batches", None, &[])
        .error(401, "authentication_error");
    let events = server.get("/v1/audit", Some(&token), &[]).json();
    let usage_events: Vec<&Value> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["action"] == "usage.report")
        .collect();
    assert_eq!(usage_events.len(), 1, "one event per batch");
    assert_eq!(
        usage_events[0]["actor"], "dataplane:fleet-test/envoy-1",
        "the token names the actor, never the report"
    );
    assert_eq!(usage_events[0]["details"]["cost_microusd"], 1_325_001);

    // The CLI sees the same figures.
    let spend = ws.json(&["spend", "--json"]);
    assert_eq!(spend["keys"][0]["spent_microusd"], 1_325_001);
    assert_eq!(spend["projects"][0]["spent_microusd"], 1_325_001);
    let table = ws.ok(&["spend"]);
    assert!(table.contains("$1.325001"), "{table}");
    assert!(table.contains("26%"), "{table}");
    let shown = ws.ok(&["key", "show", &id]);
    assert!(shown.contains("$1.325001 of $5.00 cap (26%)"), "{shown}");
    assert!(ws.ok(&["usage", "batches"]).contains("envoy-1-0001"));
}

#[test]
fn usage_reports_need_a_data_plane_token_and_a_valid_body() {
    let ws = Workspace::new();
    ws.ok(&["project", "create", "proj_a", "--org", "org_acme"]);
    let (id, _) = ws.create_key(&["--project", "proj_a"]);
    let server = start(&ws, &[]);
    let token = ws.admin_token();
    let report = UsageReport::new("envoy-1", "b-1", vec![usage_entry(&id, None, 10, 1)]);
    let body = body_of(&report);

    // No token, a guessed one, an admin token, a snapshot-only or a revoked data-plane token.
    let reply = server.usage_as(&body, None);
    assert_eq!(
        reply.error(401, "authentication_error"),
        "missing_dataplane_token"
    );
    let reply = server.usage_as(&body, Some("kwdp_guessed"));
    assert_eq!(
        reply.error(401, "authentication_error"),
        "invalid_dataplane_token"
    );
    let reply = server.usage_as(&body, Some(&token));
    assert_eq!(
        reply.error(401, "authentication_error"),
        "invalid_dataplane_token",
        "an admin token cannot report usage"
    );
    let reader = ws.json(&[
        "dataplane",
        "token",
        "create",
        "--name",
        "reader",
        "--permissions",
        "snapshot",
        "--json",
    ]);
    let reader = reader["token"].as_str().unwrap();
    let reply = server.usage_as(&body, Some(reader));
    assert_eq!(
        reply.error(403, "permission_error"),
        "dataplane_permission_denied"
    );
    assert_eq!(server.get("/v1/snapshot", Some(reader), &[]).status, 200);
    let revoked = ws.json(&["dataplane", "token", "create", "--name", "gone", "--json"]);
    ws.ok(&["dataplane", "token", "revoke", "gone"]);
    let revoked = revoked["token"].as_str().unwrap();
    for reply in [
        server.usage_as(&body, Some(revoked)),
        server.get("/v1/snapshot", Some(revoked), &[]),
    ] {
        assert_eq!(
            reply.error(401, "authentication_error"),
            "invalid_dataplane_token"
        );
    }

    // A valid token, but not a valid report: 400.
    let wrong_format = br#"{"format":"other","reporter":"r","batch_id":"b","entries":[]}"#;
    let reply = server.usage(wrong_format);
    assert_eq!(reply.error(400, "invalid_request_error"), "invalid_report");
    let reply = server.usage(b"{not json");
    assert_eq!(reply.error(400, "invalid_request_error"), "invalid_report");
    let empty_batch = body_of(&UsageReport::new("r", "", vec![]));
    let reply = server.usage(&empty_batch);
    assert_eq!(reply.error(400, "invalid_request_error"), "invalid_report");

    // Nothing was applied by any of these.
    let shown = server
        .get(&format!("/v1/keys/{id}"), Some(&token), &[])
        .json();
    assert_eq!(shown["spent_microusd"], 0);
    assert!(shown["last_seen_at"].is_null());

    // A full batch is far over the admin API's 64 KiB: the usage endpoint takes it.
    let entries: Vec<UsageEntry> = (0..2000)
        .map(|n| usage_entry(&id, Some("proj_a"), 1, 1_790_000_000 + n))
        .collect();
    let big = body_of(&UsageReport::new("envoy-1", "big", entries));
    assert!(big.len() > 64 * 1024);
    let applied = ack(&server.usage(&big));
    assert!(!applied.duplicate);
    let shown = server
        .get(&format!("/v1/keys/{id}"), Some(&token), &[])
        .json();
    assert_eq!(shown["spent_microusd"], 2000);
    assert_eq!(shown["last_seen_at"], 1_790_001_999u64);
    // Over 4 MiB: 413 in the error contract.
    let huge = vec![b' '; 4 * 1024 * 1024 + 1];
    let reply = server.usage(&huge);
    assert_eq!(
        reply.error(413, "invalid_request_error"),
        "report_too_large"
    );
}

#[test]
fn forged_reports_are_refused_whole_and_kept_for_audit() {
    let ws = Workspace::new();
    for (project, org, cap) in [
        ("proj_a", "org_acme", "100"),
        ("proj_x", "org_other", "100"),
    ] {
        ws.ok(&[
            "project",
            "create",
            project,
            "--org",
            org,
            "--spend-cap-usd",
            cap,
        ]);
    }
    let (id, _) = ws.create_key(&["--project", "proj_a"]);
    let server = start(&ws, &[]);
    let token = ws.admin_token();
    let version = server.snapshot(&ws).0.version;

    // Issue #14's forgery: $99 on one request, a last use in 2100, the admin token's name as
    // reporter, and a charge against another org's project.
    let mut forged = usage_entry(&id, Some("proj_a"), 99_000_000, 4_102_444_800);
    forged.requests = 1;
    let report = UsageReport::new(
        ADMIN_NAME,
        "forged-1",
        vec![forged, usage_entry(&id, Some("proj_x"), 10, 1_790_000_000)],
    );
    let reply = server.usage(&body_of(&report));
    assert_eq!(
        reply.error(400, "invalid_request_error"),
        "usage_report_refused"
    );
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("in the future"), "{message}");
    assert!(
        message.contains("cannot charge project \"proj_x\""),
        "{message}"
    );
    assert!(message.contains("cost 99000000"), "{message}");
    // A charge against another project alone is refused too.
    let report = UsageReport::new(
        "envoy-1",
        "cross-1",
        vec![usage_entry(&id, Some("proj_x"), 10, 1_790_000_000)],
    );
    server
        .usage(&body_of(&report))
        .error(400, "invalid_request_error");

    // Nothing moved: no spend, no last use, no version, no batch.
    let shown = server
        .get(&format!("/v1/keys/{id}"), Some(&token), &[])
        .json();
    assert_eq!(shown["spent_microusd"], 0);
    assert!(shown["last_seen_at"].is_null());
    assert_eq!(server.snapshot(&ws).0.version, version);
    let batches = server.get("/v1/usage/batches", Some(&token), &[]).json();
    assert!(batches["data"].as_array().unwrap().is_empty());

    // Both are kept, named by the data-plane token, and audited as the data plane.
    let refused = server.get("/v1/usage/refused", Some(&token), &[]).json();
    let refused = refused["data"].as_array().unwrap();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[1]["batch_id"], "forged-1");
    assert_eq!(refused[1]["token_name"], "fleet-test");
    assert_eq!(refused[1]["cost_microusd"], 99_000_010u64);
    assert!(refused[1]["body"].as_str().unwrap().contains("4102444800"));
    let events = server.get("/v1/audit", Some(&token), &[]).json();
    let refusals: Vec<&Value> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| event["action"] == "usage.refused")
        .collect();
    assert_eq!(refusals.len(), 2);
    assert!(refusals
        .iter()
        .all(|event| event["actor"] == "dataplane:fleet-test"));
    assert!(ws.ok(&["usage", "refused"]).contains("forged-1"));
    server
        .get("/v1/usage/refused", None, &[])
        .error(401, "authentication_error");
}

#[test]
fn dataplane_tokens_over_the_admin_api() {
    let ws = Workspace::new();
    let server = start(&ws, &[]);
    let token = ws.admin_token();
    let created = server.post(
        "/v1/dataplane-tokens",
        &token,
        Some(json!({"name": "fleet-b", "permissions": ["snapshot"]})),
    );
    assert_eq!(created.status, 201);
    let created = created.json();
    let fleet_b = created["token"].as_str().unwrap().to_owned();
    assert!(fleet_b.starts_with("kwdp_"));
    assert_eq!(created["permissions"], json!(["snapshot"]));
    assert_eq!(created["created_by"], ADMIN_NAME);
    assert_eq!(server.get("/v1/snapshot", Some(&fleet_b), &[]).status, 200);
    let listed = server.get("/v1/dataplane-tokens", Some(&token), &[]).json();
    let text = listed.to_string();
    assert!(
        text.contains("fleet-b") && !text.contains(&fleet_b),
        "never the token"
    );
    let revoked = server.post("/v1/dataplane-tokens/fleet-b/revoke", &token, None);
    assert_eq!(revoked.status, 200);
    assert!(revoked.json()["revoked_at"].as_u64().is_some());
    assert_eq!(server.get("/v1/snapshot", Some(&fleet_b), &[]).status, 401);
    server
        .post("/v1/dataplane-tokens", &fleet_b, Some(json!({"name": "x"})))
        .error(401, "authentication_error");
    // A data-plane token opens no admin endpoint.
    let dataplane = server.dataplane.clone();
    server
        .get("/v1/keys", Some(&dataplane), &[])
        .error(401, "authentication_error");
}

#[test]
fn concurrent_duplicate_reports_are_applied_once() {
    let ws = Workspace::new();
    ws.ok(&["project", "create", "proj_a", "--org", "org_acme"]);
    let (id, _) = ws.create_key(&["--project", "proj_a"]);
    let server = start(&ws, &[]);
    let token = ws.admin_token();
    let report = UsageReport::new(
        "envoy-1",
        "envoy-1-race",
        vec![usage_entry(&id, Some("proj_a"), 333_333, 1_790_000_000)],
    );
    let body = body_of(&report);
    let posts = 16;
    let barrier = std::sync::Barrier::new(posts);
    let acks: Vec<UsageAck> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..posts)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    ack(&server.usage(&body))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    assert_eq!(acks.iter().filter(|ack| !ack.duplicate).count(), 1);
    assert!(acks.iter().all(|ack| ack.version == acks[0].version));
    let shown = server
        .get(&format!("/v1/keys/{id}"), Some(&token), &[])
        .json();
    assert_eq!(shown["spent_microusd"], 333_333, "applied once");
    let (policy, _, _) = server.snapshot(&ws);
    assert_eq!(policy.version, acks[0].version);
    assert_eq!(policy.key_by_id(&id).unwrap().spent_microusd, 333_333);

    // One batch is recorded.
    let batches = server.get("/v1/usage/batches", Some(&token), &[]).json();
    assert_eq!(batches["data"].as_array().unwrap().len(), 1);
}

#[test]
fn prices_caps_and_rate_limits_over_the_admin_api() {
    let ws = Workspace::new();
    let server = start(&ws, &[]);
    let token = ws.admin_token();

    // Prices: USD strings or numbers, converted exactly.
    let reply = server.put(
        "/v1/prices/gpt-4o*",
        &token,
        json!({"input_usd_per_mtok": "2.50", "output_usd_per_mtok": 10}),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let price = reply.json();
    assert_eq!(price["model"], "gpt-4o*");
    assert_eq!(price["input_microusd_per_mtok"], 2_500_000);
    assert_eq!(price["output_microusd_per_mtok"], 10_000_000);
    assert!(price["cached_input_microusd_per_mtok"].is_null());
    let reply = server.put(
        "/v1/prices/gpt-4o-mini",
        &token,
        json!({"input_usd_per_mtok": 0.15, "output_usd_per_mtok": "0.6",
               "cached_input_usd_per_mtok": 0.075, "cache_write_microusd_per_mtok": 187_500}),
    );
    assert_eq!(reply.json()["cached_input_microusd_per_mtok"], 75_000);
    assert_eq!(reply.json()["input_microusd_per_mtok"], 150_000);
    assert_eq!(reply.json()["cache_write_microusd_per_mtok"], 187_500);
    let listed = server.get("/v1/prices", Some(&token), &[]).json();
    let models: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|price| price["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["gpt-4o*", "gpt-4o-mini"]);
    let one = server.get("/v1/prices/gpt-4o-mini", Some(&token), &[]);
    assert_eq!(one.json()["output_microusd_per_mtok"], 600_000);
    let (policy, _, envelope) = server.snapshot(&ws);
    assert_eq!(
        policy
            .prices()
            .price_for("gpt-4o-2024-08-06")
            .unwrap()
            .input,
        2_500_000
    );
    assert_eq!(
        snapshot_json(&envelope)["prices"][1]["cached_input_microusd_per_mtok"],
        75_000
    );

    for (path, body, code) in [
        (
            "/v1/prices/*",
            json!({"input_usd_per_mtok": 1, "output_usd_per_mtok": 1}),
            "invalid_field",
        ),
        (
            "/v1/prices/m",
            json!({"input_usd_per_mtok": 1}),
            "invalid_field",
        ),
        (
            "/v1/prices/m",
            json!({"input_usd_per_mtok": "-1", "output_usd_per_mtok": 1}),
            "invalid_amount",
        ),
        (
            "/v1/prices/m",
            json!({"input_usd_per_mtok": 0.0000001, "output_usd_per_mtok": 1}),
            "invalid_amount",
        ),
        (
            "/v1/prices/m",
            json!({"input_usd_per_mtok": 1, "input_microusd_per_mtok": 1, "output_usd_per_mtok": 1}),
            "invalid_field",
        ),
        (
            "/v1/prices/m",
            json!({"input_usd_per_mtok": 1, "output_usd_per_mtok": 1, "colour": 1}),
            "invalid_json",
        ),
    ] {
        let reply = server.put(path, &token, body.clone());
        assert_eq!(
            reply.error(400, "invalid_request_error"),
            code,
            "{path} {body}"
        );
    }
    let reply = server.delete("/v1/prices/gpt-4o*", &token);
    assert_eq!(reply.json()["model"], "gpt-4o*");
    let reply = server.delete("/v1/prices/gpt-4o*", &token);
    assert_eq!(reply.error(404, "invalid_request_error"), "price_not_found");
    server
        .get("/v1/prices", None, &[])
        .error(401, "authentication_error");

    // Projects: a soft cap below the cap, changeable.
    let reply = server.post(
        "/v1/projects",
        &token,
        Some(
            json!({"id": "proj_a", "org": "org_acme", "spend_cap_microusd": 10_000_000,
                    "spend_soft_cap_microusd": 8_000_000}),
        ),
    );
    assert_eq!(reply.json()["spend_soft_cap_microusd"], 8_000_000);
    let reply = server.patch(
        "/v1/projects/proj_a",
        &token,
        json!({"spend_soft_cap_microusd": 12_000_000}),
    );
    assert_eq!(reply.error(400, "invalid_request_error"), "invalid_field");
    let reply = server.patch(
        "/v1/projects/proj_a",
        &token,
        json!({"spend_cap_microusd": 20_000_000, "spend_soft_cap_microusd": 12_000_000}),
    );
    assert_eq!(reply.json()["spend_cap_microusd"], 20_000_000);
    let shown = server.get("/v1/projects/proj_a", Some(&token), &[]).json();
    assert_eq!(shown["spend_soft_cap_microusd"], 12_000_000);
    assert_eq!(shown["spent_microusd"], 0);

    // Keys: rate limits and a soft cap, changed one limit at a time.
    let reply = server.post(
        "/v1/keys",
        &token,
        Some(json!({"project": "proj_a", "spend_cap_microusd": 5_000_000,
                    "spend_soft_cap_microusd": 4_000_000,
                    "rate_limits": {"requests_per_minute": 60}})),
    );
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let created = reply.json();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["rate_limits"], json!({"requests_per_minute": 60}));
    assert_eq!(created["spend_soft_cap_microusd"], 4_000_000);
    let path = format!("/v1/keys/{id}");
    let reply = server.patch(
        &path,
        &token,
        json!({"rate_limits": {"tokens_per_minute": 50_000}}),
    );
    assert_eq!(
        reply.json()["rate_limits"],
        json!({"requests_per_minute": 60, "tokens_per_minute": 50_000})
    );
    let (policy, _, _) = server.snapshot(&ws);
    let key = policy.key_by_id(&id).unwrap();
    assert_eq!(key.rate_limits.unwrap().tokens_per_minute, Some(50_000));
    assert_eq!(key.spend_soft_cap_microusd, Some(4_000_000));
    assert_eq!(
        policy.project("proj_a").unwrap().spend_soft_cap_microusd,
        Some(12_000_000)
    );
    let reply = server.patch(
        &path,
        &token,
        json!({"rate_limits": {"requests_per_minute": null}}),
    );
    assert_eq!(
        reply.json()["rate_limits"],
        json!({"tokens_per_minute": 50_000})
    );
    let reply = server.patch(
        &path,
        &token,
        json!({"rate_limits": null, "spend_soft_cap_microusd": null}),
    );
    assert!(reply.json()["rate_limits"].is_null());
    assert!(reply.json()["spend_soft_cap_microusd"].is_null());
    for body in [
        json!({"rate_limits": {"requests_per_minute": 0}}),
        json!({"spend_soft_cap_microusd": 5_000_000}),
    ] {
        let reply = server.patch(&path, &token, body.clone());
        assert_eq!(
            reply.error(400, "invalid_request_error"),
            "invalid_field",
            "{body}"
        );
    }
    let reply = server.patch(&path, &token, json!({"rate_limits": {"per_hour": 1}}));
    assert_eq!(reply.error(400, "invalid_request_error"), "invalid_json");

    // Every change is audited.
    let events = server.get("/v1/audit", Some(&token), &[]).json();
    let actions: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["action"].as_str().unwrap())
        .collect();
    for expected in [
        "price.set",
        "price.remove",
        "project.create",
        "project.update",
        "key.update",
    ] {
        assert!(actions.contains(&expected), "{expected}: {actions:?}");
    }
}

/// `keyward --server BASE --token-file … ARGS` with `stdin` on standard input, from a directory
/// without a store.
fn remote_cli(ws: &Workspace, base: &str, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    std::fs::create_dir_all(ws.path("elsewhere")).unwrap();
    let mut child = ws
        .command()
        .env_remove("KEYWARD_DB")
        .env_remove("KEYWARD_PROVIDER_KEK_FILE")
        .current_dir(ws.path("elsewhere"))
        .args(["--server", base, "--token-file"])
        .arg(ws.path("admin.tokens"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn provider_keys_over_the_admin_api_never_show_the_key() {
    let ws = Workspace::new();
    ws.ok(&["project", "create", "proj_a", "--org", "org_1"]);
    let (api_key, _) = ws.create_key(&["--project", "proj_a"]);
    let token = ws.admin_token();
    let secret = "sk-proj-Secret0001Alpha";
    let org_secret = "sk-org-Secret0002Beta";
    let rotated = "sk-proj-Secret0003Gamma";
    let remote_secret = "sk-ant-Secret0004Delta";
    let create = json!({"provider": "openai", "project": "proj_a", "key": secret, "name": "prod"});
    let mut answers = String::new();

    // No KEK: storing and rotating answer 503; listing works.
    {
        let server = start(&ws, &[]);
        let reply = server.post("/v1/provider-keys", &token, Some(create.clone()));
        assert_eq!(reply.error(503, "api_error"), "provider_kek_not_configured");
        answers.push_str(&String::from_utf8_lossy(&reply.body));
        let reply = server.post(
            "/v1/provider-keys/project/openai/proj_a/rotate",
            &token,
            Some(json!({"key": secret})),
        );
        assert_eq!(reply.error(503, "api_error"), "provider_kek_not_configured");
        let listed = server.get("/v1/provider-keys", Some(&token), &[]);
        assert_eq!((listed.status, listed.json()), (200, json!({"data": []})));
    }
    ws.ok(&[
        "secret",
        "provider-kek",
        "--out",
        ws.path("kek").to_str().unwrap(),
    ]);
    ws.ok(&[
        "secret",
        "fleet-key",
        "--out",
        ws.path("fleet.key").to_str().unwrap(),
    ]);
    let kek_file = ws.path("kek");
    let kek = ["--provider-kek-file", kek_file.to_str().unwrap()];
    // A KEK but no fleet key: keys could not be sealed, so none are stored.
    {
        let server = start(&ws, &kek);
        let reply = server.post("/v1/provider-keys", &token, Some(create.clone()));
        assert_eq!(
            reply.error(503, "api_error"),
            "provider_sealing_not_configured"
        );
    }
    let mut args = kek.to_vec();
    let public = ws.path("fleet.key.pub");
    args.extend(["--fleet-public-key-file", public.to_str().unwrap()]);
    let server = start(&ws, &args);

    // The admin token is required.
    let reply = server.post(
        "/v1/provider-keys",
        "not-the-admin-token",
        Some(create.clone()),
    );
    assert_eq!(
        reply.error(401, "authentication_error"),
        "invalid_admin_token"
    );
    let reply = server.get("/v1/provider-keys", None, &[]);
    assert_eq!(
        reply.error(401, "authentication_error"),
        "missing_admin_token"
    );
    let reply = server.delete("/v1/provider-keys/project/openai/proj_a", &server.dataplane);
    reply.error(401, "authentication_error");

    // Clear 4xx answers, none of which repeats the key.
    let invalid = [
        (
            json!({"provider": secret, "project": "proj_a", "key": secret}),
            400,
            "unknown_provider",
        ),
        (
            json!({"provider": "openai", "project": "proj_a", "org": "org_1", "key": secret}),
            400,
            "invalid_owner",
        ),
        (
            json!({"provider": "openai", "key": secret}),
            400,
            "invalid_owner",
        ),
        (
            json!({"provider": "openai", "project": "nope", "key": secret}),
            404,
            "project_not_found",
        ),
        (
            json!({"provider": "openai", "org": "org_nobody", "key": secret}),
            400,
            "unknown_org",
        ),
        (
            json!({"provider": "openai", "project": "proj_a", "key": "two words"}),
            400,
            "invalid_provider_key",
        ),
        (
            json!({"provider": "openai", "project": "proj_a", "key": ""}),
            400,
            "invalid_provider_key",
        ),
        (
            json!({"provider": "openai", "project": "proj_a", "key": 12345}),
            400,
            "invalid_json",
        ),
        (
            json!({"provider": "openai", "project": "proj_a", "key": secret, "extra": secret}),
            400,
            "invalid_json",
        ),
        (
            json!({"provider": "openai", "project": "proj_a", "key": secret, "name": "a\nb"}),
            400,
            "invalid_name",
        ),
    ];
    for (body, status, code) in invalid {
        let reply = server.post("/v1/provider-keys", &token, Some(body.clone()));
        assert_eq!(reply.error(status, "invalid_request_error"), code, "{body}");
        answers.push_str(&String::from_utf8_lossy(&reply.body));
    }
    assert!(!answers.contains("12345"), "a value is never quoted back");

    // Create: 201 with the metadata and the last 4 characters only.
    let reply = server.post("/v1/provider-keys", &token, Some(create.clone()));
    assert_eq!(
        reply.status,
        201,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.header("cache-control").as_deref(), Some("no-store"));
    answers.push_str(&String::from_utf8_lossy(&reply.body));
    let created = reply.json();
    assert_eq!(
        (
            &created["provider"],
            &created["owner"],
            &created["owner_id"]
        ),
        (&json!("openai"), &json!("project"), &json!("proj_a"))
    );
    assert_eq!(
        (&created["name"], &created["last4"]),
        (&json!("prod"), &json!("lpha"))
    );
    assert!(created["created_at"].as_u64().is_some());
    assert!(created["last_used_at"].is_null());
    let again = server.post("/v1/provider-keys", &token, Some(create.clone()));
    assert_eq!(
        again.error(409, "invalid_request_error"),
        "provider_key_exists"
    );
    let org = json!({"provider": "openai", "org": "org_1", "key": org_secret});
    assert_eq!(
        server.post("/v1/provider-keys", &token, Some(org)).status,
        201
    );

    // Rotate: the new key's last 4, the name, creation time and row kept.
    let reply = server.post(
        "/v1/provider-keys/project/openai/proj_a/rotate",
        &token,
        Some(json!({"key": rotated})),
    );
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    answers.push_str(&String::from_utf8_lossy(&reply.body));
    let after = reply.json();
    assert_eq!(
        (&after["last4"], &after["name"]),
        (&json!("amma"), &json!("prod"))
    );
    assert_eq!(after["created_at"], created["created_at"]);
    assert!(after["rotated_at"].as_u64().is_some());
    for (path, code) in [
        (
            "/v1/provider-keys/org/mistral/org_1/rotate",
            "provider_key_not_found",
        ),
        (
            "/v1/provider-keys/team/openai/proj_a/rotate",
            "invalid_scope",
        ),
        (
            "/v1/provider-keys/project/acme/proj_a/rotate",
            "unknown_provider",
        ),
    ] {
        let reply = server.post(path, &token, Some(json!({"key": rotated})));
        let status = if code == "provider_key_not_found" {
            404
        } else {
            400
        };
        assert_eq!(reply.error(status, "invalid_request_error"), code, "{path}");
    }

    // Traffic with the project's key, reported by the data plane: its last use.
    let used_at = common::now() - 5;
    let entry = UsageEntry {
        provider_key: Some("project/openai".to_owned()),
        ..usage_entry(&api_key, Some("proj_a"), 10, used_at)
    };
    let report = UsageReport::new("envoy-1", "pk-1", vec![entry]);
    ack(&server.usage(&body_of(&report)));
    let listed = server.get("/v1/provider-keys", Some(&token), &[]);
    assert_eq!(listed.status, 200);
    answers.push_str(&String::from_utf8_lossy(&listed.body));
    let rows = listed.json()["data"].as_array().unwrap().clone();
    assert_eq!(rows.len(), 2);
    let project_row = rows.iter().find(|row| row["owner"] == "project").unwrap();
    assert_eq!(project_row["last_used_at"], used_at);
    let org_row = rows.iter().find(|row| row["owner"] == "org").unwrap();
    assert!(org_row["last_used_at"].is_null());
    assert!(rows.iter().all(|row| row.get("ciphertext").is_none()));

    // The served snapshot carries the keys sealed, never in the clear.
    let (_, _, envelope) = server.snapshot(&ws);
    assert!(snapshot_json(&envelope)["provider_keys"].is_object());

    // The remote CLI: the key from standard input or a file, never an argument.
    let base = server.base.clone();
    let cli_add = [
        "provider-key",
        "add",
        "--provider",
        "anthropic",
        "--org",
        "org_1",
        "--name",
        "remote",
        "--json",
    ];
    let output = remote_cli(&ws, &base, &cli_add, &format!("{remote_secret}\n"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (&shown["last4"], &shown["name"]),
        (&json!("elta"), &json!("remote"))
    );
    answers.push_str(&String::from_utf8_lossy(&output.stdout));
    let output = remote_cli(&ws, &base, &["provider-key", "list"], "");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(
        table.contains("LAST USED") && table.contains("…elta") && table.contains("remote"),
        "{table}"
    );
    answers.push_str(&table);
    std::fs::write(ws.path("new.key"), format!("{remote_secret}X\n")).unwrap();
    let key_file = ws.path("new.key");
    let rotate = [
        "provider-key",
        "rotate",
        "--provider",
        "anthropic",
        "--org",
        "org_1",
        "--key-file",
        key_file.to_str().unwrap(),
    ];
    let output = remote_cli(&ws, &base, &rotate, "");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    answers.push_str(&String::from_utf8_lossy(&output.stdout));
    let remove = [
        "provider-key",
        "remove",
        "--provider",
        "anthropic",
        "--org",
        "org_1",
    ];
    assert!(remote_cli(&ws, &base, &remove, "").status.success());
    let output = remote_cli(&ws, &base, &remove, "");
    assert!(String::from_utf8_lossy(&output.stderr).contains("provider_key_not_found"));

    // Delete over HTTP.
    let reply = server.delete("/v1/provider-keys/org/openai/org_1", &token);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["last4"], "Beta");
    let reply = server.delete("/v1/provider-keys/org/openai/org_1", &token);
    assert_eq!(
        reply.error(404, "invalid_request_error"),
        "provider_key_not_found"
    );

    // Every change audited with the admin token's name; no key anywhere.
    let audit = server.get("/v1/audit", Some(&token), &[]).json();
    let changes: Vec<(String, String, String)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|event| {
            event["action"]
                .as_str()
                .unwrap()
                .starts_with("provider_key.")
        })
        .map(|event| {
            (
                event["actor"].as_str().unwrap().to_owned(),
                event["action"].as_str().unwrap().to_owned(),
                event["target"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("provider_key.add", "project/openai/proj_a"),
        ("provider_key.add", "org/openai/org_1"),
        ("provider_key.rotate", "project/openai/proj_a"),
        ("provider_key.add", "org/anthropic/org_1"),
        ("provider_key.rotate", "org/anthropic/org_1"),
        ("provider_key.remove", "org/anthropic/org_1"),
        ("provider_key.remove", "org/openai/org_1"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(action, target)| {
            (
                ADMIN_NAME.to_owned(),
                (*action).to_owned(),
                (*target).to_owned(),
            )
        })
        .collect();
    assert_eq!(changes, expected);
    answers.push_str(&audit.to_string());
    let secrets = [secret, org_secret, rotated, remote_secret];
    for secret in secrets {
        assert!(!answers.contains(secret), "an answer holds a provider key");
        assert!(
            !String::from_utf8_lossy(&envelope).contains(secret),
            "the snapshot holds one"
        );
    }
    drop(server);
    common::assert_store_never_holds(&ws.db(), &secrets);
}
