//! The response headers that tell a client where it stands, in the style its route asks for:
//! OpenAI's `x-ratelimit-*-requests` / `-tokens` (the default), the `X-RateLimit-Limit` /
//! `-Remaining` / `-Reset` trio with an epoch reset (seed 004's plans), or the IETF
//! `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers). Each style
//! that shows one figure shows the tightest limit: the one with the least left.

use serde::Deserialize;

use crate::rate_limit::format_reset;

/// A route's `limit_headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitHeaders {
    /// `x-ratelimit-limit-requests`, `x-ratelimit-remaining-tokens`, `x-ratelimit-reset-*`
    /// (a duration: `20s`, `6m0s`, `5h3m0s`).
    #[default]
    Openai,
    /// `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (Unix seconds) of the
    /// tightest request limit.
    XRatelimit,
    /// `ratelimit-policy` and `ratelimit`, one list member per limit.
    Ietf,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Requests,
    Tokens,
}

/// One limit after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// The IETF policy name: `requests-minute`, `tokens-day`, `project-requests-month`.
    pub policy: &'static str,
    pub unit: Unit,
    pub limit: u64,
    pub remaining: u64,
    /// Until it resets (a window's end) or refills (a per-minute bucket).
    pub reset_ms: u64,
    pub window_seconds: u64,
}

/// The tightest spend budget left after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetState {
    pub remaining_microusd: u64,
    /// Until its window ends; `None` for a lifetime budget.
    pub reset_ms: Option<u64>,
}

fn tightest(states: &[LimitState], unit: Unit) -> Option<&LimitState> {
    states
        .iter()
        .filter(|state| state.unit == unit)
        .min_by_key(|state| (state.remaining, std::cmp::Reverse(state.reset_ms)))
}

fn epoch_seconds(now_ms: u64, after_ms: u64) -> String {
    now_ms.saturating_add(after_ms).div_ceil(1000).to_string()
}

/// The headers for `states` in `style`, and the budget headers when asked for.
pub fn render(
    style: LimitHeaders,
    states: &[LimitState],
    budget: Option<BudgetState>,
    budget_headers: bool,
    now_ms: u64,
) -> Vec<(String, String)> {
    let mut headers = Vec::new();
    if states.is_empty() && !(budget_headers && budget.is_some()) {
        // The common case (no limit, no budget header): nothing to render, and the formatting
        // code below is not even touched on the request path.
        return headers;
    }
    match style {
        LimitHeaders::Openai => {
            for (kind, unit) in [("requests", Unit::Requests), ("tokens", Unit::Tokens)] {
                if let Some(state) = tightest(states, unit) {
                    headers.push((format!("x-ratelimit-limit-{kind}"), state.limit.to_string()));
                    headers.push((
                        format!("x-ratelimit-remaining-{kind}"),
                        state.remaining.to_string(),
                    ));
                    headers.push((
                        format!("x-ratelimit-reset-{kind}"),
                        format_reset(state.reset_ms),
                    ));
                }
            }
        }
        LimitHeaders::XRatelimit => {
            let state = tightest(states, Unit::Requests).or_else(|| tightest(states, Unit::Tokens));
            if let Some(state) = state {
                headers.push(("x-ratelimit-limit".to_owned(), state.limit.to_string()));
                headers.push((
                    "x-ratelimit-remaining".to_owned(),
                    state.remaining.to_string(),
                ));
                headers.push((
                    "x-ratelimit-reset".to_owned(),
                    epoch_seconds(now_ms, state.reset_ms),
                ));
            }
        }
        LimitHeaders::Ietf if !states.is_empty() => {
            let unit = |state: &LimitState| match state.unit {
                Unit::Requests => "",
                Unit::Tokens => ";qu=\"tokens\"",
            };
            let policies: Vec<String> = states
                .iter()
                .map(|s| {
                    format!(
                        "\"{}\";q={};w={}{}",
                        s.policy,
                        s.limit,
                        s.window_seconds,
                        unit(s)
                    )
                })
                .collect();
            let current: Vec<String> = states
                .iter()
                .map(|s| {
                    format!(
                        "\"{}\";r={};t={}",
                        s.policy,
                        s.remaining,
                        s.reset_ms.div_ceil(1000)
                    )
                })
                .collect();
            headers.push(("ratelimit-policy".to_owned(), policies.join(", ")));
            headers.push(("ratelimit".to_owned(), current.join(", ")));
        }
        LimitHeaders::Ietf | LimitHeaders::None => {}
    }
    if let (true, Some(budget)) = (budget_headers, budget) {
        headers.push((
            "x-keyward-budget-remaining-microusd".to_owned(),
            budget.remaining_microusd.to_string(),
        ));
        if let Some(reset_ms) = budget.reset_ms {
            headers.push((
                "x-keyward-budget-reset".to_owned(),
                epoch_seconds(now_ms, reset_ms),
            ));
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const NOW_MS: u64 = 1_800_000_000_500;

    fn states() -> Vec<LimitState> {
        vec![
            LimitState {
                policy: "requests-minute",
                unit: Unit::Requests,
                limit: 60,
                remaining: 59,
                reset_ms: 1000,
                window_seconds: 60,
            },
            LimitState {
                policy: "requests-day",
                unit: Unit::Requests,
                limit: 50,
                remaining: 7,
                reset_ms: 3_600_000,
                window_seconds: 86_400,
            },
            LimitState {
                policy: "project-tokens-month",
                unit: Unit::Tokens,
                limit: 100_000,
                remaining: 400,
                reset_ms: 18_000_000,
                window_seconds: 2_592_000,
            },
        ]
    }

    fn value<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn openai_style_shows_the_tightest_limit_per_unit() {
        let headers = render(LimitHeaders::Openai, &states(), None, false, NOW_MS);
        assert_eq!(value(&headers, "x-ratelimit-limit-requests"), Some("50"));
        assert_eq!(value(&headers, "x-ratelimit-remaining-requests"), Some("7"));
        assert_eq!(
            value(&headers, "x-ratelimit-reset-requests"),
            Some("1h0m0s")
        );
        assert_eq!(value(&headers, "x-ratelimit-remaining-tokens"), Some("400"));
        assert_eq!(value(&headers, "x-ratelimit-reset-tokens"), Some("5h0m0s"));
        assert_eq!(headers.len(), 6);
    }

    #[test]
    fn x_ratelimit_style_resets_in_epoch_seconds() {
        let headers = render(LimitHeaders::XRatelimit, &states(), None, false, NOW_MS);
        assert_eq!(
            headers,
            [
                ("x-ratelimit-limit".to_owned(), "50".to_owned()),
                ("x-ratelimit-remaining".to_owned(), "7".to_owned()),
                ("x-ratelimit-reset".to_owned(), "1800003601".to_owned()),
            ]
        );
    }

    #[test]
    fn ietf_style_lists_every_policy() {
        let headers = render(LimitHeaders::Ietf, &states(), None, false, NOW_MS);
        assert_eq!(
            value(&headers, "ratelimit-policy"),
            Some(
                "\"requests-minute\";q=60;w=60, \"requests-day\";q=50;w=86400, \
                 \"project-tokens-month\";q=100000;w=2592000;qu=\"tokens\""
            )
        );
        assert_eq!(
            value(&headers, "ratelimit"),
            Some(
                "\"requests-minute\";r=59;t=1, \"requests-day\";r=7;t=3600, \
                 \"project-tokens-month\";r=400;t=18000"
            )
        );
    }

    #[test]
    fn no_limits_no_headers_and_budget_headers_on_request() {
        for style in [
            LimitHeaders::Openai,
            LimitHeaders::XRatelimit,
            LimitHeaders::Ietf,
            LimitHeaders::None,
        ] {
            assert!(render(style, &[], None, false, NOW_MS).is_empty());
        }
        let budget = BudgetState {
            remaining_microusd: 4_250_000,
            reset_ms: Some(999),
        };
        let headers = render(LimitHeaders::None, &states(), Some(budget), true, NOW_MS);
        assert_eq!(
            headers,
            [
                (
                    "x-keyward-budget-remaining-microusd".to_owned(),
                    "4250000".to_owned()
                ),
                ("x-keyward-budget-reset".to_owned(), "1800000002".to_owned()),
            ]
        );
        assert!(render(LimitHeaders::None, &[], Some(budget), false, NOW_MS).is_empty());
    }
}
