//! Provider routes in the request core: the client's provider credentials removed in every
//! spelling, the project's key else its org's set in the provider's header style, and the
//! refusals when there is none or the keys cannot be opened.

use super::*;
use crate::config::PluginConfig;
use crate::hash::sha256;
use crate::ledger::MemoryLedger;
use crate::provider::{KeyOwnerKind, Provider};
use crate::provider_keys::{seal_provider_keys, FleetPrivateKey};
use crate::trace::NoTrace;
use getrandom::rand_core::UnwrapErr;
use getrandom::SysRng;

const SECRET: &str = "s3cr3tS3cr3tS3cr3tXY";
const VERSION: u64 = 4;

/// Keys `a1` (project proj_a) and `b1` (project proj_b), both of org_1; proj_a has its own
/// OpenAI key, org_1 an OpenAI and an Anthropic key, nobody a Google key.
fn config(opened: bool, routes: &str) -> PluginConfig {
    let (private, public) = FleetPrivateKey::derive_pair(&[3u8; 32]);
    let sealed = seal_provider_keys(
        &public,
        VERSION,
        &[5u8; 32],
        &[
            (
                Provider::Openai,
                KeyOwnerKind::Project,
                "proj_a",
                "sk-proj-a",
            ),
            (Provider::Openai, KeyOwnerKind::Org, "org_1", "sk-org-1"),
            (
                Provider::Anthropic,
                KeyOwnerKind::Org,
                "org_1",
                "sk-ant-org-1",
            ),
        ],
        &mut UnwrapErr(SysRng),
    )
    .expect("seals");
    let digest = hex::encode(sha256(SECRET.as_bytes()));
    let json = format!(
        r#"{{"routes": [{routes}],
          "policy": {{"version": {VERSION}, "issued_at": 1799999999,
            "projects": [{{"id": "proj_a", "org": "org_1", "status": "active"}},
                         {{"id": "proj_b", "org": "org_1", "status": "active"}}],
            "keys": [{{"id": "good1", "secret_sha256": "{digest}", "project": "proj_a", "status": "active"}},
                     {{"id": "good2", "secret_sha256": "{digest}", "project": "proj_b", "status": "active"}}],
            "provider_keys": {}}}}}"#,
        serde_json::to_string(&sealed).expect("json"),
    );
    let mut config = PluginConfig::from_json(json.as_bytes()).expect("valid configuration");
    if opened {
        let fleet = FleetPrivateKey::from_base64(&private).expect("valid");
        let policy = config.policy.as_mut().expect("inline policy");
        assert_eq!(
            policy.open_provider_keys(Some(&fleet)).as_deref(),
            Some("keyward: opened 3 provider keys")
        );
    }
    config
}

const ROUTES: &str = r#"
    {"name": "openai", "match": {"path_prefix": "/openai"}, "provider": "openai"},
    {"name": "anthropic", "match": {"path_prefix": "/anthropic"}, "provider": "anthropic"},
    {"name": "google", "match": {"path_prefix": "/google"}, "provider": "google"},
    {"name": "google-pass", "match": {"path_prefix": "/gpass"}, "provider": "google",
     "missing_provider_key": "pass"},
    {"name": "plain", "match": {"path_prefix": "/plain"}}"#;

fn request(key_id: &str, path: &str, extra: &[(&str, &str)]) -> Vec<Header> {
    let mut list = vec![
        (":method".to_owned(), b"POST".to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
        (":authority".to_owned(), b"api.local".to_vec()),
        (
            "authorization".to_owned(),
            format!("Bearer ak_{key_id}.{SECRET}").into_bytes(),
        ),
    ];
    list.extend(
        extra
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.as_bytes().to_vec())),
    );
    list
}

fn run<'h>(config: &'h PluginConfig, list: &'h [Header]) -> Step<'h> {
    run_reporting(config, list, false)
}

fn run_reporting<'h>(
    config: &'h PluginConfig,
    list: &'h [Header],
    reports_usage: bool,
) -> Step<'h> {
    let gate = Gate {
        settings: &config.settings,
        policy: config.policy.as_ref(),
        reports_usage,
    };
    let facts = HeaderFacts {
        headers: list,
        route_name: None,
        now_s: 1_800_000_000,
        end_of_stream: true,
    };
    gate.on_headers(&facts, &mut MemoryLedger::default(), &mut NoTrace)
}

fn set_value<'e>(step: &'e Step<'_>, name: &str) -> Option<&'e str> {
    step.effects.edits.iter().rev().find_map(|edit| match edit {
        Edit::Set(set, value) | Edit::Add(set, value) if *set == name => Some(value.as_ref()),
        _ => None,
    })
}

fn removed(step: &Step<'_>, name: &str) -> bool {
    step.effects
        .edits
        .iter()
        .any(|edit| matches!(edit, Edit::Remove(removed) if *removed == name))
}

fn code(step: &Step<'_>) -> Option<(u16, String)> {
    step.effects.reply.as_ref().map(|reply| {
        let code = reply
            .headers
            .iter()
            .find(|(name, _)| name == "x-keyward-error")
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        (reply.status, code)
    })
}

#[test]
fn the_project_key_replaces_every_client_provider_credential() {
    let config = config(true, ROUTES);
    let list = request(
        "good1",
        "/openai/v1/chat",
        &[
            ("api-key", "sk-client"),
            ("Api_Key", "sk-client"),
            ("X_Goog_Api_Key", "sk-client"),
            ("x-goog-api-key", "sk-client"),
        ],
    );
    let step = run(&config, &list);
    assert!(step.goes_upstream(), "{:?}", step.effects.reply);
    assert_eq!(set_value(&step, "authorization"), Some("Bearer sk-proj-a"));
    // As Envoy applies the edits (the key is appended): the one credential left is keyward's.
    let upstream = super::tests::envoy_replay(&list, &step.effects.edits);
    let credentials: Vec<_> = upstream
        .iter()
        .filter(|(name, _)| {
            PROVIDER_CREDENTIAL_HEADERS
                .iter()
                .any(|header| same_header_name(name, header))
        })
        .collect();
    assert_eq!(
        credentials,
        [&("authorization".to_owned(), "Bearer sk-proj-a".to_owned())]
    );
    for name in [
        "authorization",
        "api-key",
        "Api_Key",
        "X_Goog_Api_Key",
        "x-goog-api-key",
    ] {
        assert!(removed(&step, name), "{name} must be removed");
    }
}

#[test]
fn the_org_key_is_the_fallback_in_the_providers_header_style() {
    let config = config(true, ROUTES);
    let list = request("good2", "/openai/x", &[]);
    assert_eq!(
        set_value(&run(&config, &list), "authorization"),
        Some("Bearer sk-org-1")
    );
    let list = request(
        "good1",
        "/anthropic/v1/messages",
        &[("anthropic-version", "1")],
    );
    let step = run(&config, &list);
    assert_eq!(set_value(&step, "x-api-key"), Some("sk-ant-org-1"));
    // The client's keyward credential is removed and not replaced on x-api-key routes.
    assert!(removed(&step, "authorization"));
    assert_eq!(set_value(&step, "authorization"), None);
    // A keyward key sent in x-api-key itself is replaced by the provider's.
    let mut list = request("good1", "/anthropic/v1/messages", &[]);
    list[3].0 = "x-api-key".to_owned();
    list[3].1 = format!("ak_good1.{SECRET}").into_bytes();
    let step = run(&config, &list);
    assert!(removed(&step, "x-api-key"));
    assert_eq!(set_value(&step, "x-api-key"), Some("sk-ant-org-1"));
    let upstream = super::tests::envoy_replay(&list, &step.effects.edits);
    let api_keys: Vec<_> = upstream.iter().filter(|(n, _)| n == "x-api-key").collect();
    assert_eq!(api_keys.len(), 1, "{upstream:?}");
}

#[test]
fn no_key_refuses_or_passes_as_configured() {
    let config = config(true, ROUTES);
    let list = request("good1", "/google/v1", &[("x-goog-api-key", "client")]);
    let step = run(&config, &list);
    assert_eq!(code(&step), Some((403, "provider_key_missing".to_owned())));
    let list = request("good1", "/gpass/v1", &[("x-goog-api-key", "client")]);
    let step = run(&config, &list);
    assert!(step.goes_upstream());
    assert!(removed(&step, "x-goog-api-key"));
    assert_eq!(set_value(&step, "x-goog-api-key"), None);
}

#[test]
fn keys_that_were_not_opened_fail_closed_only_on_provider_routes() {
    let config = config(false, ROUTES);
    let list = request("good1", "/openai/v1", &[]);
    let step = run(&config, &list);
    assert_eq!(
        code(&step),
        Some((503, "provider_key_unavailable".to_owned()))
    );
    assert!(!step
        .effects
        .reply
        .as_ref()
        .is_some_and(|reply| reply.body.contains("sk-")));
    let list = request("good1", "/plain/v1", &[("x-goog-api-key", "kept")]);
    let step = run(&config, &list);
    assert!(step.goes_upstream());
    assert!(!removed(&step, "x-goog-api-key"), "not a provider route");
}

#[test]
fn a_refused_request_gets_no_provider_key() {
    let config = config(true, ROUTES);
    let mut list = request("good1", "/openai/v1", &[]);
    list[3].1 = b"Bearer ak_good1.wrongwrongwrongwrong".to_vec();
    let step = run(&config, &list);
    assert_eq!(
        step.effects.reply.as_ref().map(|reply| reply.status),
        Some(401)
    );
    assert_eq!(set_value(&step, "authorization"), None);
}

#[test]
fn provider_options_are_checked() {
    for (routes, message) in [
        (
            r#"{"name": "x", "provider_header": "x-api-key"}"#,
            "need a provider",
        ),
        (
            r#"{"name": "x", "exempt": true, "provider": "openai"}"#,
            "exempt",
        ),
        (r#"{"name": "x", "provider": "openai2"}"#, "unknown variant"),
    ] {
        let json = format!(r#"{{"routes": [{routes}]}}"#);
        let error = PluginConfig::from_json(json.as_bytes()).expect_err("must fail");
        assert!(error.to_string().contains(message), "{error}");
    }
}

#[test]
fn the_usage_names_the_provider_key_used_and_nothing_of_it() {
    let config = config(true, ROUTES);
    let used = |key_id: &str, path: &str| {
        let list = request(key_id, path, &[]);
        let step = run_reporting(&config, &list, true);
        step.effects.usage.as_ref().map(|usage| usage.provider_key)
    };
    let openai = |owner| {
        Some(Some(ProviderKeyUse {
            provider: Provider::Openai,
            owner,
        }))
    };
    assert_eq!(used("good1", "/openai/v1"), openai(KeyOwnerKind::Project));
    assert_eq!(used("good2", "/openai/v1"), openai(KeyOwnerKind::Org));
    assert_eq!(
        used("good2", "/anthropic/v1"),
        Some(Some(ProviderKeyUse {
            provider: Provider::Anthropic,
            owner: KeyOwnerKind::Org,
        }))
    );
    // Forwarded without a provider key, or not a provider route: usage without one.
    assert_eq!(used("good1", "/gpass/v1"), Some(None));
    assert_eq!(used("good1", "/plain/v1"), Some(None));
    // Refused: no usage at all.
    assert_eq!(used("good1", "/google/v1"), None);
}
