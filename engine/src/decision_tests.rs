//! The decision table, row by row, on a small policy.

use super::*;
use crate::config::PluginConfig;
use crate::request::Header;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const NOW: u64 = 1_800_000_000;
const SECRET: &str = "s3cr3tS3cr3tS3cr3tXY";
const GOOD: &str = "ak_good1.s3cr3tS3cr3tS3cr3tXY";
const ORG_KEY: &str = "vpx_live_orgkeyorgkeyorgkeyorgkey1";
const TEST_KEY: &str = "vpx_test_testkeytestkeytestkeytest";

fn digest(text: &str) -> String {
    hex::encode(sha256(text.as_bytes()))
}

fn id_key(id: &str, extra: &str) -> String {
    format!(
        r#"{{"id": "{id}", "secret_sha256": "{}", "project": "proj_a", "status": "active",
            "scopes": ["chat:write"] {extra}}}"#,
        digest(SECRET)
    )
}

fn config(extra_top: &str) -> PluginConfig {
    let keys = [
        id_key("good1", r#", "models": ["gpt-4o*"], "label": "svc""#),
        id_key("revoked1", r#", "status": "revoked""#).replace(r#""status": "active","#, ""),
        id_key("paused1", "").replace(r#""status": "active""#, r#""status": "paused""#),
        id_key("expired1", &format!(r#", "expires_at": {NOW}"#)),
        id_key("archived1", "").replace("proj_a", "proj_old"),
        id_key("noscope1", "").replace(r#"["chat:write"]"#, "[]"),
        id_key(
            "capped1",
            r#", "spend_cap_microusd": 1000000, "spent_microusd": 1000000"#,
        ),
        id_key("projcap1", "").replace("proj_a", "proj_capped"),
        format!(
            r#"{{"id": "org1", "key_sha256": "{}", "org": "org_1", "status": "active", "scopes": ["*"]}}"#,
            digest(ORG_KEY)
        ),
        format!(
            r#"{{"id": "test1", "key_sha256": "{}", "project": "proj_a", "status": "active",
                "environment": "test", "scopes": ["*"]}}"#,
            digest(TEST_KEY)
        ),
    ];
    let json = format!(
        r#"{{ {extra_top}
        "routes": [
          {{"name": "health", "match": {{"path_prefix": "/healthz"}}, "exempt": true}},
          {{"name": "chat", "match": {{"path_prefix": "/v1/chat/"}}, "scopes": ["chat:write"],
            "environments": ["live"], "project": {{"header": "x-project-id"}},
            "model": {{"header": "x-model"}}, "deny_browser_requests": true}},
          {{"name": "projects", "match": {{"path_prefix": "/v1/projects/"}},
            "project": {{"path_pattern": "/v1/projects/{{project}}/"}}, "require_project": true}},
          {{"name": "q", "match": {{"path_prefix": "/q/"}}, "query_parameter": "api_key"}}
        ],
        "policy": {{"version": 9, "issued_at": {issued}, "projects": [
            {{"id": "proj_a", "org": "org_1", "status": "active"}},
            {{"id": "proj_b", "org": "org_1", "status": "active"}},
            {{"id": "proj_old", "org": "org_1", "status": "archived"}},
            {{"id": "proj_capped", "org": "org_1", "status": "active", "spend_cap_microusd": 5, "spent_microusd": 7}},
            {{"id": "proj_other", "org": "org_2", "status": "active"}}
          ], "keys": [{keys}]}}
        }}"#,
        issued = NOW - 10,
        keys = keys.join(",")
    );
    PluginConfig::from_json(json.as_bytes()).expect("test configuration is valid")
}

fn outcome_code(config: &PluginConfig, headers: &[(&str, &str)]) -> Option<&'static str> {
    let list: Vec<Header> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect();
    let request = Request::new(&list, None);
    let route = config.settings.route_for(&request);
    decide(
        &config.settings,
        route,
        &request,
        config.policy.as_ref(),
        NOW,
    )
    .deny_code()
    .map(DenyCode::as_str)
}

fn chat(key: &str, extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (":method", "POST".to_owned()),
        (":path", "/v1/chat/completions".to_owned()),
        ("authorization", format!("Bearer {key}")),
        ("x-model", "gpt-4o-mini".to_owned()),
    ];
    headers.extend(extra.iter().map(|(n, v)| (*n, (*v).to_owned())));
    headers
}

fn code_for(config: &PluginConfig, headers: &[(&'static str, String)]) -> Option<&'static str> {
    let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    outcome_code(config, &pairs)
}

fn other_key(id: &str) -> String {
    format!("ak_{id}.{SECRET}")
}

#[test]
fn every_row_of_the_decision_table() {
    let config = config("");
    type Row = (
        &'static str,
        Vec<(&'static str, String)>,
        Option<&'static str>,
    );
    let rows: Vec<Row> = vec![
        ("allowed", chat(GOOD, &[]), None),
        ("exempt", vec![(":path", "/healthz".to_owned())], None),
        (
            "missing",
            vec![(":path", "/v1/chat/x".to_owned())],
            Some("missing_api_key"),
        ),
        (
            "malformed",
            chat("sk-proj-abc", &[]),
            Some("malformed_api_key"),
        ),
        (
            "unknown id",
            chat(&other_key("nobody"), &[]),
            Some("invalid_api_key"),
        ),
        (
            "wrong secret",
            chat("ak_good1.wrongwrongwrongwrong", &[]),
            Some("invalid_api_key"),
        ),
        (
            "revoked",
            chat(&other_key("revoked1"), &[]),
            Some("key_revoked"),
        ),
        (
            "expired",
            chat(&other_key("expired1"), &[]),
            Some("key_expired"),
        ),
        (
            "paused",
            chat(&other_key("paused1"), &[]),
            Some("key_paused"),
        ),
        (
            "archived",
            chat(&other_key("archived1"), &[]),
            Some("project_archived"),
        ),
        (
            "environment",
            chat(TEST_KEY, &[]),
            Some("environment_mismatch"),
        ),
        (
            "project mismatch",
            chat(GOOD, &[("x-project-id", "proj_b")]),
            Some("project_mismatch"),
        ),
        (
            "own project named",
            chat(GOOD, &[("x-project-id", "proj_a")]),
            None,
        ),
        (
            "browser origin",
            chat(GOOD, &[("origin", "https://app.example")]),
            Some("browser_request_denied"),
        ),
        (
            "browser fetch",
            chat(GOOD, &[("sec-fetch-mode", "cors")]),
            Some("browser_request_denied"),
        ),
        (
            "scope",
            chat(&other_key("noscope1"), &[]),
            Some("insufficient_scope"),
        ),
        (
            "key cap",
            chat(&other_key("capped1"), &[]),
            Some("spend_cap_exceeded"),
        ),
        (
            "project cap",
            chat(&other_key("projcap1"), &[]),
            Some("spend_cap_exceeded"),
        ),
    ];
    for (name, headers, expected) in rows {
        assert_eq!(code_for(&config, &headers), expected, "row {name}");
    }
}

#[test]
fn model_allow_list() {
    let config = config("");
    let mut headers = chat(GOOD, &[]);
    headers.retain(|(n, _)| *n != "x-model");
    assert_eq!(
        code_for(&config, &headers),
        Some("model_not_allowed"),
        "unnamed model"
    );
    headers.push(("x-model", "claude-3".to_owned()));
    assert_eq!(code_for(&config, &headers), Some("model_not_allowed"));
    // A key without an allow-list may use any model.
    let unrestricted = chat(&other_key("noscope1"), &[]);
    let config_no_scopes = config;
    assert_eq!(
        code_for(&config_no_scopes, &unrestricted),
        Some("insufficient_scope")
    );
}

#[test]
fn org_keys_name_projects_of_their_org() {
    let config = config("");
    let on = |path: &str| {
        vec![
            (":method", "GET".to_owned()),
            (":path", path.to_owned()),
            ("x-api-key", ORG_KEY.to_owned()),
        ]
    };
    assert_eq!(code_for(&config, &on("/v1/projects/proj_b/runs")), None);
    assert_eq!(
        code_for(&config, &on("/v1/projects/proj_other/runs")),
        Some("project_mismatch")
    );
    assert_eq!(
        code_for(&config, &on("/v1/projects/nope/runs")),
        Some("project_mismatch")
    );
    assert_eq!(
        code_for(&config, &on("/v1/projects/proj_old/runs")),
        Some("project_archived")
    );
    assert_eq!(
        code_for(&config, &on("/v1/projects/")),
        Some("project_required")
    );
    // A project key acting on its own project through the path.
    let own = vec![
        (":path", "/v1/projects/proj_a/runs".to_owned()),
        ("authorization", format!("Bearer {GOOD}")),
    ];
    assert_eq!(code_for(&config, &own), None);
}

#[test]
fn allowed_identity_is_complete() {
    let config = config("");
    let list: Vec<Header> = chat(GOOD, &[])
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.into_bytes()))
        .collect();
    let request = Request::new(&list, None);
    let route = config.settings.route_for(&request);
    let Outcome::Allow(identity) = decide(
        &config.settings,
        route,
        &request,
        config.policy.as_ref(),
        NOW,
    ) else {
        panic!("expected allow");
    };
    assert_eq!(identity.key.id, "good1");
    assert_eq!(identity.project.map(|p| p.id.as_str()), Some("proj_a"));
    assert_eq!(identity.org, "org_1");
    assert_eq!(identity.environment, "live");
}

#[test]
fn policy_availability() {
    let mut config = config("");
    let headers = chat(GOOD, &[]);
    let stale = config.policy.clone();
    config.policy = None;
    assert_eq!(code_for(&config, &headers), Some("policy_unavailable"));
    let mut open =
        super::super::config::PluginConfig::from_json(br#"{"policy_unavailable": "fail_open"}"#)
            .expect("valid");
    let pairs: Vec<Header> = headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
        .collect();
    let request = Request::new(&pairs, None);
    let route = open.settings.route_for(&request);
    assert_eq!(
        decide(&open.settings, route, &request, None, NOW),
        Outcome::FailOpen
    );
    // A policy older than the maximum age is unusable.
    open.settings.max_policy_age_seconds = 5;
    let route = open.settings.route_for(&request);
    assert_eq!(
        decide(&open.settings, route, &request, stale.as_ref(), NOW),
        Outcome::FailOpen
    );
}

#[test]
fn spend_cap_status_is_configurable() {
    let config = config(r#""spend_cap_status": 402,"#);
    let list: Vec<Header> = chat(&other_key("capped1"), &[])
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.into_bytes()))
        .collect();
    let request = Request::new(&list, None);
    let route = config.settings.route_for(&request);
    let Outcome::Deny(rejection) = decide(
        &config.settings,
        route,
        &request,
        config.policy.as_ref(),
        NOW,
    ) else {
        panic!("expected deny");
    };
    assert_eq!(rejection.denial.status, 402);
    assert_eq!(rejection.key.map(|k| k.id.as_str()), Some("capped1"));
}

#[test]
fn query_parameter_credentials_only_on_opted_in_routes() {
    let config = config("");
    let query = |path: &str| vec![(":path", format!("{path}?api_key={GOOD}"))];
    assert_eq!(code_for(&config, &query("/q/x")), None);
    assert_eq!(code_for(&config, &query("/other")), Some("missing_api_key"));
}

#[test]
fn denial_messages_never_contain_the_key() {
    let config = config("");
    for key in [
        GOOD,
        "ak_good1.wrongwrongwrongwrong",
        "sk-proj-abcdef",
        ORG_KEY,
    ] {
        for extra in [&[][..], &[("x-project-id", "proj_other")][..]] {
            let list: Vec<Header> = chat(key, extra)
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.into_bytes()))
                .collect();
            let request = Request::new(&list, None);
            let route = config.settings.route_for(&request);
            if let Outcome::Deny(rejection) = decide(
                &config.settings,
                route,
                &request,
                config.policy.as_ref(),
                NOW,
            ) {
                let body = rejection.denial.body(route.error_format, "r");
                assert!(!body.contains(key) && !body.contains(SECRET), "{body}");
                assert!(!body.contains("proj_other"), "{body}");
            }
        }
    }
}

#[test]
fn the_clock_matters_only_when_something_expires() {
    let config = config("");
    let policy = config.policy.as_ref().expect("policy");
    assert!(policy.needs_clock(0), "the fixture has an expiring key");
    let timeless = Policy::from_json(br#"{"version": 1, "issued_at": 5}"#).expect("valid");
    assert!(!timeless.needs_clock(0));
    assert!(timeless.needs_clock(60), "a max age needs the clock");
    let expiring =
        Policy::from_json(br#"{"version": 1, "issued_at": 5, "expires_at": 9}"#).expect("valid");
    assert!(expiring.needs_clock(0));
}
