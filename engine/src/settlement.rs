//! What a metered request is charged when its response ends, however it ended: the billing
//! rules. The response is watched as it passes (status, content type and encoding, usage read
//! from the body as it streams); [`bill`] then decides the cost.

use crate::admission::Metering;
use crate::metering::{MeteringSettings, MissingUsageCharge};
use crate::pricing::TokenCounts;
use crate::usage::{BodyShape, UsageReader};

/// What one request adds to the usage report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cost_microusd: u64,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// Why a request was charged what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeReason {
    /// The provider's usage, priced.
    Reported,
    /// The upstream failed (no status, or 4xx/5xx) without usage: providers do not bill errors.
    UpstreamFailed,
    /// Nothing came back.
    NoContent,
    /// Content reached the client without usage: the reservation (or nothing, with
    /// `missing_usage: zero`).
    MissingUsage,
    /// Usage with negative, fractional or implausibly large counts: the reservation.
    InvalidUsage,
    /// A compressed (or otherwise encoded) body whose usage cannot be read: the reservation,
    /// whatever `missing_usage` says, so compression cannot dodge the bill.
    Unreadable,
}

/// The response as it passes, for billing.
#[derive(Debug)]
pub struct ResponseMeter {
    pub status: u16,
    reader: Option<UsageReader>,
    /// `content-encoding` other than `identity`: the body is not readable as it passes.
    encoded: bool,
    pub body_bytes: u64,
    /// The body's last byte passed.
    pub complete: bool,
}

impl ResponseMeter {
    /// From the response headers: the status, how to read usage, whether the body is encoded.
    pub fn new(status: Option<&str>, content_type: Option<&[u8]>, encoding: Option<&[u8]>) -> Self {
        let encoded = encoding.is_some_and(|value| {
            let value = value.trim_ascii();
            !value.is_empty() && !value.eq_ignore_ascii_case(b"identity")
        });
        let reader = if encoded {
            None
        } else {
            content_type
                .and_then(BodyShape::from_content_type)
                .map(UsageReader::new)
        };
        ResponseMeter {
            status: status.and_then(|s| s.trim().parse().ok()).unwrap_or(0),
            reader,
            encoded,
            body_bytes: 0,
            complete: false,
        }
    }

    /// Whether body chunks need to be read at all (or only counted).
    pub fn reads_body(&self) -> bool {
        self.reader.is_some()
    }

    /// A chunk passed: `bytes` when [`ResponseMeter::reads_body`], else only its size counts.
    pub fn chunk(&mut self, size: usize, bytes: Option<&[u8]>) {
        self.body_bytes = self.body_bytes.saturating_add(size as u64);
        if let (Some(reader), Some(bytes)) = (self.reader.as_mut(), bytes) {
            reader.feed(bytes);
        }
    }

    pub fn end(&mut self) {
        self.complete = true;
        if let Some(reader) = self.reader.as_mut() {
            reader.finish();
        }
    }
}

/// The charge for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bill {
    pub cost_microusd: u64,
    pub reason: ChargeReason,
    pub tokens: Option<TokenCounts>,
}

impl Bill {
    /// Tokens the request used, for the per-minute token bucket.
    pub fn used_tokens(&self) -> u64 {
        self.tokens.map_or(0, |t| {
            t.input
                .saturating_add(t.cached_input)
                .saturating_add(t.cache_write)
                .saturating_add(t.output)
        })
    }

    pub fn usage(&self) -> Usage {
        Usage {
            cost_microusd: self.cost_microusd,
            requests: 1,
            input_tokens: self.tokens.map_or(0, |t| {
                t.input
                    .saturating_add(t.cached_input)
                    .saturating_add(t.cache_write)
            }),
            output_tokens: self.tokens.map_or(0, |t| t.output),
        }
    }
}

/// The billing rules: what a metered request costs, given how its response went. A missing
/// response meter means no response headers ever came (the upstream failed).
pub fn bill(
    settings: &MeteringSettings,
    metering: &Metering,
    response: Option<&ResponseMeter>,
) -> Bill {
    let reservation = metering.estimate.reservation_microusd;
    let charge = |reason: ChargeReason, cost: u64| Bill {
        cost_microusd: cost,
        reason,
        tokens: None,
    };
    let Some(response) = response else {
        return charge(ChargeReason::UpstreamFailed, 0);
    };
    let reader = response.reader.as_ref();
    if let Some(usage) = reader.and_then(UsageReader::usage) {
        let tokens = TokenCounts {
            input: usage.input_tokens,
            cached_input: usage.cached_input_tokens,
            cache_write: usage.cache_write_tokens,
            output: usage.output_tokens,
        };
        let invalid = reader.is_some_and(UsageReader::has_invalid_counts)
            || usage.total_tokens() > settings.max_tokens_per_request;
        if invalid {
            return charge(ChargeReason::InvalidUsage, reservation);
        }
        return Bill {
            cost_microusd: metering
                .price
                .map_or(0, |price| price.cost_microusd(&tokens)),
            reason: ChargeReason::Reported,
            tokens: Some(tokens),
        };
    }
    if response.status == 0 || response.status >= 400 {
        return charge(ChargeReason::UpstreamFailed, 0);
    }
    if response.body_bytes == 0 {
        return charge(ChargeReason::NoContent, 0);
    }
    if response.encoded {
        return charge(ChargeReason::Unreadable, reservation);
    }
    // Content reached the client without usage numbers (none sent, or the stream was cut
    // before them): the budget pays the reservation, so usage cannot be dodged by hanging up
    // before the last chunk.
    match settings.missing_usage {
        MissingUsageCharge::Reservation => charge(ChargeReason::MissingUsage, reservation),
        MissingUsageCharge::Zero => charge(ChargeReason::MissingUsage, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::field_error::from_json;
    use crate::metering::Estimate;
    use crate::pricing::Price;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn settings(json: &str) -> MeteringSettings {
        MeteringSettings::compile(from_json(json.as_bytes()).expect("doc")).expect("valid")
    }

    const METERING: Metering = Metering {
        price: Some(Price {
            input: 2_000_000,
            output: 10_000_000,
            cached_input: 0,
            cache_write: 0,
        }),
        estimate: Estimate {
            input_tokens: 100,
            output_tokens: 1000,
            reservation_microusd: 10_200,
        },
    };

    fn response(status: &str, encoding: Option<&str>, body: &str) -> ResponseMeter {
        let mut meter = ResponseMeter::new(
            Some(status),
            Some(b"application/json"),
            encoding.map(str::as_bytes),
        );
        let bytes = meter.reads_body().then_some(body.as_bytes());
        meter.chunk(body.len(), bytes);
        meter.end();
        meter
    }

    #[test]
    fn reported_usage_is_priced() {
        let body = r#"{"usage":{"prompt_tokens":10,"completion_tokens":20}}"#;
        let bill = bill(
            &settings("{}"),
            &METERING,
            Some(&response("200", None, body)),
        );
        assert_eq!(bill.reason, ChargeReason::Reported);
        assert_eq!(bill.cost_microusd, 20 + 200);
        assert_eq!(bill.used_tokens(), 30);
    }

    #[test]
    fn invalid_or_absurd_counts_pay_the_reservation() {
        for body in [
            r#"{"usage":{"prompt_tokens":-10,"completion_tokens":-20}}"#,
            r#"{"usage":{"prompt_tokens":1.5,"completion_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens":"10","completion_tokens":2}}"#,
            r#"{"usage":{"input_tokens":100000000000000000000,"output_tokens":1}}"#,
            r#"{"usage":{"prompt_tokens":10000001,"completion_tokens":0}}"#,
        ] {
            let bill = bill(
                &settings("{}"),
                &METERING,
                Some(&response("200", None, body)),
            );
            assert_eq!(bill.reason, ChargeReason::InvalidUsage, "{body}");
            assert_eq!(bill.cost_microusd, 10_200, "{body}");
        }
    }

    #[test]
    fn encoded_bodies_pay_the_reservation_even_with_missing_usage_zero() {
        let zero = settings(r#"{"missing_usage": "zero"}"#);
        let gzip = response("200", Some("gzip"), "\u{1f}\u{8b}...");
        let bill = bill(&zero, &METERING, Some(&gzip));
        assert_eq!(bill.reason, ChargeReason::Unreadable);
        assert_eq!(bill.cost_microusd, 10_200);
        let identity = response("200", Some("identity"), "{}");
        assert_eq!(
            super::bill(&zero, &METERING, Some(&identity)).reason,
            ChargeReason::MissingUsage
        );
    }

    #[test]
    fn failures_and_empty_answers_cost_nothing() {
        assert_eq!(bill(&settings("{}"), &METERING, None).cost_microusd, 0);
        let error = response("500", None, r#"{"error":{}}"#);
        assert_eq!(
            bill(&settings("{}"), &METERING, Some(&error)).reason,
            ChargeReason::UpstreamFailed
        );
        let empty = response("200", None, "");
        assert_eq!(
            bill(&settings("{}"), &METERING, Some(&empty)).reason,
            ChargeReason::NoContent
        );
    }
}
