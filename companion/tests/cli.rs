//! The `keyward` command against a temporary store: key secrets shown once and never stored,
//! the lifecycle reflected in signed snapshots, audit, and snapshot verification.

// Test code (helpers included): a failed unwrap or index is a failed test, as clippy.toml
// already allows inside #[test] functions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::fs;
use std::thread::sleep;
use std::time::Duration;

use common::{assert_store_never_holds, Workspace};
use keyward_engine::hash::sha256;
use keyward_engine::signed_snapshot::verify_snapshot;
use keyward_engine::snapshot::{KeyStatus, Policy, ProjectStatus};

fn policy_of(workspace: &Workspace, envelope: &[u8]) -> Policy {
    verify_snapshot(envelope, &[workspace.public_key()], common::now()).unwrap()
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
fn key_secrets_are_shown_once_and_only_hashes_are_stored() {
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

    // Human output: the plaintext on stdout once, the warning on stderr.
    let output = ws.run(&[
        "key",
        "create",
        "--project",
        "proj_a",
        "--scopes",
        "chat:write",
        "--models",
        "gpt-4o-mini,gpt-4.1*",
        "--expires-in",
        "30d",
        "--note",
        "billing service",
    ]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("only time"), "{stderr}");
    let ak_key = stdout
        .lines()
        .find_map(|line| line.strip_prefix("key: "))
        .unwrap()
        .to_owned();
    let ak_id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("key_id: "))
        .unwrap()
        .to_owned();
    assert_eq!(stdout.matches(&ak_key).count(), 1, "printed once");
    let (id_part, ak_secret) = ak_key.strip_prefix("ak_").unwrap().split_once('.').unwrap();
    assert_eq!(id_part, ak_id);
    assert_eq!(ak_id.len(), 12);
    assert_eq!(ak_secret.len(), 32);
    assert!(!stderr.contains(&ak_key));

    let (vpx_id, vpx_key) = ws.create_key(&[
        "--org",
        "org_acme",
        "--format",
        "vpx",
        "--environment",
        "test",
    ]);
    assert!(vpx_key.starts_with("vpx_test_"));
    assert!(vpx_id.starts_with("vpx"));
    let vpx_body = vpx_key.strip_prefix("vpx_test_").unwrap();

    // The store holds the hashes, and nothing of the keys' secrets.
    let ak_hash = hex::encode(sha256(ak_secret.as_bytes()));
    let vpx_hash = hex::encode(sha256(vpx_key.as_bytes()));
    assert_store_never_holds(&ws.db(), &[&ak_key, ak_secret, &vpx_key, vpx_body]);
    let conn = rusqlite::Connection::open(ws.db()).unwrap();
    let stored: (Option<String>, Option<String>) = conn
        .query_row(
            "SELECT secret_sha256, key_sha256 FROM keys WHERE id = ?1",
            [&ak_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(stored, (Some(ak_hash.clone()), None));
    let stored: (Option<String>, Option<String>) = conn
        .query_row(
            "SELECT secret_sha256, key_sha256 FROM keys WHERE id = ?1",
            [&vpx_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(stored, (None, Some(vpx_hash.clone())));
    drop(conn);

    // Listings show the metadata, never a secret or a hash.
    let forbidden = [
        ak_key.as_str(),
        ak_secret,
        &vpx_key,
        vpx_body,
        &ak_hash,
        &vpx_hash,
    ];
    for args in [
        vec!["key", "list"],
        vec!["key", "list", "--json"],
        vec!["key", "list", "--project", "proj_a"],
        vec!["key", "show", ak_id.as_str(), "--json"],
        vec!["audit", "--json"],
        vec!["audit"],
    ] {
        let printed = ws.ok(&args);
        for secret in forbidden {
            assert!(!printed.contains(secret), "{args:?} shows a secret or hash");
        }
    }
    // Lists have the admin API's shape: {"data": [...]}.
    let listed = ws.json(&["key", "list", "--json"]);
    let listed = listed["data"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let ak = listed
        .iter()
        .find(|key| key["id"] == ak_id.as_str())
        .unwrap();
    assert_eq!(ak["note"], "billing service");
    assert_eq!(ak["status"], "active");
    assert_eq!(ak["scopes"][0], "chat:write");
    assert!(ak["created_at"].as_u64().unwrap() > 0);
    assert!(ak["expires_at"].as_u64().unwrap() > ak["created_at"].as_u64().unwrap());
    assert!(ak["last_seen_at"].is_null());
    assert!(ak.get("secret_sha256").is_none() && ak.get("key_sha256").is_none());
    let table = ws.ok(&["key", "list"]);
    assert!(table.contains("LAST SEEN") && table.contains("billing service"));

    // The snapshot carries the hashes, so the filter can check both keys.
    let policy = policy_of(&ws, &ws.build_snapshot("snapshot.json"));
    assert!(policy.key_by_id(&ak_id).is_some());
    assert!(policy.key_by_hash(&sha256(vpx_key.as_bytes())).is_some());
    assert_eq!(
        policy.project("proj_a").unwrap().spend_cap_microusd,
        Some(100_000_000)
    );
}

#[test]
fn lifecycle_changes_are_reflected_in_signed_snapshots_and_audited() {
    let ws = Workspace::new();
    ws.ok(&["project", "create", "proj_a", "--org", "org_acme"]);
    ws.ok(&["project", "create", "proj_old", "--org", "org_acme"]);
    let project = ["--project", "proj_a"];
    let (revoked, _) = ws.create_key(&project);
    let (paused, _) = ws.create_key(&project);
    let (resumed, _) = ws.create_key(&project);
    let (rotated_now, _) = ws.create_key(&project);
    let (rotated_later, _) = ws.create_key(&[&project[..], &["--scopes", "chat:write"]].concat());

    let first = policy_of(&ws, &ws.build_snapshot("v1.json"));
    assert!(first
        .keys()
        .iter()
        .all(|key| key.status == KeyStatus::Active));

    ws.ok(&["--actor", "alice", "key", "revoke", &revoked]);
    let paused_out = ws
        .command()
        .env("KEYWARD_ACTOR", "bob")
        .args(["key", "pause", &paused])
        .output()
        .unwrap();
    assert!(paused_out.status.success());
    ws.ok(&["key", "pause", &resumed]);
    ws.ok(&["key", "resume", &resumed]);
    ws.ok(&["project", "archive", "proj_old"]);
    let now_rotation = ws.json(&["key", "rotate", &rotated_now, "--grace", "0s", "--json"]);
    let now_replacement = now_rotation["id"].as_str().unwrap().to_owned();
    assert_eq!(now_rotation["previous"]["status"], "revoked");
    let later_rotation = ws.json(&["key", "rotate", &rotated_later, "--grace", "2s", "--json"]);
    let later_replacement = later_rotation["id"].as_str().unwrap().to_owned();
    assert_eq!(later_rotation["scopes"][0], "chat:write", "same settings");
    assert_eq!(later_rotation["rotated_from"], rotated_later.as_str());
    assert!(later_rotation["key"].as_str().unwrap().starts_with("ak_"));

    let second = policy_of(&ws, &ws.build_snapshot("v2.json"));
    assert!(second.version > first.version);
    assert_eq!(status_of(&second, &revoked), KeyStatus::Revoked);
    assert_eq!(status_of(&second, &paused), KeyStatus::Paused);
    assert_eq!(status_of(&second, &resumed), KeyStatus::Active);
    assert_eq!(status_of(&second, &rotated_now), KeyStatus::Revoked);
    assert_eq!(status_of(&second, &now_replacement), KeyStatus::Active);
    assert_eq!(
        status_of(&second, &rotated_later),
        KeyStatus::Active,
        "in its grace"
    );
    assert_eq!(status_of(&second, &later_replacement), KeyStatus::Active);
    assert_eq!(
        second.project("proj_old").unwrap().status,
        ProjectStatus::Archived
    );

    // Past the grace deadline the old key is revoked, under a new version, by `system`.
    sleep(Duration::from_millis(3100));
    let third = policy_of(&ws, &ws.build_snapshot("v3.json"));
    assert!(third.version > second.version);
    assert_eq!(status_of(&third, &rotated_later), KeyStatus::Revoked);
    assert_eq!(status_of(&third, &later_replacement), KeyStatus::Active);

    let events = ws.json(&["audit", "--json"]);
    let events = events["data"].as_array().unwrap();
    let find = |action: &str, target: &str| {
        events
            .iter()
            .find(|event| event["action"] == action && event["target"] == target)
            .unwrap_or_else(|| panic!("no {action} event for {target}"))
    };
    assert_eq!(find("key.revoke", &revoked)["actor"], "alice");
    assert_eq!(find("key.pause", &paused)["actor"], "bob");
    assert_eq!(find("key.resume", &resumed)["actor"], "cli");
    assert_eq!(find("project.archive", "proj_old")["actor"], "cli");
    assert_eq!(
        find("key.rotate", &rotated_later)["details"]["new_key_id"],
        later_replacement.as_str()
    );
    let system = find("key.revoke", &rotated_later);
    assert_eq!(system["actor"], "system");
    assert_eq!(system["details"]["reason"], "rotation_grace_ended");
    for event in events {
        assert!(event["at"].as_u64().unwrap() > 0);
    }
    // Each change made a version, and the newest version is the snapshot's.
    let versions: Vec<u64> = events
        .iter()
        .map(|event| event["policy_version"].as_u64().unwrap())
        .collect();
    assert!(versions.windows(2).all(|pair| pair[0] <= pair[1]));
    assert_eq!(versions.last().copied(), Some(third.version));
}

#[test]
fn key_settings_change_and_bad_requests_fail_cleanly() {
    let ws = Workspace::new();
    ws.ok(&["project", "create", "proj_a", "--org", "org_acme"]);
    let (id, _) = ws.create_key(&["--project", "proj_a", "--scopes", "chat:write"]);
    ws.ok(&[
        "key",
        "set",
        &id,
        "--scopes",
        "chat:write,embeddings:write",
        "--models",
        "gpt-4o*",
        "--expires-at",
        "4000000000",
        "--spend-cap-usd",
        "12.50",
        "--label",
        "billing",
    ]);
    let shown = ws.json(&["key", "show", &id, "--json"]);
    assert_eq!(
        shown["scopes"],
        serde_json::json!(["chat:write", "embeddings:write"])
    );
    assert_eq!(shown["models"], serde_json::json!(["gpt-4o*"]));
    assert_eq!(shown["expires_at"], 4_000_000_000u64);
    assert_eq!(shown["spend_cap_microusd"], 12_500_000);
    ws.ok(&[
        "key",
        "set",
        &id,
        "--all-models",
        "--no-expiry",
        "--no-spend-cap",
    ]);
    let shown = ws.json(&["key", "show", &id, "--json"]);
    assert!(shown["models"].is_null() && shown["expires_at"].is_null());
    assert!(shown["spend_cap_microusd"].is_null());
    let policy = policy_of(&ws, &ws.build_snapshot("s.json"));
    let key = policy.key_by_id(&id).unwrap();
    assert!(key.has_scope("embeddings:write"));
    assert_eq!(key.label.as_deref(), Some("billing"));

    assert!(ws.fails(&["key", "revoke", "nosuchkey"]).contains("No key"));
    assert!(ws
        .fails(&["project", "create", "proj_a", "--org", "org_acme"])
        .contains("already exists"));
    assert!(ws
        .fails(&["project", "create", "bad id", "--org", "o"])
        .contains("id:"));
    assert!(ws
        .fails(&["key", "create", "--project", "nope"])
        .contains("No project"));
    assert!(ws
        .fails(&[
            "key",
            "create",
            "--project",
            "proj_a",
            "--spend-cap-usd",
            "1.2.3"
        ])
        .contains("USD"));
    ws.fails(&["key", "create"]);
    ws.fails(&["key", "create", "--project", "proj_a", "--org", "org_acme"]);
    ws.ok(&["key", "revoke", &id]);
    assert!(ws
        .fails(&["key", "set", &id, "--note", "x"])
        .contains("revoked"));
    assert!(ws.fails(&["key", "resume", &id]).contains("revoked"));
    assert!(ws
        .fails(&["--actor", "two words", "key", "list"])
        .contains("actor"));
}

#[test]
fn tampered_unsigned_or_foreign_snapshots_fail_verification() {
    let ws = Workspace::new();
    ws.ok(&["project", "create", "proj_a", "--org", "org_acme"]);
    let (id, _) = ws.create_key(&["--project", "proj_a"]);
    ws.ok(&["key", "pause", &id]);
    let envelope = String::from_utf8(ws.build_snapshot("good.json")).unwrap();

    let verify = |name: &str, contents: &str, key_args: Vec<String>| {
        let path = ws.path(name);
        fs::write(&path, contents).unwrap();
        let mut args = vec![
            "snapshot".to_owned(),
            "verify".to_owned(),
            path.to_string_lossy().into_owned(),
        ];
        args.extend(key_args);
        ws.run(&args)
    };

    // Un-pausing the key by editing the file breaks the signature.
    let tampered = envelope.replace("\"paused\"", "\"active\"");
    assert_ne!(tampered, envelope);
    let output = verify("tampered.json", &tampered, ws.public_key_args());
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("signature"));

    let snapshot_only: serde_json::Value = serde_json::from_str(&envelope).unwrap();
    let unsigned = snapshot_only["snapshot"].to_string();
    let output = verify("unsigned.json", &unsigned, ws.public_key_args());
    assert_eq!(output.status.code(), Some(1));

    let mut other_id = ws.public_key_args();
    other_id[1] = other_id[1].replacen("ops-1=", "ops-2=", 1);
    let output = verify("other-id.json", &envelope, other_id);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown key"));

    let other_secret = ws.path("other.key");
    ws.ok(&[
        "secret",
        "signing-key",
        "--out",
        other_secret.to_str().unwrap(),
    ]);
    let other_key = vec![
        "--public-key".to_owned(),
        format!("ops-1={}.pub", other_secret.to_string_lossy()),
    ];
    let output = verify("other-secret.json", &envelope, other_key);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("bad_signature"));

    // The private key is no public key; a past --now is refused as expired.
    let private = vec![
        "--public-key".to_owned(),
        format!("ops-1={}", ws.path("signing.key").to_string_lossy()),
    ];
    let output = verify("private.json", &envelope, private);
    assert!(String::from_utf8_lossy(&output.stderr).contains("private key"));
    let mut later = ws.public_key_args();
    later.extend(["--now".to_owned(), "4102444800".to_owned()]);
    let output = verify("later.json", &envelope, later);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("expired"));

    let output = verify("garbage.json", "not json", ws.public_key_args());
    assert_eq!(output.status.code(), Some(1));

    let output = verify("good-again.json", &envelope, ws.public_key_args());
    assert!(output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("1 keys (0 active, 1 paused, 0 revoked), 1 projects"),
        "{printed}"
    );
}

#[test]
fn hashed_keys_can_be_imported_from_a_snapshot_file() {
    let ws = Workspace::new();
    let demo: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../envoy/demo-policy.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let snapshot = ws.path("demo-snapshot.json");
    std::fs::write(&snapshot, demo["policy"].to_string()).unwrap();
    let out = ws.ok(&["snapshot", "import", snapshot.to_str().unwrap()]);
    assert!(out.contains("imported 2 projects"), "{out}");

    let policy = policy_of(&ws, &ws.build_snapshot("after-import.json"));
    let imported = &demo["policy"]["keys"];
    assert_eq!(policy.keys().len(), imported.as_array().unwrap().len());
    assert_eq!(status_of(&policy, "demoRevoked"), KeyStatus::Revoked);
    assert_eq!(status_of(&policy, "demoAlpha1"), KeyStatus::Active);
    // Same hashes: a key that worked against the inline demo policy works against this one.
    let alpha = policy.key_by_id("demoAlpha1").unwrap();
    let inline =
        keyward_engine::snapshot::Policy::from_json(demo["policy"].to_string().as_bytes()).unwrap();
    assert_eq!(alpha.lookup, inline.key_by_id("demoAlpha1").unwrap().lookup);

    // Importing again conflicts and changes nothing.
    let again = ws.fails(&["snapshot", "import", snapshot.to_str().unwrap()]);
    assert!(again.contains("already exists"), "{again}");
    let audit = ws.ok(&["audit", "--json"]);
    assert_eq!(audit.matches("snapshot.import").count(), 1, "{audit}");
}

#[test]
fn prices_caps_and_rate_limits_from_the_command_line() {
    let ws = Workspace::new();
    // Prices in USD per 1M tokens, converted exactly.
    let price = ws.json(&[
        "price", "set", "--model", "gpt-4o*", "--input", "2.50", "--output", "10", "--json",
    ]);
    assert_eq!(price["input_microusd_per_mtok"], 2_500_000);
    assert_eq!(price["output_microusd_per_mtok"], 10_000_000);
    let printed = ws.ok(&[
        "price",
        "set",
        "--model",
        "gpt-4o-mini",
        "--input",
        "$0.15",
        "--output",
        "0.60",
        "--cached-input",
        "0.075",
        "--cache-write",
        "0.1875",
    ]);
    assert!(printed.contains("cached input $0.075"), "{printed}");
    let listed = &ws.json(&["price", "list", "--json"])["data"];
    assert_eq!(listed[1]["model"], "gpt-4o-mini");
    assert_eq!(listed[1]["cached_input_microusd_per_mtok"], 75_000);
    assert_eq!(listed[1]["cache_write_microusd_per_mtok"], 187_500);
    let table = ws.ok(&["price", "list"]);
    assert!(table.contains("$2.50 (input)"), "{table}");
    assert!(ws
        .fails(&["price", "set", "--model", "*", "--input", "1", "--output", "1"])
        .contains("model"));
    assert!(ws
        .fails(&[
            "price",
            "set",
            "--model",
            "m",
            "--input",
            "0.0000001",
            "--output",
            "1"
        ])
        .contains("--input"));
    ws.ok(&["price", "remove", "--model", "gpt-4o*"]);
    assert!(ws
        .fails(&["price", "remove", "--model", "gpt-4o*"])
        .contains("No price"));
    let policy = policy_of(&ws, &ws.build_snapshot("priced.json"));
    let mini = policy.prices().price_for("gpt-4o-mini-2024").is_none();
    assert!(mini, "an exact name is not a prefix");
    let mini = policy.prices().price_for("gpt-4o-mini").unwrap();
    assert_eq!(
        (mini.input, mini.cached_input, mini.cache_write),
        (150_000, 75_000, 187_500)
    );

    // Soft caps and rate limits.
    ws.ok(&[
        "project",
        "create",
        "proj_a",
        "--org",
        "org_acme",
        "--spend-cap-usd",
        "100",
        "--soft-cap",
        "80",
    ]);
    let shown = ws.json(&["project", "show", "proj_a", "--json"]);
    assert_eq!(shown["spend_soft_cap_microusd"], 80_000_000);
    assert!(ws
        .fails(&["project", "set", "proj_a", "--spend-cap-usd", "50"])
        .contains("--spend-soft-cap-usd: the soft cap (80.00 USD) must be below the spend cap (50.00 USD)"));
    ws.ok(&[
        "project",
        "set",
        "proj_a",
        "--no-soft-cap",
        "--spend-cap-usd",
        "50",
    ]);
    let shown = ws.json(&["project", "show", "proj_a", "--json"]);
    assert!(shown["spend_soft_cap_microusd"].is_null());
    assert_eq!(shown["spend_cap_microusd"], 50_000_000);

    let (id, _) = ws.create_key(&[
        "--project",
        "proj_a",
        "--spend-cap-usd",
        "5",
        "--spend-soft-cap-usd",
        "4.5",
        "--rpm",
        "60",
        "--tpm",
        "100000",
    ]);
    let shown = ws.json(&["key", "show", &id, "--json"]);
    assert_eq!(shown["spend_soft_cap_microusd"], 4_500_000);
    assert_eq!(
        shown["rate_limits"],
        serde_json::json!({"requests_per_minute": 60, "tokens_per_minute": 100000})
    );
    let text = ws.ok(&["key", "show", &id]);
    assert!(
        text.contains("$0.00 of $5.00 cap (0%), soft cap $4.50"),
        "{text}"
    );
    assert!(
        text.contains("60 requests/min, 100000 tokens/min"),
        "{text}"
    );
    let table = ws.ok(&["key", "list"]);
    assert!(
        table.contains("SOFT CAP") && table.contains("60rpm,100000tpm"),
        "{table}"
    );

    ws.ok(&["key", "set", &id, "--no-rpm", "--soft-cap", "4"]);
    let shown = ws.json(&["key", "show", &id, "--json"]);
    assert_eq!(
        shown["rate_limits"],
        serde_json::json!({"tokens_per_minute": 100000})
    );
    assert_eq!(shown["spend_soft_cap_microusd"], 4_000_000);
    assert!(ws
        .fails(&["key", "set", &id, "--rpm", "0"])
        .contains("rate_limits"));
    assert!(ws
        .fails(&["key", "set", &id, "--soft-cap", "5"])
        .contains("--spend-soft-cap-usd: the soft cap (5.00 USD) must be below the spend cap"));
    ws.ok(&["key", "set", &id, "--no-tpm", "--no-soft-cap"]);
    let shown = ws.json(&["key", "show", &id, "--json"]);
    assert!(shown["rate_limits"].is_null() && shown["spend_soft_cap_microusd"].is_null());

    let policy = policy_of(&ws, &ws.build_snapshot("limited.json"));
    assert_eq!(policy.key_by_id(&id).unwrap().rate_limits, None);
    assert_eq!(
        policy.project("proj_a").unwrap().spend_cap_microusd,
        Some(50_000_000)
    );
    let spend = ws.ok(&["spend", "--project", "proj_a"]);
    assert!(spend.contains("PROJECT") && spend.contains(&id), "{spend}");
    let actions: Vec<String> = ws.json(&["audit", "--json"])["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["action"].as_str().unwrap().to_owned())
        .collect();
    for expected in ["price.set", "price.remove", "project.update", "key.update"] {
        assert!(actions.iter().any(|a| a == expected), "{expected}");
    }
}

#[test]
fn a_store_written_by_the_previous_schema_keeps_working() {
    let ws = Workspace::new();
    let conn = rusqlite::Connection::open(ws.db()).unwrap();
    conn.execute_batch(
        r#"
CREATE TABLE policy_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
INSERT INTO policy_version (id, version) VALUES (1, 4);
CREATE TABLE projects (id TEXT PRIMARY KEY, org TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'archived', 'suspended')),
    spend_cap_microusd INTEGER, spent_microusd INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL, archived_at INTEGER);
CREATE TABLE keys (id TEXT PRIMARY KEY, format TEXT NOT NULL CHECK (format IN ('ak', 'vpx')),
    secret_sha256 TEXT, key_sha256 TEXT UNIQUE, project TEXT REFERENCES projects (id), org TEXT,
    environment TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'paused', 'revoked')),
    scopes TEXT NOT NULL, models TEXT, expires_at INTEGER, spend_cap_microusd INTEGER,
    spent_microusd INTEGER NOT NULL DEFAULT 0, label TEXT, note TEXT,
    created_at INTEGER NOT NULL, last_seen_at INTEGER, rotated_from TEXT REFERENCES keys (id),
    revoke_at INTEGER, revoked_at INTEGER,
    CHECK ((secret_sha256 IS NULL) <> (key_sha256 IS NULL)),
    CHECK ((project IS NULL) <> (org IS NULL)));
CREATE TABLE audit_events (id INTEGER PRIMARY KEY AUTOINCREMENT, at INTEGER NOT NULL,
    actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, details TEXT NOT NULL,
    policy_version INTEGER NOT NULL);
INSERT INTO projects (id, org, status, spend_cap_microusd, spent_microusd, created_at)
    VALUES ('proj_old', 'org_1', 'active', 9000000, 1500000, 50);
INSERT INTO keys (id, format, secret_sha256, project, environment, status, scopes,
                  spent_microusd, created_at)
    VALUES ('kOldKey00001', 'ak',
            'f55ff16f66f43360266b95db6f8fec01d76031054306ae4a4b380598f6cfd114',
            'proj_old', 'live', 'active', '["chat:write"]', 1000000, 60);
PRAGMA user_version = 1;
"#,
    )
    .unwrap();
    drop(conn);

    let keys = &ws.json(&["key", "list", "--json"])["data"];
    assert_eq!(keys[0]["id"], "kOldKey00001");
    assert_eq!(keys[0]["spent_microusd"], 1_000_000);
    assert!(keys[0]["rate_limits"].is_null());
    ws.ok(&["key", "set", "kOldKey00001", "--rpm", "30"]);
    let policy = policy_of(&ws, &ws.build_snapshot("migrated.json"));
    assert_eq!(policy.version, 5);
    let key = policy.key_by_id("kOldKey00001").unwrap();
    assert_eq!(key.rate_limits.unwrap().requests_per_minute, Some(30));
    assert_eq!(key.spent_microusd, 1_000_000);
    let conn = rusqlite::Connection::open(ws.db()).unwrap();
    // Versioned migrations now: the history names every one, and user_version 3 keeps a
    // keyward from before them (which knows up to 2) from opening the store.
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, 3);
    let migrations: i64 = conn
        .query_row("SELECT COUNT(*) FROM refinery_schema_history", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(migrations, 8);
}

/// Issue #19: every CLI mistake a new user made gets a message in their terms.
#[test]
fn mistakes_get_messages_that_name_the_flag_and_the_values() {
    let ws = Workspace::new();
    ws.ok(&[
        "project",
        "create",
        "proj_a",
        "--org",
        "org_acme",
        "--spend-cap-usd",
        "250",
    ]);
    let cases: [(&[&str], &str); 9] = [
        (
            &["project", "set", "proj_a", "--soft-cap", "300"],
            "--spend-soft-cap-usd: the soft cap (300.00 USD) must be below the spend cap (250.00 USD)",
        ),
        (
            &["project", "set", "proj_a", "--spend-cap-usd", "-5"],
            "--spend-cap-usd: \"-5\": an amount in USD must not be negative",
        ),
        (
            &["project", "set", "proj_a", "--spend-cap-usd", "lots"],
            "--spend-cap-usd: \"lots\" is not an amount in USD",
        ),
        (
            &["key", "create", "--project", "proj_a", "--expires-in", "0d"],
            "--expires-in 0d: the key would be born expired",
        ),
        (
            &["key", "create", "--project", "proj_a", "--expires-at", "1000"],
            "the key would expire at 1970-01-01T00:16:40Z (Unix 1000), which is not after now",
        ),
        (
            &["key", "create", "--project", "proj_a", "--expires-in", "soon"],
            "--expires-in: \"soon\" is not a duration",
        ),
        (
            &["key", "create", "--project", "proj_a", "--scopes", "chat write"],
            "--scopes: \"chat write\" is not a valid entry",
        ),
        (
            &["key", "create", "--project", "proj_a", "--models", "gpt 4o"],
            "--models: \"gpt 4o\" is not a valid entry",
        ),
        (
            &["key", "create", "--org", "org_nope"],
            "--org org_nope: no project belongs to this org",
        ),
    ];
    for (args, message) in cases {
        let printed = ws.fails(args);
        assert!(printed.contains(message), "{args:?}: {printed}");
    }
    // A store in a directory that does not exist.
    let printed = ws.fails(&["--db", "/nonexistent-keyward-dir/keyward.db", "init"]);
    assert!(
        printed.contains("the directory /nonexistent-keyward-dir does not exist"),
        "{printed}"
    );
    // Every unit the help lists is accepted.
    let help = ws.ok(&["key", "create", "--help"]);
    assert!(help.contains("w (weeks)"), "{help}");
    for duration in ["90s", "90m", "12h", "30d", "3w", "1w2d"] {
        ws.ok(&[
            "key",
            "create",
            "--project",
            "proj_a",
            "--expires-in",
            duration,
        ]);
    }
    // A signed envelope given to import.
    ws.build_snapshot("snapshot.json");
    let envelope = ws.path("snapshot.json");
    let printed = ws.fails(&["snapshot", "import", envelope.to_str().unwrap()]);
    assert!(
        printed.contains(&format!(
            "is a signed envelope (signed with key {:?})",
            common::SIGNING_KEY_ID
        )) && printed.contains("keyward snapshot verify"),
        "{printed}"
    );
}
