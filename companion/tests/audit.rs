//! `keyward audit --config …` and `keyward explain` against the fixture snapshot and plugin
//! configurations in `tests/fixtures/audit/`: the report matches the committed expected JSON,
//! `--fail-on` sets the exit code, and `explain` walks the decision table for an allowed and a
//! denied key without printing any hash.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::thread;

use serde_json::Value;

/// The time every decision is made at, so expiries in the fixture are stable.
const NOW: &str = "1800000000";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/audit")
        .join(name)
}

/// The fixture's public key, as the filters and `audit --public-key` take it.
struct Keys;

impl Keys {
    fn new() -> Keys {
        Keys
    }

    fn signing_args(&self) -> Vec<String> {
        vec![
            "--public-key".into(),
            format!("ops-1={}", fixture("signing.key.pub").to_string_lossy()),
        ]
    }
}

fn keyward(args: &[String]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_keyward"))
        .current_dir(dir.path())
        .env("KEYWARD_DB", dir.path().join("unused.db"))
        .env_remove("KEYWARD_SIGNING_KEY_ID")
        .env_remove("KEYWARD_SIGNING_KEY_FILE")
        .args(args)
        .output()
        .unwrap()
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| (*part).to_owned()).collect()
}

fn path_arg(name: &str) -> String {
    fixture(name).to_string_lossy().into_owned()
}

fn audit_args(snapshot: &str, config: &str, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["audit", "--snapshot"]);
    args.push(path_arg(snapshot));
    args.push("--config".into());
    args.push(path_arg(config));
    args.extend(strings(&["--now", NOW]));
    args.extend(strings(extra));
    args
}

fn code(output: &Output) -> i32 {
    output.status.code().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// Every stored hash of the fixture snapshot: none may ever be printed.
fn fixture_hashes() -> Vec<String> {
    let snapshot: Value =
        serde_json::from_slice(&fs::read(fixture("snapshot.plain.json")).unwrap()).unwrap();
    snapshot["keys"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|key| {
            ["secret_sha256", "key_sha256"]
                .iter()
                .filter_map(|field| key[*field].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn assert_no_hash(text: &str) {
    for hash in fixture_hashes() {
        assert!(!text.contains(&hash), "a stored hash was printed");
    }
    let secret = fs::read_to_string(fixture("signing.key")).unwrap();
    assert!(
        !text.contains(secret.trim()),
        "the signing secret was printed"
    );
}

#[test]
fn report_matches_the_expected_report() {
    let keys = Keys::new();
    let mut args = audit_args(
        "snapshot.signed.json",
        "config.risky.json",
        &["--json", "--unused-days", "90"],
    );
    args.extend(keys.signing_args());
    let output = keyward(&args);
    assert_eq!(
        code(&output),
        2,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = stdout(&output);
    assert_no_hash(&text);
    let actual: Value = serde_json::from_str(&text).unwrap();
    let expected: Value =
        serde_json::from_slice(&fs::read(fixture("expected.risky.json")).unwrap()).unwrap();
    assert_eq!(
        actual, expected,
        "report differs from tests/fixtures/audit/expected.risky.json:\n{text}"
    );

    // The table shows the same findings and the per-route decisions.
    let mut args = audit_args("snapshot.signed.json", "config.risky.json", &[]);
    args.extend(keys.signing_args());
    let output = keyward(&args);
    assert_eq!(code(&output), 2);
    let table = stdout(&output);
    assert_no_hash(&table);
    assert!(table.contains("HIGH      fail_open"), "{table}");
    assert!(table.contains("deny:environment_mismatch"), "{table}");
    assert!(table.contains("deny:spend_cap_exceeded"), "{table}");
}

#[test]
fn fail_on_sets_the_exit_code() {
    let keys = Keys::new();
    let run = |snapshot: &str, config: &str, extra: &[&str], signed: bool| {
        let mut args = audit_args(snapshot, config, extra);
        if signed {
            args.extend(keys.signing_args());
        }
        code(&keyward(&args))
    };
    // The strict configuration: its worst findings are medium.
    assert_eq!(
        run("snapshot.signed.json", "config.strict.json", &[], true),
        0
    );
    assert_eq!(
        run(
            "snapshot.signed.json",
            "config.strict.json",
            &["--fail-on", "high"],
            true
        ),
        0
    );
    assert_eq!(
        run(
            "snapshot.signed.json",
            "config.strict.json",
            &["--fail-on", "medium"],
            true
        ),
        2
    );
    assert_eq!(
        run(
            "snapshot.signed.json",
            "config.strict.json",
            &["--fail-on", "low"],
            true
        ),
        2
    );
    // Risky settings: fail-open is high.
    assert_eq!(
        run("snapshot.signed.json", "config.risky.json", &[], true),
        2
    );
    // An unsigned snapshot, or a signature nobody checked, is high.
    assert_eq!(
        run("snapshot.plain.json", "config.strict.json", &[], false),
        2
    );
    assert_eq!(
        run("snapshot.signed.json", "config.strict.json", &[], false),
        2
    );

    let mut args = audit_args("snapshot.plain.json", "config.strict.json", &["--json"]);
    args.extend(keys.signing_args());
    let report: Value = serde_json::from_str(&stdout(&keyward(&args))).unwrap();
    let codes: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|finding| finding["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"snapshot_unsigned"), "{codes:?}");
}

#[test]
fn a_tampered_snapshot_is_an_error() {
    let keys = Keys::new();
    let text = fs::read_to_string(fixture("snapshot.signed.json")).unwrap();
    let tampered = text.replace("\"scopes\":[\"chat:write\"]", "\"scopes\":[\"*\"]");
    assert_ne!(tampered, text);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tampered.json");
    fs::write(&path, tampered).unwrap();
    let mut args = strings(&["audit", "--snapshot"]);
    args.push(path.to_string_lossy().into_owned());
    args.push("--config".into());
    args.push(path_arg("config.strict.json"));
    args.extend(keys.signing_args());
    let output = keyward(&args);
    assert_eq!(code(&output), 1);
    assert!(String::from_utf8_lossy(&output.stderr).contains("bad_signature"));
}

#[test]
fn the_snapshot_can_come_from_a_control_plane() {
    let keys = Keys::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let body = fs::read(fixture("snapshot.signed.json")).unwrap();
    let server = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buffer = [0u8; 1024];
        while !request.windows(4).any(|window| window == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).unwrap();
            assert!(read > 0);
            request.extend_from_slice(&buffer[..read]);
        }
        let head = format!(
            "HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body).unwrap();
        String::from_utf8(request).unwrap()
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("dataplane.token");
    fs::write(&token_file, "kwdp_audit_test_token\n").unwrap();
    let mut args = strings(&["audit", "--control-plane"]);
    args.push(format!("http://{address}"));
    args.push("--snapshot-token-file".into());
    args.push(token_file.to_string_lossy().into_owned());
    args.push("--config".into());
    args.push(path_arg("config.strict.json"));
    args.extend(strings(&["--now", NOW, "--json"]));
    args.extend(keys.signing_args());
    let output = keyward(&args);
    let request = server.join().unwrap();
    assert!(request.starts_with("GET /v1/snapshot "), "{request}");
    assert!(
        request
            .to_ascii_lowercase()
            .contains("authorization: bearer kwdp_audit_test_token"),
        "{request}"
    );
    assert_eq!(
        code(&output),
        0,
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["snapshot"]["signature"]["state"], "verified");
    assert_eq!(report["keys"].as_array().unwrap().len(), 9);
}

fn explain(key: &str, route: &str, extra: &[&str]) -> Output {
    let mut args = strings(&["explain", "--key-id", key, "--route", route, "--snapshot"]);
    args.push(path_arg("snapshot.signed.json"));
    args.push("--config".into());
    args.push(path_arg("config.strict.json"));
    args.extend(strings(&["--now", NOW]));
    args.extend(strings(extra));
    keyward(&args)
}

#[test]
fn explain_walks_the_decision_table() {
    // Allowed: a live key with the scope and an allowed model on the chat route.
    let output = explain("kAlphaLive01", "chat", &["--model", "gpt-4.1-mini"]);
    assert_eq!(code(&output), 0);
    let text = stdout(&output);
    assert_no_hash(&text);
    assert!(text.contains("PASS   environment allowed"), "{text}");
    assert!(text.contains("PASS   model allowed"), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert!(
        text.lines().last().unwrap().starts_with("decision: allow"),
        "{text}"
    );
    assert!(!text.contains("warning"), "{text}");

    // Denied: the same key lacks the embeddings scope; later checks are skipped.
    let output = explain("kAlphaLive01", "embeddings", &[]);
    let text = stdout(&output);
    assert_no_hash(&text);
    assert!(text.contains("FAIL   scopes"), "{text}");
    assert!(text.contains("missing embeddings:write"), "{text}");
    assert!(
        !text.contains("spend cap"),
        "the trace ends at the failing row: {text}"
    );
    assert!(
        text.contains("decision: deny 403 insufficient_scope"),
        "{text}"
    );

    // The JSON form, for a test key on a live-only route.
    let output = explain("kAlphaTest01", "chat", &["--json"]);
    let body: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(body["decision"], "deny");
    assert_eq!(body["code"], "environment_mismatch");
    assert_eq!(body["status"], 403);
    let failed: Vec<&Value> = body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|step| step["result"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["row"], "8");
    assert_eq!(failed[0]["code"], "environment_mismatch");

    // An org key must name a project where the route requires one; with one, it passes.
    let output = explain("vpxSvcOps001", "projects", &["--json"]);
    let body: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(body["code"], "project_required");
    let output = explain(
        "vpxSvcOps001",
        "projects",
        &["--json", "--project", "proj_beta"],
    );
    let body: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(body["decision"], "allow");

    // Every key on every route: a decision, and a deny is the code of the one failing row.
    for key in [
        "kAlphaLive01",
        "kAlphaTest01",
        "kBetaLive001",
        "kRevoked0001",
        "kPaused00001",
        "kExpired0001",
        "kOverCap0001",
        "kOldProj0001",
        "vpxSvcOps001",
    ] {
        for route in ["health", "chat", "embeddings", "projects", "(fallback)"] {
            let output = explain(key, route, &["--json", "--origin"]);
            let body: Value = serde_json::from_str(&stdout(&output)).unwrap();
            let failed: Vec<&Value> = body["steps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|step| step["result"] == "fail")
                .collect();
            match body["decision"].as_str().unwrap() {
                "deny" => {
                    assert_eq!(failed.len(), 1, "{key} on {route}");
                    assert_eq!(failed[0]["code"], body["code"], "{key} on {route}");
                }
                "allow" | "exempt" => assert!(failed.is_empty(), "{key} on {route}"),
                other => panic!("{key} on {route}: {other}"),
            }
        }
    }

    // An unknown key: the answer is named, with the snapshot it is not in.
    let output = explain("kNobody00001", "chat", &[]);
    assert_ne!(code(&output), 0);
    assert!(String::from_utf8_lossy(&output.stderr).contains("401 invalid_api_key"));
}

/// The subjects of the `key_unused` findings, and the notes, of a strict-config report decided
/// at `now`.
fn unused_report(keys: &Keys, now: &str, extra: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut args = strings(&["audit", "--json", "--now", now, "--snapshot"]);
    args.push(path_arg("snapshot.signed.json"));
    args.push("--config".into());
    args.push(path_arg("config.strict.json"));
    args.extend(strings(extra));
    args.extend(keys.signing_args());
    let output = keyward(&args);
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let subjects = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|finding| finding["code"] == "key_unused")
        .map(|finding| {
            assert_eq!(finding["severity"], "medium");
            finding["subject"].as_str().unwrap().to_owned()
        })
        .collect();
    let notes = report["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|note| note.as_str().unwrap().to_owned())
        .collect();
    (subjects, notes)
}

#[test]
fn unused_keys_are_measured_from_the_snapshot_issue_time() {
    let keys = Keys::new();
    // The default is 30 days: a test key last used 115 days before issue, a live key created
    // 173 days before issue and never used. The revoked and paused keys are not flagged.
    let (subjects, notes) = unused_report(&keys, NOW, &[]);
    assert_eq!(subjects, ["kAlphaTest01", "kBetaLive001"]);
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(
        notes[0].contains("1 active key(s) carry neither") && notes[0].ends_with("kOldProj0001"),
        "{notes:?}"
    );
    // The threshold moves the line: the org key was created 11.6 days before issue.
    let (subjects, _) = unused_report(&keys, NOW, &["--unused-days", "10"]);
    assert_eq!(subjects, ["kAlphaTest01", "kBetaLive001", "vpxSvcOps001"]);
    let (subjects, _) = unused_report(&keys, NOW, &["--unused-days", "150"]);
    assert_eq!(subjects, ["kBetaLive001"]);
    // 0 turns the check off, note included.
    let (subjects, notes) = unused_report(&keys, NOW, &["--unused-days", "0"]);
    assert!(subjects.is_empty() && notes.is_empty(), "{notes:?}");
    // Measured from issued_at, not from --now: a later evaluation time changes nothing.
    let (later, _) = unused_report(&keys, "1810000000", &[]);
    assert_eq!(later, ["kAlphaTest01", "kBetaLive001"]);

    // The table shows the last use; explain shows soft caps and rate limits.
    let mut args = audit_args("snapshot.signed.json", "config.strict.json", &[]);
    args.extend(keys.signing_args());
    let table = stdout(&keyward(&args));
    assert!(table.contains("LAST USED"), "{table}");
    assert!(table.contains("key_unused"), "{table}");
    assert!(table.contains("2026-11-18T08:20:00Z"), "{table}");
    let text = stdout(&explain(
        "kAlphaLive01",
        "chat",
        &["--model", "gpt-4o-mini"],
    ));
    assert!(
        text.contains("spent 1.00 of 5.00 USD; soft cap 4.00 USD"),
        "{text}"
    );
    assert!(
        text.contains("PASS   rate limit") && text.contains("requests: 59 of 60 left"),
        "{text}"
    );
    assert!(text.lines().last().unwrap().starts_with("decision: allow"));
}

#[test]
fn metered_routes_with_unpriced_models_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    fs::write(
        &config,
        r#"{"routes": [{"name": "chat", "match": {"path_prefix": "/v1/chat/"}, "meter": true},
                       {"name": "plain", "match": {"path_prefix": "/v1/models"}}],
            "unmatched_paths": "deny", "metering": {"unpriced_model": "allow"}}"#,
    )
    .unwrap();
    let snapshot = dir.path().join("snapshot.json");
    fs::write(
        &snapshot,
        r#"{"version": 1, "issued_at": 1795000000,
            "projects": [{"id": "p", "org": "o", "status": "active"}],
            "plans": [{"id": "free", "models": ["gpt-5.4-nano", "gemini-flash-lite*"]}],
            "keys": [{"id": "k1", "secret_sha256": "f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114",
                      "project": "p", "status": "active", "models": ["gpt-4o-mini", "o3"],
                      "limits": {"plan": "free"}}],
            "prices": [{"model": "gpt-4o*", "input_microusd_per_mtok": 1, "output_microusd_per_mtok": 1}]}"#,
    )
    .unwrap();
    let args = strings(&[
        "audit",
        "--snapshot",
        &snapshot.to_string_lossy(),
        "--config",
        &config.to_string_lossy(),
        "--now",
        NOW,
        "--json",
    ]);
    let output = keyward(&args);
    let report: Value = serde_json::from_str(&stdout(&output)).unwrap();
    let found: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|finding| finding["code"] == "metered_model_unpriced")
        .collect();
    assert_eq!(found.len(), 1, "{report}");
    assert_eq!(found[0]["subject"], "route:chat");
    assert_eq!(
        found[0]["severity"], "high",
        "unpriced_model: allow lets them through"
    );
    let message = found[0]["message"].as_str().unwrap();
    assert!(message.contains("gpt-5.4-nano, o3"), "{message}");
    assert!(
        !message.contains("gpt-4o-mini"),
        "priced by the gpt-4o* prefix"
    );
}
