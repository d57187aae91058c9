//! The request core end to end, with an in-memory ledger: every row decided after the headers,
//! the header edits each outcome implies, shadow mode, and what admission gives back.

use super::*;
use crate::config::PluginConfig;
use crate::hash::sha256;
use crate::ledger::MemoryLedger;
use crate::metering::{key_counter_entry, project_counter_entry, SpendCounter};
use crate::trace::{NoTrace, StepResult, Steps};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const SECRET: &str = "s3cr3tS3cr3tS3cr3tXY";
const KEY: &str = "ak_good1.s3cr3tS3cr3tS3cr3tXY";
const NOW_MS: u64 = 1_800_000_000_000;

/// $2/M input, $10/M output for gpt-4o*; key good1 capped at $1.00 (soft cap $0.90) with
/// `key_extra`; the project with `project_extra`; `top` at the top level.
fn config_of(top: &str, key_extra: &str, project_extra: &str) -> PluginConfig {
    let json = format!(
        r#"{{ {top}
          "metering": {{"reservation_ceiling_microusd": 200000, "hold_headers": {hold}}},
          "routes": [
            {{"name": "health", "match": {{"path_prefix": "/healthz"}}, "exempt": true}},
            {{"name": "admin", "match": {{"path_prefix": "/admin"}}, "scopes": ["admin"]}},
            {{"name": "chat", "match": {{"path_prefix": "/v1/chat/"}}, "meter": true}},
            {{"name": "projects", "match": {{"path_prefix": "/v1/projects/"}},
              "project": {{"path_pattern": "/v1/projects/{{project}}/"}}}},
            {{"name": "secure", "match": {{"host": "secure.local"}}, "scopes": ["admin"]}}
          ],
          "policy": {{"version": 4, "issued_at": 1799999999,
            "prices": [{{"model": "gpt-4o*", "input_microusd_per_mtok": 2000000, "output_microusd_per_mtok": 10000000}}],
            "projects": [{{"id": "proj_a", "org": "org_1", "status": "active" {project_extra}}},
                         {{"id": "proj_b", "org": "org_1", "status": "active"}}],
            "keys": [{{"id": "good1", "secret_sha256": "{}", "project": "proj_a", "status": "active",
                       "models": ["gpt-4o*", "llama*"], "spend_cap_microusd": 1000000,
                       "spend_soft_cap_microusd": 900000 {key_extra}}}]}}}}"#,
        hex::encode(sha256(SECRET.as_bytes())),
        top = top.replace(r#""metering_hold": false,"#, ""),
        hold = !top.contains(r#""metering_hold": false"#),
    );
    PluginConfig::from_json(json.as_bytes()).expect("valid test configuration")
}

fn headers(path: &str, extra: &[(&str, &str)]) -> Vec<Header> {
    let mut list = vec![
        (":method".to_owned(), b"POST".to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
        (":authority".to_owned(), b"api.local".to_vec()),
        (
            "authorization".to_owned(),
            format!("Bearer {KEY}").into_bytes(),
        ),
        ("x-request-id".to_owned(), b"req-1".to_vec()),
    ];
    list.extend(
        extra
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.as_bytes().to_vec())),
    );
    list
}

struct Run<'a> {
    gate: Gate<'a>,
    ledger: MemoryLedger,
}

impl<'a> Run<'a> {
    fn new(config: &'a PluginConfig) -> Run<'a> {
        Run {
            gate: Gate {
                settings: &config.settings,
                policy: config.policy.as_ref(),
                reports_usage: true,
            },
            ledger: MemoryLedger {
                now_ms: NOW_MS,
                ..MemoryLedger::default()
            },
        }
    }

    /// Headers, then the body when the route waits for it; every step's effects in order.
    fn send<'h>(&mut self, list: &'h [Header], body: Option<&str>) -> (Vec<Effects<'h>>, Next)
    where
        'a: 'h,
    {
        let facts = HeaderFacts {
            headers: list,
            route_name: None,
            now_s: NOW_MS / 1000,
            end_of_stream: body.is_none(),
        };
        let step = self.gate.on_headers(&facts, &mut self.ledger, &mut NoTrace);
        match step.next {
            Next::AwaitBody(ticket) => {
                let bytes = body.unwrap_or_default().as_bytes();
                let body = if self.gate.body_too_large(bytes.len()) {
                    None
                } else {
                    Some(bytes)
                };
                let second = self
                    .gate
                    .on_body(*ticket, body, &mut self.ledger, &mut NoTrace);
                (vec![step.effects, second.step.effects], second.step.next)
            }
            next => (vec![step.effects], next),
        }
    }

    fn counter(&self, entry: &str) -> SpendCounter {
        self.ledger.spend.get(entry).cloned().unwrap_or_default()
    }
}

fn reply_code(effects: &[Effects<'_>]) -> Option<(u16, String)> {
    effects.iter().find_map(|effects| {
        effects.reply.as_ref().map(|reply| {
            let code = reply
                .headers
                .iter()
                .find(|(name, _)| name == "x-keyward-error")
                .map(|(_, value)| value.clone())
                .unwrap_or_default();
            (reply.status, code)
        })
    })
}

fn edits<'e>(effects: &'e [Effects<'_>]) -> Vec<&'e Edit<'e>> {
    effects
        .iter()
        .flat_map(|effects| effects.edits.iter())
        .collect()
}

fn set_value(effects: &[Effects<'_>], name: &str) -> Option<String> {
    edits(effects)
        .into_iter()
        .rev()
        .find_map(|edit| match edit {
            Edit::Set(set, value) | Edit::Add(set, value) if *set == name => {
                Some(value.to_string())
            }
            _ => None,
        })
}

fn removed(effects: &[Effects<'_>], name: &str) -> bool {
    edits(effects)
        .into_iter()
        .any(|edit| matches!(edit, Edit::Remove(removed) if *removed == name))
}

const BODY: &str = r#"{"model": "gpt-4o-mini", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}"#;

#[test]
fn path_variants_get_the_canonical_routes_requirements() {
    let config = config_of("", "", "");
    // good1 has no admin scope: every spelling of /admin is refused, none reaches upstream.
    for path in [
        "/admin/x",
        "//admin/x",
        "/%61dmin/x",
        "/./admin/x",
        "/healthz/../admin/secret",
        "/healthz/%2e%2e/admin/x",
        "/admin/",
        "/admin",
    ] {
        let mut run = Run::new(&config);
        let list = headers(path, &[]);
        let (effects, next) = run.send(&list, None);
        assert!(matches!(next, Next::Stop), "{path}");
        assert_eq!(
            reply_code(&effects),
            Some((403, "insufficient_scope".to_owned())),
            "{path}"
        );
    }
    // Ambiguous spellings are refused before any route is chosen.
    for path in [
        "/healthz;x=1/../admin",
        "/admin%2Fx",
        "/healthz/%252e%252e/admin",
        "/../admin",
        "/a\\b",
        "http://evil/admin",
    ] {
        let mut run = Run::new(&config);
        let list = headers(path, &[]);
        let (effects, _) = run.send(&list, None);
        assert_eq!(
            reply_code(&effects),
            Some((400, "invalid_request".to_owned())),
            "{path}"
        );
    }
    // /healthzfoo is not the health route: it needs a key (and the fallback lets good1 in).
    let mut run = Run::new(&config);
    let list = vec![(":path".to_owned(), b"/healthzfoo".to_vec())];
    let (effects, _) = run.send(&list, None);
    assert_eq!(
        reply_code(&effects),
        Some((401, "missing_api_key".to_owned()))
    );
}

#[test]
fn the_canonical_path_is_what_goes_upstream() {
    let config = config_of("", "", "");
    let mut run = Run::new(&config);
    let list = headers("//v1//projects/./proj_a/x?api_key=leak&a=1", &[]);
    let (effects, next) = run.send(&list, None);
    assert!(matches!(next, Next::Done));
    assert_eq!(
        set_value(&effects, ":path").as_deref(),
        Some("/v1/projects/proj_a/x?a=1")
    );
    // Crossing projects through the path is refused however it is spelled.
    for path in [
        "/v1/projects//proj_b/x",
        "/v1/projects/proj_a/../proj_b/x",
        "/v1/projects/%70roj_b/x",
    ] {
        let mut run = Run::new(&config);
        let list = headers(path, &[]);
        let (effects, _) = run.send(&list, None);
        assert_eq!(
            reply_code(&effects),
            Some((403, "project_mismatch".to_owned())),
            "{path}"
        );
    }
}

#[test]
fn host_variants_match_the_host_route() {
    let config = config_of("", "", "");
    for host in [
        "secure.local",
        "SECURE.local.",
        "secure.local.:80",
        "secure.local:8443",
    ] {
        let mut run = Run::new(&config);
        let list = headers("/anything", &[])
            .into_iter()
            .map(|(n, v)| {
                if n == ":authority" {
                    (n, host.as_bytes().to_vec())
                } else {
                    (n, v)
                }
            })
            .collect::<Vec<_>>();
        let (effects, _) = run.send(&list, None);
        assert_eq!(
            reply_code(&effects),
            Some((403, "insufficient_scope".to_owned())),
            "{host}"
        );
    }
    for (authority, host) in [
        ("user@secure.local", None),
        ("open.local", Some("secure.local")),
    ] {
        let mut run = Run::new(&config);
        let mut list: Vec<Header> = headers("/anything", &[])
            .into_iter()
            .filter(|(n, _)| n != ":authority")
            .collect();
        list.push((":authority".to_owned(), authority.as_bytes().to_vec()));
        if let Some(host) = host {
            list.push(("host".to_owned(), host.as_bytes().to_vec()));
        }
        let (effects, _) = run.send(&list, None);
        assert_eq!(
            reply_code(&effects),
            Some((400, "invalid_request".to_owned())),
            "{authority}"
        );
    }
}

#[test]
fn spoofed_headers_go_in_every_spelling_and_identity_comes_from_keyward() {
    let config = config_of("", "", "");
    let mut run = Run::new(&config);
    let list = headers(
        "/other",
        &[
            ("x-keyward-key-id", "spoof"),
            ("x_keyward_key_id", "spoof"),
            ("x_keyward_project", "proj_b"),
            ("x_api_key", "ak_other.secret"),
            ("x-keyward-anything", "spoof"),
        ],
    );
    let (effects, next) = run.send(&list, None);
    assert!(matches!(next, Next::Done));
    for name in [
        "authorization",
        "x-keyward-key-id",
        "x_keyward_key_id",
        "x_keyward_project",
        "x_api_key",
        "x-keyward-anything",
    ] {
        assert!(removed(&effects, name), "{name}");
    }
    assert_eq!(
        set_value(&effects, "x-keyward-key-id").as_deref(),
        Some("good1")
    );
    assert_eq!(
        set_value(&effects, "x-keyward-project").as_deref(),
        Some("proj_a")
    );
}

/// The request's headers after the edits, as Envoy applies them: names compared in lower case,
/// `Set` replaces every copy, `Add` appends. Fails on an `Add` whose name is still there.
pub(super) fn envoy_replay<'e>(
    list: &[Header],
    edits: impl IntoIterator<Item = &'e Edit<'e>>,
) -> Vec<(String, String)> {
    let mut upstream: Vec<(String, String)> = list
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value).into_owned();
            (name.to_ascii_lowercase(), value)
        })
        .collect();
    for edit in edits {
        match edit {
            Edit::Remove(name) => upstream.retain(|(n, _)| *n != name.to_ascii_lowercase()),
            Edit::Set(name, value) => {
                upstream.retain(|(n, _)| *n != name.to_ascii_lowercase());
                upstream.push((name.to_ascii_lowercase(), value.to_string()));
            }
            Edit::Add(name, value) => {
                let name = name.to_ascii_lowercase();
                assert!(
                    upstream.iter().all(|(n, _)| *n != name),
                    "{name} appended over a copy: {upstream:?}"
                );
                upstream.push((name, value.to_string()));
            }
        }
    }
    upstream
}

#[test]
fn identity_headers_are_appended_only_where_no_copy_is_left() {
    let spoofs: [&[(&str, &str)]; 5] = [
        &[],
        &[("x-keyward-key-id", "spoof"), ("x-keyward-key-id", "root")],
        &[("X-Keyward-Project", "proj_b"), ("x-keyward-org", "org_2")],
        &[
            ("x_keyward_key_id", "spoof"),
            ("x-keyward-environment", "test"),
        ],
        &[
            ("x-auth-id", "spoof"),
            ("X-AUTH-ID", "root"),
            ("x_auth_id", "r"),
        ],
    ];
    let custom = r#""identity_headers": {"key_id": "x-auth-id", "project": "x-keyward-project",
                    "org": "x-keyward-org", "environment": "x-keyward-environment"},"#;
    for top in ["", custom, r#""mode": "shadow","#] {
        let config = config_of(top, "", "");
        let key_header = config.settings.identity_headers.key_id.clone();
        for spoof in spoofs {
            for (path, body) in [("/other", None), ("/v1/chat/completions", Some(BODY))] {
                let mut run = Run::new(&config);
                let list = headers(path, spoof);
                let (effects, _) = run.send(&list, body);
                let upstream = envoy_replay(&list, edits(&effects));
                let values = |name: &str| -> Vec<&str> {
                    upstream
                        .iter()
                        .filter(|(n, _)| n == name)
                        .map(|(_, v)| v.as_str())
                        .collect()
                };
                let case = format!("{top} {spoof:?} {path}");
                assert_eq!(values(&key_header), ["good1"], "{case}");
                assert_eq!(values("x-keyward-project"), ["proj_a"], "{case}");
                assert_eq!(values("x-keyward-org"), ["org_1"], "{case}");
                assert!(
                    !upstream
                        .iter()
                        .any(|(n, _)| n.replace('_', "-") == key_header && n != &key_header),
                    "{case}: {upstream:?}"
                );
            }
        }
    }
}

#[test]
fn method_override_headers_are_refused() {
    let config = config_of("", "", "");
    let mut run = Run::new(&config);
    let list = headers("/other", &[("x-http-method-override", "DELETE")]);
    let (effects, _) = run.send(&list, None);
    assert_eq!(
        reply_code(&effects),
        Some((400, "invalid_request".to_owned()))
    );
}

#[test]
fn unmatched_paths_can_be_denied() {
    let config = config_of(r#""unmatched_paths": "deny","#, "", "");
    let mut run = Run::new(&config);
    let list = headers("/elsewhere", &[]);
    let (effects, _) = run.send(&list, None);
    assert_eq!(
        reply_code(&effects),
        Some((404, "route_not_found".to_owned()))
    );
    let list = headers("/healthz", &[]);
    assert!(reply_code(&Run::new(&config).send(&list, None).0).is_none());
}

#[test]
fn a_metered_request_reserves_the_largest_possible_output() {
    let config = config_of("", "", "");
    for (body, output_tokens) in [
        (
            r#"{"model":"gpt-4o","max_completion_tokens":1,"max_tokens":4000}"#,
            4000,
        ),
        (r#"{"model":"gpt-4o","max_tokens":10,"n":128}"#, 1280),
        (
            r#"{"model":"gpt-4o","max_tokens":"300","best_of":3,"n":2}"#,
            900,
        ),
    ] {
        let mut run = Run::new(&config);
        let list = headers("/v1/chat/completions", &[("accept-encoding", "gzip, br")]);
        let (effects, next) = run.send(&list, Some(body));
        let Next::Watch(watch) = next else {
            panic!("{body}: {effects:?}");
        };
        let metering = watch.admitted.metering.expect("metered");
        assert_eq!(metering.estimate.output_tokens, output_tokens, "{body}");
        let input = (body.len() as u64).div_ceil(4);
        let expected = (input * 2 + output_tokens * 10).min(200_000);
        assert_eq!(metering.estimate.reservation_microusd, expected, "{body}");
        assert_eq!(run.counter(&key_counter_entry("good1")).reserved, expected);
        assert_eq!(
            set_value(&effects, "accept-encoding").as_deref(),
            Some("identity")
        );
    }
}

#[test]
fn a_metered_route_asks_for_identity_only_where_the_client_allowed_a_coding() {
    let config = config_of("", "", "");
    let body = r#"{"model":"gpt-4o","max_tokens":10}"#;
    type Case<'c> = (&'c [(&'c str, &'c str)], Option<&'c str>);
    let cases: [Case<'_>; 6] = [
        (&[], None),
        (&[("accept-encoding", "identity")], None),
        (&[("accept-encoding", " IDENTITY ")], None),
        (&[("accept-encoding", "gzip")], Some("identity")),
        (&[("accept-encoding", "*")], Some("identity")),
        // A repeated header: the copy that allows gzip counts.
        (
            &[("accept-encoding", "identity"), ("accept-encoding", "gzip")],
            Some("identity"),
        ),
    ];
    for (extra, expected) in cases {
        let mut run = Run::new(&config);
        let list = headers("/v1/chat/completions", extra);
        let (effects, next) = run.send(&list, Some(body));
        assert!(matches!(next, Next::Watch(_)), "{extra:?}: {effects:?}");
        assert_eq!(
            set_value(&effects, "accept-encoding").as_deref(),
            expected,
            "{extra:?}"
        );
    }
}

#[test]
fn every_late_refusal_row_answers_with_its_code() {
    let cases: [(&str, &str, &str, u16, &str); 6] = [
        ("", "", r#"{"model":"o3"}"#, 403, "model_not_allowed"),
        ("", "", r#"{"messages":[]}"#, 403, "model_not_allowed"),
        (
            "",
            "",
            r#"{"model":"gpt-4o","model":"o3"}"#,
            400,
            "invalid_request_body",
        ),
        ("", "", "not json", 400, "invalid_request_body"),
        (
            r#", "spent_microusd": 999000"#,
            "",
            BODY,
            403,
            "spend_cap_exceeded",
        ),
        (
            "",
            r#", "spend_cap_microusd": 5000"#,
            BODY,
            403,
            "spend_cap_exceeded",
        ),
    ];
    for (key_extra, project_extra, body, status, code) in cases {
        let config = config_of("", key_extra, project_extra);
        let mut run = Run::new(&config);
        let list = headers("/v1/chat/completions", &[]);
        let (effects, next) = run.send(&list, Some(body));
        assert!(matches!(next, Next::Stop), "{body}");
        assert_eq!(
            reply_code(&effects),
            Some((status, code.to_owned())),
            "{body}"
        );
        assert_eq!(run.ledger.total_reserved(), 0, "{body}: nothing stays held");
    }
    // Too large: announced, or found when buffered.
    let config = config_of("", "", "");
    let list = headers("/v1/chat/completions", &[("content-length", "99999999")]);
    let (effects, _) = Run::new(&config).send(&list, Some(BODY));
    assert_eq!(
        reply_code(&effects),
        Some((413, "request_too_large".to_owned()))
    );
    let big = format!(r#"{{"model":"gpt-4o","pad":"{}"}}"#, "x".repeat(2 << 20));
    let list = headers("/v1/chat/completions", &[]);
    let (effects, _) = Run::new(&config).send(&list, Some(&big));
    assert_eq!(
        reply_code(&effects),
        Some((413, "request_too_large".to_owned()))
    );
    // An unpriced model on a capped key.
    let list = headers("/v1/chat/completions", &[]);
    let (effects, _) = Run::new(&config).send(&list, Some(r#"{"model":"llama-3"}"#));
    assert_eq!(
        reply_code(&effects),
        Some((403, "model_not_allowed".to_owned()))
    );
}

#[test]
fn the_rate_limit_refuses_with_retry_after_and_gives_everything_back() {
    let config = config_of("", r#", "rate_limits": {"requests_per_minute": 1}"#, "");
    let mut run = Run::new(&config);
    let list = headers("/v1/chat/completions", &[]);
    let (_, first) = run.send(&list, Some(BODY));
    let Next::Watch(mut first) = first else {
        panic!("the first request passes");
    };
    let (effects, next) = run.send(&list, Some(BODY));
    assert!(matches!(next, Next::Stop));
    assert_eq!(reply_code(&effects), Some((429, "rate_limited".to_owned())));
    let reply = effects.iter().find_map(|e| e.reply.clone()).expect("reply");
    assert!(reply
        .headers
        .iter()
        .any(|(n, v)| n == "retry-after" && v == "60"));
    // Only the first request's reservation is held; settling it leaves nothing.
    first.on_response_headers(&[(":status".to_owned(), b"500".to_vec())]);
    let gate = run.gate;
    first.settle(&gate, &mut run.ledger);
    assert_eq!(run.ledger.total_reserved(), 0);
}

#[test]
fn a_ledger_failing_after_the_first_reservation_leaves_nothing_held() {
    // Operation 1 reserves on the key, 2 on the project, 3 reads the clock for the rate limit.
    let config = config_of(
        "",
        r#", "rate_limits": {"requests_per_minute": 5}"#,
        r#", "spend_cap_microusd": 5000000"#,
    );
    for failing in 1..=4 {
        let mut run = Run::new(&config);
        run.ledger.fail_on = Some(failing);
        let list = headers("/v1/chat/completions", &[]);
        let (effects, next) = run.send(&list, Some(BODY));
        assert!(matches!(next, Next::Stop), "operation {failing}");
        assert_eq!(
            reply_code(&effects),
            Some((500, "internal_error".to_owned())),
            "operation {failing}"
        );
        let key = run.counter(&key_counter_entry("good1"));
        let project = run.counter(&project_counter_entry("proj_a"));
        assert_eq!(
            (key.reserved, project.reserved),
            (0, 0),
            "operation {failing}"
        );
        // Nor was anything taken from the rate bucket: the next request finds 4 of 5 left.
        run.ledger.fail_on = None;
        let (_, next) = run.send(&list, Some(BODY));
        let Next::Watch(watch) = next else {
            panic!("operation {failing}: the next request passes");
        };
        let remaining = watch
            .response_headers()
            .iter()
            .find(|(name, _)| name == "x-ratelimit-remaining-requests")
            .map(|(_, value)| value.clone());
        assert_eq!(remaining.as_deref(), Some("4"), "operation {failing}");
    }
}

#[test]
fn shadow_mode_is_a_dry_run_for_late_refusals() {
    let config = config_of(r#""mode": "shadow","#, "", "");
    for body in [r#"{"model":"o3"}"#, "not json"] {
        let mut run = Run::new(&config);
        let list = headers("/v1/chat/completions", &[]);
        let (effects, next) = run.send(&list, Some(body));
        assert!(reply_code(&effects).is_none(), "{body}: never refused");
        assert!(!matches!(next, Next::Stop), "{body}");
        assert!(
            removed(&effects, "x-keyward-key-id"),
            "{body}: identity withdrawn"
        );
        assert!(set_value(&effects, SHADOW_HEADER).is_some(), "{body}");
        let logs: Vec<&str> = effects
            .iter()
            .flat_map(|e| e.logs.iter().map(|l| l.line.as_str()))
            .collect();
        assert!(
            logs.iter().any(|l| l.contains(r#""event":"shadow_deny""#)),
            "{body}"
        );
        assert!(
            !logs.iter().any(|l| l.contains(r#""event":"deny""#)),
            "{body}"
        );
    }
    // Over the cap in shadow mode: let through, nothing held, the cost still charged.
    let config = config_of(r#""mode": "shadow","#, r#", "spent_microusd": 999000"#, "");
    let mut run = Run::new(&config);
    let list = headers("/v1/chat/completions", &[]);
    let (effects, next) = run.send(&list, Some(BODY));
    let Next::Watch(mut watch) = next else {
        panic!("shadow lets it through: {effects:?}");
    };
    assert_eq!(run.ledger.total_reserved(), 0);
    watch.on_response_headers(&[
        (":status".to_owned(), b"200".to_vec()),
        ("content-type".to_owned(), b"application/json".to_vec()),
    ]);
    let body = br#"{"usage":{"prompt_tokens":10,"completion_tokens":20}}"#;
    watch.on_response_body(body.len(), Some(body), true);
    let gate = run.gate;
    watch.settle(&gate, &mut run.ledger);
    assert_eq!(run.counter(&key_counter_entry("good1")).settled, 220);
}

#[test]
fn settlement_charges_the_reservation_for_unreadable_or_invalid_usage() {
    let config = config_of("", "", "");
    for (encoding, body, reason) in [
        (Some("gzip"), &b"\x1f\x8b\x08"[..], Count::UsageUnreadable),
        (
            None,
            &br#"{"usage":{"prompt_tokens":-5,"completion_tokens":-9}}"#[..],
            Count::UsageInvalid,
        ),
    ] {
        let mut run = Run::new(&config);
        let list = headers("/v1/chat/completions", &[]);
        let (_, next) = run.send(&list, Some(BODY));
        let Next::Watch(mut watch) = next else {
            panic!("allowed");
        };
        let reservation = watch.admitted.holds.reservation;
        let mut response = vec![
            (":status".to_owned(), b"200".to_vec()),
            ("content-type".to_owned(), b"application/json".to_vec()),
        ];
        if let Some(encoding) = encoding {
            response.push(("content-encoding".to_owned(), encoding.as_bytes().to_vec()));
        }
        watch.on_response_headers(&response);
        let bytes = watch.reads_response_body().then_some(body);
        watch.on_response_body(body.len(), bytes, true);
        let gate = run.gate;
        let effects = watch.settle(&gate, &mut run.ledger);
        assert!(effects.counts.contains(&reason));
        let key = run.counter(&key_counter_entry("good1"));
        assert_eq!((key.reserved, key.settled), (0, reservation));
    }
}

#[test]
fn a_growing_stream_body_drops_content_length_when_headers_leave_first() {
    let config = config_of(r#""metering_hold": false,"#, "", "");
    let list = headers("/v1/chat/completions", &[("content-length", "40")]);
    let mut run = Run::new(&config);
    let facts = HeaderFacts {
        headers: &list,
        route_name: None,
        now_s: 0,
        end_of_stream: false,
    };
    let step = run.gate.on_headers(&facts, &mut run.ledger, &mut NoTrace);
    assert!(matches!(step.next, Next::AwaitBody(_)));
    assert!(removed(&[step.effects], "content-length"));
    // Held headers keep it, and get the new length with the rewritten body.
    let config = config_of("", "", "");
    let mut run = Run::new(&config);
    let (effects, next) = run.send(&list, Some(r#"{"model":"gpt-4o","stream":true}"#));
    assert!(matches!(next, Next::Watch(_)));
    assert!(!removed(&effects, "content-length"));
    let grown = r#"{"model":"gpt-4o","stream":true,"stream_options":{"include_usage":true}}"#;
    assert_eq!(
        set_value(&effects, "content-length"),
        Some(grown.len().to_string())
    );
}

#[test]
fn the_trace_names_every_row_it_passed_and_the_one_that_failed() {
    let config = config_of("", "", "");
    let run = Run::new(&config);
    let list = headers("/admin", &[]);
    let facts = HeaderFacts {
        headers: &list,
        route_name: None,
        now_s: NOW_MS / 1000,
        end_of_stream: true,
    };
    let mut trace = Steps::default();
    let mut ledger = MemoryLedger::default();
    run.gate.on_headers(&facts, &mut ledger, &mut trace);
    let rows: Vec<(&str, StepResult)> = trace.0.iter().map(|s| (s.row, s.result)).collect();
    assert_eq!(rows.first(), Some(&("0", StepResult::Pass)));
    assert_eq!(rows.last(), Some(&("10", StepResult::Fail)));
    assert_eq!(
        trace.0.last().and_then(|s| s.code),
        Some("insufficient_scope")
    );
}

#[test]
fn route_name_routes_refuse_paths_keyward_would_rewrite() {
    let json = format!(
        r#"{{"routes": [{{"name": "ops", "match": {{"route_name": "ops"}}, "scopes": ["admin"]}}],
          "policy": {{"version": 1, "issued_at": 1799999999,
            "projects": [{{"id": "proj_a", "org": "org_1", "status": "active"}}],
            "keys": [{{"id": "good1", "secret_sha256": "{}", "project": "proj_a", "status": "active"}}]}}}}"#,
        hex::encode(sha256(SECRET.as_bytes())),
    );
    let config = PluginConfig::from_json(json.as_bytes()).expect("valid");
    let gate = Gate {
        settings: &config.settings,
        policy: config.policy.as_ref(),
        reports_usage: false,
    };
    let send = |path: &str, route_name: &str| {
        let list = headers(path, &[]);
        let facts = HeaderFacts {
            headers: &list,
            route_name: Some(route_name),
            now_s: 0,
            end_of_stream: true,
        };
        let step = gate.on_headers(&facts, &mut MemoryLedger::default(), &mut NoTrace);
        reply_code(&[step.effects])
    };
    // Envoy chose "default" from the raw path; the canonical /ops/x would reach "ops".
    for path in ["//ops/x", "/%6Fps/x", "/healthz/../ops/x"] {
        assert_eq!(
            send(path, "default"),
            Some((400, "invalid_request".to_owned())),
            "{path}"
        );
    }
    assert_eq!(
        send("/ops/x", "ops"),
        Some((403, "insufficient_scope".to_owned()))
    );
    assert_eq!(send("/other/x", "default"), None);
}

#[test]
fn folded_paths_match_and_are_forwarded_in_lower_case() {
    let config = config_of(r#""case_insensitive_paths": true,"#, "", "");
    let mut run = Run::new(&config);
    let list = headers("/ADMIN/x", &[]);
    let (effects, _) = run.send(&list, None);
    assert_eq!(
        reply_code(&effects),
        Some((403, "insufficient_scope".to_owned()))
    );
    let list = headers("/Other/X", &[]);
    let (effects, _) = Run::new(&config).send(&list, None);
    assert_eq!(set_value(&effects, ":path").as_deref(), Some("/other/x"));
}

#[test]
fn shadow_mode_reports_the_rate_limit_enforcement_would_hit() {
    let config = config_of(
        r#""mode": "shadow","#,
        r#", "rate_limits": {"requests_per_minute": 1}"#,
        "",
    );
    let mut run = Run::new(&config);
    let list = headers("/other", &[]);
    let (first, _) = run.send(&list, None);
    assert!(set_value(&first, SHADOW_HEADER).is_none());
    let (second, next) = run.send(&list, None);
    assert!(!matches!(next, Next::Stop), "shadow never refuses");
    assert_eq!(
        set_value(&second, SHADOW_HEADER).as_deref(),
        Some("rate_limited")
    );
    assert!(removed(&second, "x-keyward-key-id"));
}
