//! Budgets that reset, quotas, plans, increases and limit headers, through the request core
//! with an in-memory ledger and a clock the tests move: every window type rolls over at its
//! boundary (month ends of 28 to 31 days, a year end, an offset), several windows hold at once,
//! and a refusal gives back what was taken.

use super::*;
use crate::calendar::days_from_civil;
use crate::config::PluginConfig;
use crate::hash::sha256;
use crate::ledger::MemoryLedger;
use crate::trace::{NoTrace, StepResult, Steps};
use crate::window_counter::{window_counter_entry, OwnerKind, WindowCounter};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const SECRET: &str = "s3cr3tS3cr3tS3cr3tXY";
const KEY: &str = "ak_good1.s3cr3tS3cr3tS3cr3tXY";
const BODY: &str = r#"{"model": "gpt-4o-mini", "max_tokens": 1000, "messages": []}"#;

/// Unix milliseconds of a UTC date and time.
fn at(year: i64, month: u32, day: u32, hour: i64, minute: i64, second: i64) -> u64 {
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(seconds).expect("after 1970") * 1000
}

/// A $2/M in, $10/M out price for gpt-4o*; plans `free` (3 requests a day, gpt-4o-mini only) and
/// `business` (100,000 requests a month); key good1 in proj_a with `key_limits` as its `limits`,
/// the project with `project_limits`.
fn config_with(key_limits: &str, project_limits: &str) -> PluginConfig {
    let json = format!(
        r#"{{"metering": {{"reservation_ceiling_microusd": 200000}},
          "routes": [
            {{"name": "chat", "match": {{"path_prefix": "/v1/chat/"}}, "meter": true}},
            {{"name": "seed", "match": {{"path_prefix": "/seed/"}}, "limit_headers": "x_ratelimit"}},
            {{"name": "ietf", "match": {{"path_prefix": "/ietf/"}}, "meter": true,
              "limit_headers": "ietf", "budget_headers": true}},
            {{"name": "models", "match": {{"path_prefix": "/v1/models"}}, "model": {{"header": "x-model"}}}}
          ],
          "policy": {{"version": 4, "issued_at": 1700000000,
            "prices": [{{"model": "gpt-4o*", "input_microusd_per_mtok": 2000000, "output_microusd_per_mtok": 10000000}}],
            "plans": [{{"id": "free", "quotas": [{{"period": "day", "requests": 3}}], "models": ["gpt-4o-mini"]}},
                      {{"id": "business", "quotas": [{{"period": "month", "requests": 100000}}]}}],
            "projects": [{{"id": "proj_a", "org": "org_1", "status": "active" {project_limits}}}],
            "keys": [{{"id": "good1", "secret_sha256": "{}", "project": "proj_a", "status": "active" {key_limits}}}]}}}}"#,
        hex::encode(sha256(SECRET.as_bytes())),
    );
    PluginConfig::from_json(json.as_bytes()).expect("valid test configuration")
}

fn limits(json: &str) -> String {
    format!(r#", "limits": {json}"#)
}

fn request(path: &str) -> Vec<Header> {
    vec![
        (":method".to_owned(), b"POST".to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
        (":authority".to_owned(), b"api.local".to_vec()),
        (
            "authorization".to_owned(),
            format!("Bearer {KEY}").into_bytes(),
        ),
        ("x-model".to_owned(), b"gpt-4o".to_vec()),
    ]
}

/// What one request came to.
#[derive(Debug)]
struct Answer {
    /// The refusal's status and code; `None` when it went upstream.
    refused: Option<(u16, String)>,
    /// The refusal's headers, or the response headers of an allowed request.
    headers: Vec<(String, String)>,
    watch: Option<Box<Watch>>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn allowed(&self) -> bool {
        self.refused.is_none()
    }
}

struct Run<'a> {
    gate: Gate<'a>,
    ledger: MemoryLedger,
}

impl<'a> Run<'a> {
    fn new(config: &'a PluginConfig, now_ms: u64) -> Run<'a> {
        Run {
            gate: Gate {
                settings: &config.settings,
                policy: config.policy.as_ref(),
                reports_usage: true,
            },
            ledger: MemoryLedger {
                now_ms,
                ..MemoryLedger::default()
            },
        }
    }

    fn send_traced(&mut self, path: &str, body: Option<&str>, trace: &mut Steps) -> Answer {
        let list = request(path);
        let facts = HeaderFacts {
            headers: &list,
            route_name: None,
            now_s: self.ledger.now_ms / 1000,
            end_of_stream: body.is_none(),
        };
        let mut step = self.gate.on_headers(&facts, &mut self.ledger, trace);
        if let Next::AwaitBody(ticket) = step.next {
            let bytes = body.unwrap_or_default().as_bytes();
            step = self
                .gate
                .on_body(*ticket, Some(bytes), &mut self.ledger, trace)
                .step;
        }
        let refused = step.effects.reply.as_ref().map(|reply| {
            let code = reply
                .headers
                .iter()
                .find(|(n, _)| n == "x-keyward-error")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            (reply.status, code)
        });
        match step.next {
            Next::Watch(watch) => Answer {
                refused,
                headers: watch.response_headers().to_vec(),
                watch: Some(watch),
            },
            _ => Answer {
                refused,
                headers: step
                    .effects
                    .reply
                    .map(|reply| reply.headers)
                    .unwrap_or_default(),
                watch: None,
            },
        }
    }

    fn send(&mut self, path: &str, body: Option<&str>) -> Answer {
        self.send_traced(path, body, &mut Steps::default())
    }

    /// A metered request answered with this usage, settled.
    fn chat(&mut self, usage: &str) -> Answer {
        let mut answer = self.send("/v1/chat/completions", Some(BODY));
        if let Some(watch) = answer.watch.as_mut() {
            watch.on_response_headers(&[
                (":status".to_owned(), b"200".to_vec()),
                ("content-type".to_owned(), b"application/json".to_vec()),
            ]);
            let body = format!(r#"{{"usage": {usage}}}"#);
            watch.on_response_body(body.len(), Some(body.as_bytes()), true);
            let gate = self.gate;
            watch.settle(&gate, &mut self.ledger);
        }
        answer
    }

    fn window(&self, owner: OwnerKind, id: &str, window: &str) -> WindowCounter {
        let window = crate::calendar::Window::parse(window).expect("window id");
        let entry = window_counter_entry(owner, id, window);
        self.ledger.windows.get(&entry).cloned().unwrap_or_default()
    }
}

#[test]
fn a_day_quota_rolls_over_at_midnight_in_the_keys_offset() {
    // UTC+05:30: the day ends at 18:30 UTC.
    let config = config_with(
        &limits(r#"{"utc_offset_minutes": 330, "quotas": [{"period": "day", "requests": 2}]}"#),
        "",
    );
    let midnight = at(2026, 11, 30, 18, 30, 0);
    let mut run = Run::new(&config, midnight - 60_000);
    assert!(run.send("/v1/models", None).allowed());
    assert!(run.send("/v1/models", None).allowed());
    let third = run.send("/v1/models", None);
    assert_eq!(third.refused, Some((429, "quota_exceeded".to_owned())));
    assert_eq!(
        third.header("retry-after"),
        Some("60"),
        "until local midnight"
    );
    assert_eq!(third.header("x-ratelimit-remaining-requests"), Some("0"));
    run.ledger.now_ms = midnight - 1;
    assert!(
        !run.send("/v1/models", None).allowed(),
        "the last millisecond"
    );
    run.ledger.now_ms = midnight;
    let next_day = run.send("/v1/models", None);
    assert!(next_day.allowed(), "a fresh day, no push");
    assert_eq!(next_day.header("x-ratelimit-remaining-requests"), Some("1"));
    assert_eq!(
        run.window(OwnerKind::Key, "good1", "2026-12-01")
            .requests
            .settled,
        1
    );
}

#[test]
fn month_budgets_roll_over_at_every_month_end_and_the_year_end() {
    // The snapshot says this month's $5 cap is spent; a new month starts from zero.
    for (year, month, last_day, next) in [
        (2026, 2, 28, "2026-03"),
        (2028, 2, 29, "2028-03"),
        (2026, 4, 30, "2026-05"),
        (2026, 1, 31, "2026-02"),
        (2026, 12, 31, "2027-01"),
    ] {
        let this = format!("{year:04}-{month:02}");
        let config = config_with(
            &limits(&format!(
                r#"{{"budgets": [{{"period": "month", "cap_microusd": 5000000}}],
                    "usage": {{"{this}": {{"microusd": 5000000}}}}}}"#
            )),
            "",
        );
        let end = at(year, month, last_day, 23, 59, 59);
        let mut run = Run::new(&config, end);
        assert_eq!(
            run.send("/v1/chat/completions", Some(BODY)).refused,
            Some((403, "spend_cap_exceeded".to_owned())),
            "{this}: spent"
        );
        run.ledger.now_ms = end + 1000;
        let answer = run.chat(r#"{"prompt_tokens": 10, "completion_tokens": 20}"#);
        assert!(answer.allowed(), "{next} starts fresh");
        assert_eq!(
            run.window(OwnerKind::Key, "good1", next).spend.settled,
            220,
            "{next} is charged"
        );
    }
}

#[test]
fn week_windows_start_on_monday() {
    let config = config_with(
        &limits(r#"{"quotas": [{"period": "week", "requests": 1}]}"#),
        "",
    );
    let sunday_night = at(2026, 11, 29, 23, 59, 59);
    let mut run = Run::new(&config, sunday_night);
    assert!(run.send("/v1/models", None).allowed());
    let refused = run.send("/v1/models", None);
    assert_eq!(refused.refused, Some((429, "quota_exceeded".to_owned())));
    assert_eq!(refused.header("retry-after"), Some("1"));
    run.ledger.now_ms = sunday_night + 1000;
    assert!(run.send("/v1/models", None).allowed(), "Monday: week 49");
}

#[test]
fn two_windows_hold_at_once_and_each_refuses_on_its_own() {
    // $10 a day and $200 a month; the month has $199.995 spent.
    let config = config_with(
        &limits(
            r#"{"budgets": [{"period": "day", "cap_microusd": 10000000},
                            {"period": "month", "cap_microusd": 200000000}],
                "usage": {"2026-11": {"microusd": 199995000}, "2026-11-29": {"microusd": 10000000}}}"#,
        ),
        "",
    );
    let now = at(2026, 11, 30, 12, 0, 0);
    let mut run = Run::new(&config, now);
    let mut trace = Steps::default();
    let answer = run.send_traced("/v1/chat/completions", Some(BODY), &mut trace);
    // The day is fresh (yesterday's figure names yesterday), the month has $0.005 left: the
    // request reserves $0.010 (1000 output tokens at $10/M, plus input), so the month refuses.
    assert_eq!(answer.refused, Some((403, "spend_cap_exceeded".to_owned())));
    let steps: Vec<(&str, StepResult)> = trace
        .0
        .iter()
        .filter(|step| step.row == "11")
        .map(|step| (step.check, step.result))
        .collect();
    assert_eq!(
        steps,
        [
            ("spend cap (key)", StepResult::Skip),
            ("budget (key, day)", StepResult::Pass),
            ("budget (key, month)", StepResult::Fail),
        ]
    );
    let month = trace
        .0
        .iter()
        .find(|step| step.check == "budget (key, month)")
        .expect("traced");
    assert!(month.detail.contains("in 2026-11"), "{}", month.detail);
    assert_eq!(
        run.ledger.total_reserved(),
        0,
        "the day's hold was given back"
    );
    assert_eq!(
        run.window(OwnerKind::Key, "good1", "2026-11-30")
            .requests
            .settled,
        0,
        "nor does the day count the refused request"
    );
    // A day later the month is still spent; in December both are fresh.
    run.ledger.now_ms = at(2026, 12, 1, 0, 0, 0);
    assert!(run
        .chat(r#"{"prompt_tokens": 1, "completion_tokens": 1}"#)
        .allowed());
}

#[test]
fn the_day_cap_refuses_when_the_month_has_room() {
    let config = config_with(
        &limits(
            r#"{"budgets": [{"period": "day", "cap_microusd": 10000, "soft_cap_microusd": 5000},
                            {"period": "month", "cap_microusd": 200000000}]}"#,
        ),
        "",
    );
    let mut run = Run::new(&config, at(2026, 11, 30, 12, 0, 0));
    // The reservation ($0.01003: 15 input tokens and 1000 output) alone is over a $0.01 day.
    let first = run.chat(r#"{"prompt_tokens": 400, "completion_tokens": 200}"#);
    assert_eq!(first.refused, Some((403, "spend_cap_exceeded".to_owned())));
    let config = config_with(
        &limits(
            r#"{"budgets": [{"period": "day", "cap_microusd": 20000, "soft_cap_microusd": 5000},
                            {"period": "month", "cap_microusd": 200000000}]}"#,
        ),
        "",
    );
    let mut run = Run::new(&config, at(2026, 11, 30, 12, 0, 0));
    let first = run.chat(r#"{"prompt_tokens": 400, "completion_tokens": 500}"#);
    assert!(first.allowed());
    let second = run.chat(r#"{"prompt_tokens": 400, "completion_tokens": 500}"#);
    assert!(second.allowed());
    assert_eq!(
        second.header("x-keyward-spend-warning"),
        Some("key-soft-cap"),
        "past the day's soft cap"
    );
    let third = run.send("/v1/chat/completions", Some(BODY));
    assert_eq!(third.refused, Some((403, "spend_cap_exceeded".to_owned())));
    assert!(third.header("retry-after").is_some(), "until the day ends");
    assert_eq!(
        run.window(OwnerKind::Key, "good1", "2026-11").spend.settled,
        11_600,
        "the month counted both"
    );
}

#[test]
fn quotas_per_day_and_per_month_count_requests_and_settled_tokens() {
    let config = config_with(
        &limits(
            r#"{"quotas": [{"period": "day", "requests": 100, "tokens": 3000},
                           {"period": "month", "requests": 3}]}"#,
        ),
        "",
    );
    let mut run = Run::new(&config, at(2026, 11, 30, 12, 0, 0));
    // The estimate (≈1015 tokens) is held, then the real 2500 counted.
    let first = run.chat(r#"{"prompt_tokens": 500, "completion_tokens": 2000}"#);
    assert!(first.allowed());
    let day = run.window(OwnerKind::Key, "good1", "2026-11-30");
    assert_eq!((day.tokens.settled, day.tokens.reserved), (2500, 0));
    // 500 left of 3000 and the next estimate is about 1016: refused for tokens.
    let second = run.send("/v1/chat/completions", Some(BODY));
    assert_eq!(second.refused, Some((429, "quota_exceeded".to_owned())));
    assert_eq!(second.header("x-ratelimit-remaining-tokens"), Some("500"));
    // A non-metered request needs no tokens: the month's third request passes, its fourth not.
    assert!(run.send("/v1/models", None).allowed());
    assert!(run.send("/v1/models", None).allowed());
    let over = run.send("/v1/models", None);
    assert_eq!(over.refused, Some((429, "quota_exceeded".to_owned())));
    let reset = over.header("retry-after").expect("retry-after");
    assert_eq!(reset, (12 * 3600).to_string(), "until December 1st");
    assert_eq!(
        run.window(OwnerKind::Key, "good1", "2026-11")
            .requests
            .settled,
        3
    );
}

#[test]
fn a_snapshot_figure_applies_only_to_the_window_it_names() {
    let config = config_with(
        &limits(
            r#"{"quotas": [{"period": "day", "requests": 5}],
                "usage": {"2026-11-30": {"requests": 5}, "2026-12-01": {"requests": 4}}}"#,
        ),
        "",
    );
    let mut run = Run::new(&config, at(2026, 11, 30, 23, 0, 0));
    assert!(!run.send("/v1/models", None).allowed(), "today is used up");
    run.ledger.now_ms = at(2026, 12, 1, 0, 0, 0);
    assert!(
        run.send("/v1/models", None).allowed(),
        "tomorrow's figure (a data plane ahead of this one) counts there"
    );
    assert!(!run.send("/v1/models", None).allowed());
    run.ledger.now_ms = at(2026, 12, 2, 0, 0, 0);
    assert!(run.send("/v1/models", None).allowed());
}

#[test]
fn a_plan_brings_quotas_and_models_and_own_settings_win() {
    let free = config_with(&limits(r#"{"plan": "free"}"#), "");
    let mut run = Run::new(&free, at(2026, 11, 30, 12, 0, 0));
    for _ in 0..3 {
        assert!(run
            .chat(r#"{"prompt_tokens": 1, "completion_tokens": 1}"#)
            .allowed());
    }
    assert_eq!(
        run.send("/v1/chat/completions", Some(BODY)).refused,
        Some((429, "quota_exceeded".to_owned())),
        "free: 3 a day"
    );
    let other_model = r#"{"model": "gpt-4o", "messages": []}"#;
    let mut fresh = Run::new(&free, at(2026, 11, 30, 12, 0, 0));
    assert_eq!(
        fresh
            .send("/v1/chat/completions", Some(other_model))
            .refused,
        Some((403, "model_not_allowed".to_owned())),
        "the plan's allow-list (body)"
    );
    assert_eq!(
        fresh.send("/v1/models", None).refused,
        Some((403, "model_not_allowed".to_owned())),
        "the plan's allow-list (header)"
    );
    // The key's own quota for the day replaces the plan's.
    let own = config_with(
        &limits(r#"{"plan": "free", "quotas": [{"period": "day", "requests": 5}]}"#),
        "",
    );
    let mut run = Run::new(&own, at(2026, 11, 30, 12, 0, 0));
    for _ in 0..5 {
        assert!(run
            .chat(r#"{"prompt_tokens": 1, "completion_tokens": 1}"#)
            .allowed());
    }
    assert!(!run
        .chat(r#"{"prompt_tokens": 1, "completion_tokens": 1}"#)
        .allowed());
    // A project's plan restricts models for every key acting on it.
    let project_plan = config_with("", &limits(r#"{"plan": "free"}"#));
    let mut run = Run::new(&project_plan, at(2026, 11, 30, 12, 0, 0));
    assert_eq!(
        run.send("/v1/chat/completions", Some(other_model)).refused,
        Some((403, "model_not_allowed".to_owned()))
    );
    assert!(run
        .chat(r#"{"prompt_tokens": 1, "completion_tokens": 1}"#)
        .allowed());
    assert_eq!(
        run.window(OwnerKind::Project, "proj_a", "2026-11-30")
            .requests
            .settled,
        1,
        "the project's plan counts on the project"
    );
}

#[test]
fn a_temporary_increase_ends_by_itself() {
    let until = at(2026, 11, 30, 15, 0, 0) / 1000;
    let config = config_with(
        &limits(&format!(
            r#"{{"quotas": [{{"period": "day", "requests": 1}}],
                "increases": [{{"period": "day", "requests": 2, "until": {until}}}]}}"#
        )),
        "",
    );
    let mut run = Run::new(&config, at(2026, 11, 30, 12, 0, 0));
    for _ in 0..3 {
        assert!(run.send("/v1/models", None).allowed());
    }
    assert!(!run.send("/v1/models", None).allowed());
    let mut run = Run::new(&config, until * 1000);
    assert!(run.send("/v1/models", None).allowed());
    assert!(
        !run.send("/v1/models", None).allowed(),
        "at `until` the increase is over, without a push"
    );
}

#[test]
fn a_project_refusal_gives_back_the_keys_windows() {
    let config = config_with(
        &limits(r#"{"quotas": [{"period": "day", "requests": 10}]}"#),
        &limits(
            r#"{"quotas": [{"period": "month", "requests": 2}], "usage": {"2026-11": {"requests": 2}}}"#,
        ),
    );
    let mut run = Run::new(&config, at(2026, 11, 30, 12, 0, 0));
    let refused = run.send("/v1/chat/completions", Some(BODY));
    assert_eq!(refused.refused, Some((429, "quota_exceeded".to_owned())));
    assert!(refused.header("retry-after").is_some());
    let day = run.window(OwnerKind::Key, "good1", "2026-11-30");
    assert_eq!(
        (
            day.requests.settled,
            day.tokens.reserved,
            day.spend.reserved
        ),
        (0, 0, 0)
    );
}

#[test]
fn a_request_settling_after_the_boundary_charges_the_window_it_was_admitted_in() {
    let config = config_with(
        &limits(r#"{"budgets": [{"period": "day", "cap_microusd": 1000000}]}"#),
        "",
    );
    let mut run = Run::new(&config, at(2026, 11, 30, 23, 59, 59));
    let mut answer = run.send("/v1/chat/completions", Some(BODY));
    let watch = answer.watch.as_mut().expect("admitted");
    run.ledger.now_ms = at(2026, 12, 1, 0, 0, 5);
    watch.on_response_headers(&[
        (":status".to_owned(), b"200".to_vec()),
        ("content-type".to_owned(), b"application/json".to_vec()),
    ]);
    let body = br#"{"usage": {"prompt_tokens": 10, "completion_tokens": 20}}"#;
    watch.on_response_body(body.len(), Some(body), true);
    let gate = run.gate;
    let effects = watch.settle(&gate, &mut run.ledger);
    assert_eq!(
        run.window(OwnerKind::Key, "good1", "2026-11-30")
            .spend
            .settled,
        220
    );
    assert_eq!(run.ledger.total_reserved(), 0);
    let record = effects.usage.expect("recorded");
    assert_eq!(record.windows.ids(OwnerKind::Key), ["2026-11-30"]);
}

#[test]
fn every_header_style_on_allowed_and_refused_answers() {
    let config = config_with(
        &limits(
            r#"{"quotas": [{"period": "day", "requests": 2}, {"period": "month", "requests": 100000}],
                "budgets": [{"period": "day", "cap_microusd": 1000000}]}"#,
        ),
        "",
    );
    let midnight = at(2026, 12, 1, 0, 0, 0);
    let now = midnight - 3_600_000;
    let mut run = Run::new(&config, now);
    // Seed 004's trio: the tightest request limit, reset in epoch seconds.
    let seed = run.send("/seed/x", None);
    assert!(seed.allowed());
    assert_eq!(seed.header("x-ratelimit-limit"), Some("2"));
    assert_eq!(seed.header("x-ratelimit-remaining"), Some("1"));
    let epoch = (midnight / 1000).to_string();
    assert_eq!(seed.header("x-ratelimit-reset"), Some(epoch.as_str()));
    // IETF fields list every policy; the budget headers show the day's dollars left.
    let ietf = run.send("/ietf/x", Some(BODY));
    assert!(ietf.allowed());
    assert_eq!(
        ietf.header("ratelimit-policy"),
        Some("\"requests-day\";q=2;w=86400, \"requests-month\";q=100000;w=2592000")
    );
    assert_eq!(
        ietf.header("ratelimit"),
        Some("\"requests-day\";r=0;t=3600, \"requests-month\";r=99998;t=3600")
    );
    assert_eq!(
        ietf.header("x-keyward-budget-remaining-microusd"),
        Some("989970"),
        "$1 less this request's reservation ($0.01003)"
    );
    assert_eq!(ietf.header("x-keyward-budget-reset"), Some(epoch.as_str()));
    // Refused: the same styles, with retry-after.
    let refused = run.send("/seed/x", None);
    assert_eq!(refused.refused, Some((429, "quota_exceeded".to_owned())));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(refused.header("x-ratelimit-reset"), Some(epoch.as_str()));
    assert_eq!(refused.header("retry-after"), Some("3600"));
    let refused = run.send("/ietf/x", Some(BODY));
    assert_eq!(
        refused.header("ratelimit"),
        Some("\"requests-day\";r=0;t=3600"),
        "the policies checked before the refusal"
    );
    let refused = run.send("/v1/models", None);
    assert_eq!(refused.header("x-ratelimit-limit-requests"), Some("2"));
    assert_eq!(refused.header("x-ratelimit-reset-requests"), Some("1h0m0s"));
}

#[test]
fn a_key_without_limits_touches_no_counter() {
    let config = config_with("", "");
    let mut run = Run::new(&config, at(2026, 11, 30, 12, 0, 0));
    assert!(run.send("/v1/models", None).allowed());
    assert_eq!(run.ledger.operations, 0, "not even the clock");
}

#[test]
fn shadow_mode_counts_what_it_lets_through() {
    let json = config_with(
        &limits(r#"{"quotas": [{"period": "day", "requests": 1}]}"#),
        "",
    );
    let mut settings = json.settings.clone();
    settings.mode = crate::config::Mode::Shadow;
    let shadow = PluginConfig {
        settings,
        ..json.clone()
    };
    let mut run = Run::new(&shadow, at(2026, 11, 30, 12, 0, 0));
    assert!(run.send("/v1/models", None).allowed());
    assert!(
        run.send("/v1/models", None).allowed(),
        "shadow: let through"
    );
    assert_eq!(
        run.window(OwnerKind::Key, "good1", "2026-11-30")
            .requests
            .settled,
        2,
        "and counted, as the usage report will count it"
    );
}

#[test]
fn explain_traces_quotas_on_row_11b() {
    let config = config_with(
        &limits(r#"{"quotas": [{"period": "month", "requests": 10, "tokens": 50000}]}"#),
        "",
    );
    let mut run = Run::new(&config, at(2026, 11, 30, 12, 0, 0));
    let mut trace = Steps::default();
    assert!(run
        .send_traced("/v1/chat/completions", Some(BODY), &mut trace)
        .allowed());
    let step = trace
        .0
        .iter()
        .find(|step| step.row == "11b")
        .expect("row 11b");
    assert_eq!(step.check, "quota (key, month)");
    assert_eq!(
        step.detail,
        "requests: 0 of 10 used, tokens: 0 of 50000 used in 2026-11"
    );
    let _ = NoTrace;
}
