//! Local per-key rate limits (DESIGN §3 step 12): token buckets that refill continuously, one
//! entry per key in Envoy shared data so every worker of one Envoy draws from the same buckets.
//! Requests per minute are taken when a request is admitted; tokens per minute are taken as an
//! estimate then and corrected to the response's real usage when it ends.

use crate::snapshot::RateLimits;

pub const RATE_ENTRY_PREFIX: &str = "keyward/rate/";
const MINUTE_MS: u64 = 60_000;
/// Bucket levels are kept in units of 1/60000 so that a refill of `limit` units per millisecond
/// is exact: no rounding is lost between two nearby refills.
const SCALE: i128 = MINUTE_MS as i128;

pub fn rate_entry(key_id: &str) -> String {
    format!("{RATE_ENTRY_PREFIX}{key_id}")
}

/// One bucket's level (in 1/60000 units; negative after a request used more tokens than
/// estimated) and when it was last refilled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    level_milli: i128,
    updated_ms: u64,
}

impl Bucket {
    fn full(limit: u64, now_ms: u64) -> Bucket {
        Bucket {
            level_milli: i128::from(limit) * SCALE,
            updated_ms: now_ms,
        }
    }

    fn refill(&mut self, limit: u64, now_ms: u64) {
        let capacity = i128::from(limit) * SCALE;
        let elapsed = now_ms.saturating_sub(self.updated_ms);
        let added = i128::from(elapsed) * i128::from(limit);
        self.level_milli = self.level_milli.saturating_add(added).min(capacity);
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    /// Whole units available now.
    fn available(&self) -> u64 {
        u64::try_from(self.level_milli.max(0) / SCALE).unwrap_or(u64::MAX)
    }

    /// Milliseconds until `units` are available (0 if they are).
    fn wait_ms(&self, limit: u64, units: u64) -> u64 {
        let missing = i128::from(units) * SCALE - self.level_milli;
        if missing <= 0 || limit == 0 {
            return 0;
        }
        let per_ms = i128::from(limit);
        let wait = (missing + per_ms - 1) / per_ms;
        u64::try_from(wait).unwrap_or(u64::MAX)
    }

    fn take(&mut self, units: u64) {
        self.level_milli = self.level_milli.saturating_sub(i128::from(units) * SCALE);
    }

    fn give_back(&mut self, units: u64, limit: u64) {
        let capacity = i128::from(limit) * SCALE;
        self.level_milli = self
            .level_milli
            .saturating_add(i128::from(units) * SCALE)
            .min(capacity);
    }
}

/// A key's buckets as stored in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateState {
    pub requests: Option<Bucket>,
    pub tokens: Option<Bucket>,
}

/// What the `x-ratelimit-*` headers say after a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    pub limit: u64,
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateReport {
    pub requests: Option<LimitStatus>,
    pub tokens: Option<LimitStatus>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Allowed(RateReport),
    /// Refused; `retry_after_ms` until the request would fit.
    Limited {
        report: RateReport,
        retry_after_ms: u64,
    },
}

fn status(bucket: &Bucket, limit: u64) -> LimitStatus {
    let remaining = bucket.available().min(limit);
    LimitStatus {
        limit,
        remaining,
        reset_ms: bucket.wait_ms(limit, limit),
    }
}

impl RateState {
    /// Takes one request and `estimated_tokens` (capped at the minute's limit, so one large
    /// request can still run on a full bucket) if both fit; otherwise takes nothing.
    pub fn admit(
        &mut self,
        limits: &RateLimits,
        now_ms: u64,
        estimated_tokens: u64,
    ) -> RateDecision {
        let rpm = limits.requests_per_minute.map(u64::from);
        let tpm = limits.tokens_per_minute;
        let mut requests = rpm.map(|limit| {
            let mut bucket = self.requests.unwrap_or_else(|| Bucket::full(limit, now_ms));
            bucket.refill(limit, now_ms);
            (bucket, limit)
        });
        let mut tokens = tpm.map(|limit| {
            let mut bucket = self.tokens.unwrap_or_else(|| Bucket::full(limit, now_ms));
            bucket.refill(limit, now_ms);
            (bucket, limit)
        });
        let wanted_tokens = tpm.map_or(0, |limit| estimated_tokens.min(limit));
        let request_wait = requests.map_or(0, |(bucket, limit)| bucket.wait_ms(limit, 1));
        // A token budget admits a request while it is positive; the estimate is then taken.
        let token_wait = tokens.map_or(0, |(bucket, limit)| {
            bucket.wait_ms(limit, wanted_tokens.max(1))
        });
        let retry_after_ms = request_wait.max(token_wait);
        if retry_after_ms == 0 {
            if let Some((bucket, _)) = requests.as_mut() {
                bucket.take(1);
            }
            if let Some((bucket, _)) = tokens.as_mut() {
                bucket.take(wanted_tokens);
            }
        }
        self.requests = requests.map(|(bucket, _)| bucket);
        self.tokens = tokens.map(|(bucket, _)| bucket);
        let report = RateReport {
            requests: requests.map(|(bucket, limit)| status(&bucket, limit)),
            tokens: tokens.map(|(bucket, limit)| status(&bucket, limit)),
        };
        if retry_after_ms == 0 {
            RateDecision::Allowed(report)
        } else {
            RateDecision::Limited {
                report,
                retry_after_ms,
            }
        }
    }

    /// Returns what [`RateState::admit`] took: one request and `tokens` (a refusal after the
    /// take must not cost the caller its place).
    pub fn give_back(&mut self, limits: &RateLimits, tokens: u64) {
        if let (Some(limit), Some(bucket)) = (limits.requests_per_minute, self.requests.as_mut()) {
            bucket.give_back(1, u64::from(limit));
        }
        if let (Some(limit), Some(bucket)) = (limits.tokens_per_minute, self.tokens.as_mut()) {
            bucket.give_back(tokens, limit);
        }
    }

    /// Corrects the token bucket from the estimate taken at admission to the real usage.
    pub fn settle_tokens(&mut self, limits: &RateLimits, estimated: u64, actual: u64) {
        let (Some(limit), Some(bucket)) = (limits.tokens_per_minute, self.tokens.as_mut()) else {
            return;
        };
        let taken = estimated.min(limit);
        if actual >= taken {
            bucket.take(actual - taken);
        } else {
            bucket.give_back(taken - actual, limit);
        }
    }

    /// `v1 <level>:<updated_ms> <level>:<updated_ms>` with `-` for an unused bucket.
    pub fn encode(&self) -> Vec<u8> {
        let part = |bucket: &Option<Bucket>| {
            bucket.map_or("-".to_owned(), |b| {
                format!("{}:{}", b.level_milli, b.updated_ms)
            })
        };
        format!("v1 {} {}", part(&self.requests), part(&self.tokens)).into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<RateState> {
        let text = core::str::from_utf8(bytes).ok()?;
        let mut parts = text.split(' ');
        if parts.next()? != "v1" {
            return None;
        }
        let bucket = |part: &str| -> Option<Option<Bucket>> {
            if part == "-" {
                return Some(None);
            }
            let (level, updated) = part.split_once(':')?;
            Some(Some(Bucket {
                level_milli: level.parse().ok()?,
                updated_ms: updated.parse().ok()?,
            }))
        };
        let requests = bucket(parts.next()?)?;
        let tokens = bucket(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(RateState { requests, tokens })
    }
}

/// OpenAI's duration style for `x-ratelimit-reset-*`: `1s`, `6m0s`, `250ms`, and for day and
/// month quotas `5h3m20s`.
pub fn format_reset(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let seconds = ms.div_ceil(1000);
    if seconds < 60 {
        format!("{seconds}s")
    } else if seconds < 3600 {
        format!("{}m{}s", seconds / 60, seconds % 60)
    } else {
        format!(
            "{}h{}m{}s",
            seconds / 3600,
            (seconds % 3600) / 60,
            seconds % 60
        )
    }
}

/// `retry-after` in whole seconds, at least 1.
pub fn retry_after_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn rpm(limit: u32) -> RateLimits {
        RateLimits {
            requests_per_minute: Some(limit),
            tokens_per_minute: None,
        }
    }

    #[test]
    fn the_request_after_the_limit_is_refused_until_a_refill() {
        let mut state = RateState::default();
        let limits = rpm(3);
        for expected_remaining in [2, 1, 0] {
            match state.admit(&limits, 1000, 0) {
                RateDecision::Allowed(report) => {
                    let requests = report.requests.expect("limited");
                    assert_eq!(
                        (requests.limit, requests.remaining),
                        (3, expected_remaining)
                    );
                }
                other => panic!("expected allowed, got {other:?}"),
            }
        }
        match state.admit(&limits, 1000, 0) {
            RateDecision::Limited { retry_after_ms, .. } => assert_eq!(retry_after_ms, 20_000),
            other => panic!("expected limited, got {other:?}"),
        }
        assert!(matches!(
            state.admit(&limits, 20_999, 0),
            RateDecision::Limited { .. }
        ));
        assert!(matches!(
            state.admit(&limits, 21_000, 0),
            RateDecision::Allowed(_)
        ));
    }

    #[test]
    fn reset_is_the_time_until_full() {
        let mut state = RateState::default();
        let RateDecision::Allowed(report) = state.admit(&rpm(60), 0, 0) else {
            panic!("allowed");
        };
        assert_eq!(report.requests.map(|r| r.reset_ms), Some(1000));
        assert_eq!(format_reset(1000), "1s");
        assert_eq!(format_reset(360_000), "6m0s");
        assert_eq!(format_reset(250), "250ms");
        assert_eq!(retry_after_seconds(1), 1);
        assert_eq!(retry_after_seconds(20_000), 20);
    }

    #[test]
    fn token_limits_take_the_estimate_then_the_real_usage() {
        let limits = RateLimits {
            requests_per_minute: None,
            tokens_per_minute: Some(1000),
        };
        let mut state = RateState::default();
        assert!(matches!(
            state.admit(&limits, 0, 600),
            RateDecision::Allowed(_)
        ));
        state.settle_tokens(&limits, 600, 900);
        // 100 left: a request estimating 200 waits for 100 more tokens (6 s at 1000/min).
        match state.admit(&limits, 0, 200) {
            RateDecision::Limited { retry_after_ms, .. } => assert_eq!(retry_after_ms, 6000),
            other => panic!("expected limited, got {other:?}"),
        }
        state.settle_tokens(&limits, 0, 0);
        // A huge estimate is capped at the minute's limit, so it runs on a full bucket.
        let mut fresh = RateState::default();
        assert!(matches!(
            fresh.admit(&limits, 0, 1_000_000),
            RateDecision::Allowed(_)
        ));
    }

    #[test]
    fn state_round_trips_and_garbage_is_refused() {
        let mut state = RateState::default();
        let _ = state.admit(
            &RateLimits {
                requests_per_minute: Some(5),
                tokens_per_minute: Some(10),
            },
            42,
            3,
        );
        assert_eq!(RateState::decode(&state.encode()), Some(state));
        let empty = RateState::default();
        assert_eq!(RateState::decode(&empty.encode()), Some(empty));
        for bad in [&b"v1 -"[..], b"v2 - -", b"v1 x:1 -", b"v1 - - -"] {
            assert_eq!(RateState::decode(bad), None);
        }
    }
}
