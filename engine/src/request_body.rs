//! What a JSON request body says about the spend it may cause: the model, the output-token
//! limit, and whether the response streams (and reports usage when it does).
//!
//! The body is read with `serde_json`'s borrowed `RawValue`s: only the few top-level fields read
//! here are decoded, and the rewrite in [`with_stream_usage`] splices into the original bytes, so
//! every other byte (numbers such as `0.1`, `1e400` or 30-digit integers, key order, whitespace,
//! duplicate keys) reaches the provider exactly as the client sent it.

use core::fmt;
use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Model names longer than this are not read (see [`RequestBodyFacts::model`]).
pub const MAX_MODEL_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestBodyFacts {
    /// The top-level `model` string. `None` when it is absent, not a string, or longer than
    /// [`MAX_MODEL_BYTES`]: no provider has model names that long, so such a body names no model
    /// keyward can price or match. A caller that restricts models must therefore treat `None` as
    /// "not an allowed model", never as "any model".
    pub model: Option<String>,
    /// The largest output limit the body states in any field a provider reads
    /// (`max_completion_tokens`, `max_tokens`, `max_output_tokens`,
    /// `generationConfig.maxOutputTokens`), every duplicate included, read leniently (see
    /// [`lenient_count`]): a provider may take any one of them, so the reservation assumes the
    /// largest. `None` when no field holds a usable number.
    pub max_output_tokens: Option<u64>,
    /// How many completions the request asks for (`n`, `best_of`,
    /// `generationConfig.candidateCount`; the largest), at least 1.
    pub choices: u64,
    /// `"stream": true` at the top level.
    pub stream: bool,
    /// `stream_options.include_usage` is `true`.
    pub stream_usage_requested: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Invalid UTF-8, invalid JSON, or JSON that is not an object.
    NotJsonObject,
    /// Longer than the caller's limit; not parsed.
    TooLarge,
    /// `model` is given more than once with different values: parsers differ on which one
    /// counts, so the model checked might not be the model used.
    ConflictingModel,
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BodyError::NotJsonObject => "request body is not a JSON object",
            BodyError::TooLarge => "request body is too large",
            BodyError::ConflictingModel => "request body names more than one model",
        })
    }
}

const OUTPUT_LIMIT_KEYS: [&str; 3] = ["max_completion_tokens", "max_tokens", "max_output_tokens"];
const CHOICE_KEYS: [&str; 2] = ["n", "best_of"];
/// Google's generation settings, nested one level down.
const GENERATION_CONFIG: &str = "generationConfig";

pub fn read_request_body(body: &[u8], max_bytes: usize) -> Result<RequestBodyFacts, BodyError> {
    if body.len() > max_bytes {
        return Err(BodyError::TooLarge);
    }
    let text = core::str::from_utf8(body).map_err(|_| BodyError::NotJsonObject)?;
    let entries = object_entries(text).ok_or(BodyError::NotJsonObject)?;
    let mut models = entries.iter().filter(|(name, _)| name == "model");
    if let Some((_, first)) = models.next() {
        if models.any(|(_, other)| other.get() != first.get()) {
            return Err(BodyError::ConflictingModel);
        }
    }
    Ok(facts_of(&entries))
}

fn facts_of(entries: &[Entry<'_>]) -> RequestBodyFacts {
    let mut facts = RequestBodyFacts {
        model: last(entries, "model")
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
            .filter(|model| model.len() <= MAX_MODEL_BYTES),
        stream: last(entries, "stream").is_some_and(|raw| raw.get() == "true"),
        stream_usage_requested: last(entries, "stream_options").is_some_and(includes_usage),
        ..RequestBodyFacts::default()
    };
    let generation: Vec<Entry<'_>> = entries
        .iter()
        .filter(|(name, _)| name == GENERATION_CONFIG)
        .filter_map(|(_, raw)| object_entries(raw.get()))
        .flatten()
        .collect();
    let largest = |pairs: &[Entry<'_>], keys: &[&str]| {
        pairs
            .iter()
            .filter(|(name, _)| keys.contains(&name.as_ref()))
            .filter_map(|(_, raw)| lenient_count(raw))
            .max()
    };
    facts.max_output_tokens = largest(entries, &OUTPUT_LIMIT_KEYS)
        .into_iter()
        .chain(largest(&generation, &["maxOutputTokens"]))
        .max();
    facts.choices = largest(entries, &CHOICE_KEYS)
        .into_iter()
        .chain(largest(&generation, &["candidateCount"]))
        .max()
        .unwrap_or(1)
        .max(1);
    facts
}

/// A count as a lenient provider would read it: an integer; a fraction or exponent rounded up
/// (`1.5`, `4e3`); the same inside a string (`"4000"`); beyond `u64`, saturated. Negative
/// numbers, `null` and everything else are `None`: no provider runs such a request. Used where
/// reading more than the strict value errs on the safe side (the reservation).
pub fn lenient_count(raw: &RawValue) -> Option<u64> {
    let text = raw.get();
    // Only a string is unquoted: trying it on a number would build (and allocate) an error.
    let text = if text.starts_with('"') {
        match serde_json::from_str::<&str>(text) {
            Ok(inner) => inner.trim(),
            Err(_) => text,
        }
    } else {
        text
    };
    ceil_decimal(text)
}

/// The smallest integer at or above the non-negative decimal `text` (JSON number grammar),
/// saturated at `u64::MAX`; `None` for anything else. Integer arithmetic only: no float
/// rounding, and no float parser in the module.
fn ceil_decimal(text: &str) -> Option<u64> {
    // The common case, a plain integer that fits: no digit copy.
    if (1..=19).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (text.get(..at)?, text.get(at + 1..)?),
        None => (text, "0"),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_ok = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits_ok(whole) || !digits_ok(fraction) {
        return None;
    }
    if mantissa.contains('.') && fraction.is_empty() {
        return None;
    }
    let (negative_exponent, exponent_digits) = match exponent.as_bytes().first() {
        Some(b'-') => (true, exponent.get(1..)?),
        Some(b'+') => (false, exponent.get(1..)?),
        _ => (false, exponent),
    };
    if exponent_digits.is_empty() || !digits_ok(exponent_digits) {
        return None;
    }
    // All significant digits, and where the decimal point sits among them.
    let digits: Vec<u8> = whole.bytes().chain(fraction.bytes()).collect();
    let first = digits.iter().position(|&d| d != b'0');
    let Some(first) = first else {
        return Some(0);
    };
    let exponent: i64 = exponent_digits
        .parse()
        .unwrap_or(i64::MAX / 4)
        .min(i64::MAX / 4);
    let exponent = if negative_exponent {
        -exponent
    } else {
        exponent
    };
    let significant = digits.get(first..)?;
    let point = i64::try_from(whole.len()).ok()? - i64::try_from(first).ok()? + exponent;
    if point > 20 {
        return Some(u64::MAX);
    }
    let integer_len = usize::try_from(point.max(0)).ok()?;
    let mut value: u64 = 0;
    for position in 0..integer_len {
        let digit = significant.get(position).map_or(0, |d| u64::from(d - b'0'));
        value = match value.checked_mul(10).and_then(|v| v.checked_add(digit)) {
            Some(next) => next,
            None => return Some(u64::MAX),
        };
    }
    let rest_nonzero = significant
        .get(integer_len.min(significant.len())..)
        .is_some_and(|rest| rest.iter().any(|&d| d != b'0'));
    Some(if rest_nonzero {
        value.saturating_add(1)
    } else {
        value
    })
}

fn includes_usage(stream_options: &RawValue) -> bool {
    object_entries(stream_options.get())
        .and_then(|options| last(&options, "include_usage").map(|raw| raw.get() == "true"))
        .unwrap_or(false)
}

/// The value of `key`; with duplicate keys the last one, as `serde_json::Value` and most
/// providers' parsers read them.
fn last<'a>(entries: &[Entry<'a>], key: &str) -> Option<&'a RawValue> {
    entries
        .iter()
        .rev()
        .find(|(name, _)| name == key)
        .map(|(_, raw)| *raw)
}

/// For an OpenAI chat request with `"stream": true` whose `stream_options.include_usage` is not
/// already true, the same body with `stream_options.include_usage = true` set (other
/// `stream_options` fields and every other field kept); otherwise `None`.
///
/// Only for OpenAI Chat Completions routes: the body alone does not say which API it is for, and
/// other APIs (Anthropic Messages, OpenAI Responses) reject or ignore `include_usage`.
///
/// The edit is a splice into the original bytes: a missing `stream_options` is added after the
/// last top-level member, a `null` one is replaced, an object gets `include_usage` appended or its
/// existing `include_usage` values replaced by `true`. A `stream_options` that is neither an
/// object nor `null` is left alone (`None`): the provider rejects that body anyway.
pub fn with_stream_usage(body: &[u8]) -> Option<Vec<u8>> {
    let text = core::str::from_utf8(body).ok()?;
    let entries = object_entries(text)?;
    let facts = facts_of(&entries);
    if !facts.stream || facts.stream_usage_requested {
        return None;
    }
    let mut edits: Vec<(usize, usize, &str)> = Vec::new();
    let mut has_options = false;
    for (name, raw) in &entries {
        if name != "stream_options" {
            continue;
        }
        has_options = true;
        let (start, end) = span_in(text, raw.get())?;
        if raw.get() == "null" {
            edits.push((start, end, r#"{"include_usage":true}"#));
            continue;
        }
        let options = object_entries(raw.get())?;
        let mut replaced = false;
        for (option, value) in &options {
            if option == "include_usage" {
                let (start, end) = span_in(text, value.get())?;
                edits.push((start, end, "true"));
                replaced = true;
            }
        }
        if !replaced {
            match options.last() {
                Some((_, value)) => {
                    let (_, end) = span_in(text, value.get())?;
                    edits.push((end, end, r#","include_usage":true"#));
                }
                None => edits.push((start, end, r#"{"include_usage":true}"#)),
            }
        }
    }
    if !has_options {
        let (_, value) = entries.last()?;
        let (_, end) = span_in(text, value.get())?;
        edits.push((end, end, r#","stream_options":{"include_usage":true}"#));
    }
    edits.sort_unstable_by_key(|&(start, end, _)| (start, end));
    let extra: usize = edits.iter().map(|(_, _, insert)| insert.len()).sum();
    let mut out = Vec::with_capacity(body.len().saturating_add(extra));
    let mut copied = 0;
    for (start, end, insert) in edits {
        out.extend_from_slice(body.get(copied..start)?);
        out.extend_from_slice(insert.as_bytes());
        copied = end;
    }
    out.extend_from_slice(body.get(copied..)?);
    // The splice is only correct if the result says what it was meant to; never send a body
    // that does not.
    let check = read_request_body(&out, usize::MAX).ok()?;
    (check.stream_usage_requested
        && check.model == facts.model
        && check.max_output_tokens == facts.max_output_tokens)
        .then_some(out)
}

/// Where `part`, a slice borrowed from `whole`, lies in it.
fn span_in(whole: &str, part: &str) -> Option<(usize, usize)> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some((start, end))
}

/// One member of a JSON object: its name (borrowed unless it had escapes) and its unparsed value.
pub(crate) type Entry<'a> = (Cow<'a, str>, &'a RawValue);

/// The members of the JSON object `json`, in document order, duplicates kept, values unparsed;
/// `None` when `json` is not exactly one object.
pub(crate) fn object_entries(json: &str) -> Option<Vec<Entry<'_>>> {
    serde_json::from_str::<Entries<'_>>(json)
        .ok()
        .map(|entries| entries.0)
}

struct Entries<'a>(Vec<Entry<'a>>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        // Request bodies and usage objects have a handful of members: one allocation, usually.
        let mut entries = Vec::with_capacity(8);
        while let Some(MemberName(name)) = map.next_key::<MemberName<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            entries.push((name, value));
        }
        Ok(Entries(entries))
    }
}

/// A JSON number written as a plain non-negative integer; beyond `u64` it saturates (token
/// counts that large only come from a broken peer, and saturating errs toward more spend).
/// Fractions, exponents, negatives and non-numbers are `None`.
pub(crate) fn json_u64(raw: &RawValue) -> Option<u64> {
    json_u64_text(raw.get())
}

/// A member name, borrowed from the document (serde's `String` or `Cow` would copy every one).
struct MemberName<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(MemberNameVisitor)
    }
}

struct MemberNameVisitor;

impl<'de> Visitor<'de> for MemberNameVisitor {
    type Value = MemberName<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, name: &'de str) -> Result<Self::Value, E> {
        Ok(MemberName(Cow::Borrowed(name)))
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(MemberName(Cow::Owned(name.to_owned())))
    }

    fn visit_string<E: serde::de::Error>(self, name: String) -> Result<Self::Value, E> {
        Ok(MemberName(Cow::Owned(name)))
    }
}

fn json_u64_text(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const LIMIT: usize = 1 << 20;

    fn facts(body: &str) -> RequestBodyFacts {
        read_request_body(body.as_bytes(), LIMIT).unwrap()
    }

    fn rewrite(body: &str) -> Option<String> {
        with_stream_usage(body.as_bytes()).map(|out| String::from_utf8(out).unwrap())
    }

    const CHAT_STREAM: &str = r#"{
  "model": "gpt-4o-mini",
  "messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say \"hi\" and count: 1, 2, 3"}
  ],
  "temperature": 0.1,
  "top_p": 1e-7,
  "logit_bias": {"50256": -100},
  "seed": 123456789012345678901234567890,
  "max_completion_tokens": 512,
  "stream": true
}"#;

    #[test]
    fn member_names_are_read_decoded_whether_escaped_or_not() {
        // Plain names are borrowed from the body, escaped ones decoded: both are the same member
        // to every provider's parser, so both count.
        let escaped = facts(r#"{"mod\u0065l":"m","max\u005ftokens":40,"\u006e":3}"#);
        assert_eq!(escaped.model.as_deref(), Some("m"));
        assert_eq!(escaped.max_output_tokens, Some(40));
        assert_eq!(escaped.choices, 3);
        assert_eq!(
            read_request_body(br#"{"model":"a","mod\u0065l":"b"}"#, LIMIT),
            Err(BodyError::ConflictingModel)
        );
    }

    #[test]
    fn reads_an_openai_chat_request() {
        assert_eq!(
            facts(CHAT_STREAM),
            RequestBodyFacts {
                model: Some("gpt-4o-mini".to_owned()),
                max_output_tokens: Some(512),
                choices: 1,
                stream: true,
                stream_usage_requested: false,
            }
        );
    }

    #[test]
    fn reads_an_anthropic_messages_request() {
        let body = r#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,
            "system":"Be brief.","messages":[{"role":"user","content":"Hello, Claude"}]}"#;
        assert_eq!(
            facts(body),
            RequestBodyFacts {
                model: Some("claude-sonnet-4-5".to_owned()),
                max_output_tokens: Some(1024),
                choices: 1,
                stream: true,
                stream_usage_requested: false,
            }
        );
    }

    #[test]
    fn reads_an_openai_responses_request() {
        let body = r#"{"model":"gpt-4.1","input":"Tell me a story","max_output_tokens":2000}"#;
        assert_eq!(
            facts(body),
            RequestBodyFacts {
                model: Some("gpt-4.1".to_owned()),
                max_output_tokens: Some(2000),
                choices: 1,
                stream: false,
                stream_usage_requested: false,
            }
        );
    }

    #[test]
    fn output_limit_is_the_largest_any_provider_could_read() {
        let cases = [
            (r#"{"max_tokens":10,"max_completion_tokens":20}"#, Some(20)),
            (
                r#"{"max_completion_tokens":1,"max_tokens":4000}"#,
                Some(4000),
            ),
            (
                r#"{"max_completion_tokens":null,"max_tokens":10}"#,
                Some(10),
            ),
            (r#"{"max_output_tokens":7,"max_tokens":"9"}"#, Some(9)),
            (r#"{"max_tokens":-1}"#, None),
            (r#"{"max_tokens":-1,"max_output_tokens":3}"#, Some(3)),
            (r#"{"max_tokens":1.5}"#, Some(2)),
            (r#"{"max_tokens":1e3}"#, Some(1000)),
            (r#"{"max_tokens":"4e3"}"#, Some(4000)),
            (r#"{"max_tokens":1e400}"#, Some(u64::MAX)),
            (r#"{"max_tokens":1e-400}"#, Some(1)),
            (r#"{"max_tokens":0.0}"#, Some(0)),
            (r#"{"max_tokens":12.30e1}"#, Some(123)),
            (r#"{"max_tokens":12.31e1}"#, Some(124)),
            (r#"{"max_tokens":"1."}"#, None),
            (r#"{"max_tokens":"+5"}"#, None),
            (r#"{"max_tokens":"0x10"}"#, None),
            (r#"{"max_tokens":0}"#, Some(0)),
            // Both sides of the plain-integer fast path (19 digits always fit a u64).
            (
                r#"{"max_tokens":9999999999999999999}"#,
                Some(9_999_999_999_999_999_999),
            ),
            (r#"{"max_tokens":18446744073709551615}"#, Some(u64::MAX)),
            (r#"{"max_tokens":18446744073709551616}"#, Some(u64::MAX)),
            (r#"{"max_tokens":" 0012 "}"#, Some(12)),
            (r#"{"max_tokens":99999999999999999999999}"#, Some(u64::MAX)),
            (r#"{"max_tokens":2,"max_tokens":1}"#, Some(2)),
            (r#"{"max_tokens":true}"#, None),
            (
                r#"{"generationConfig":{"maxOutputTokens":8192},"max_tokens":5}"#,
                Some(8192),
            ),
            (r#"{}"#, None),
        ];
        for (body, expected) in cases {
            assert_eq!(facts(body).max_output_tokens, expected, "{body}");
        }
    }

    #[test]
    fn choices_take_the_largest_of_n_best_of_and_candidate_count() {
        let cases = [
            (r#"{}"#, 1),
            (r#"{"n":128}"#, 128),
            (r#"{"n":0}"#, 1),
            (r#"{"n":-5}"#, 1),
            (r#"{"n":2,"best_of":5}"#, 5),
            (r#"{"n":"3"}"#, 3),
            (r#"{"n":2.5}"#, 3),
            (r#"{"generationConfig":{"candidateCount":4}}"#, 4),
            (r#"{"n":1e30}"#, u64::MAX),
        ];
        for (body, expected) in cases {
            assert_eq!(facts(body).choices, expected, "{body}");
        }
    }

    #[test]
    fn conflicting_models_are_refused() {
        let body = br#"{"model":"o3","model":"gpt-4o-mini"}"#;
        assert_eq!(
            read_request_body(body, LIMIT),
            Err(BodyError::ConflictingModel)
        );
        let same = br#"{"model":"o3","model":"o3"}"#;
        assert!(read_request_body(same, LIMIT).is_ok());
    }

    #[test]
    fn model_must_be_a_short_string() {
        assert_eq!(facts(r#"{"model":42}"#).model, None);
        assert_eq!(facts(r#"{"model":null}"#).model, None);
        assert_eq!(facts(r#"{"model":["gpt-4o"]}"#).model, None);
        assert_eq!(
            facts(r#"{"model":"gpt\u002d4o"}"#).model.as_deref(),
            Some("gpt-4o")
        );
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(MAX_MODEL_BYTES + 1));
        assert_eq!(facts(&long).model, None);
        let longest = format!(r#"{{"model":"{}"}}"#, "m".repeat(MAX_MODEL_BYTES));
        assert_eq!(
            facts(&longest).model.map(|m| m.len()),
            Some(MAX_MODEL_BYTES)
        );
        assert_eq!(
            read_request_body(br#"{"model":"a","model":"b"}"#, LIMIT),
            Err(BodyError::ConflictingModel)
        );
    }

    #[test]
    fn stream_flags_need_literal_true() {
        assert!(!facts(r#"{"stream":"true"}"#).stream);
        assert!(!facts(r#"{"stream":1}"#).stream);
        assert!(!facts(r#"{"stream":false}"#).stream);
        assert!(facts(r#"{"stream" : true }"#).stream);
        let requested = facts(r#"{"stream":true,"stream_options":{"include_usage":true}}"#);
        assert!(requested.stream_usage_requested);
        let not = facts(r#"{"stream":true,"stream_options":{"include_usage":"yes"}}"#);
        assert!(!not.stream_usage_requested);
        assert!(!facts(r#"{"stream_options":null}"#).stream_usage_requested);
        assert!(!facts(r#"{"stream_options":[true]}"#).stream_usage_requested);
    }

    #[test]
    fn rejects_what_is_not_a_json_object() {
        for body in [
            &b""[..],
            b"   ",
            b"[]",
            b"\"model\"",
            b"null",
            b"{\"model\":\"x\"",
            b"{\"model\":\"x\"} {}",
            b"{\"model\":\"x\",}",
            b"{\"model\":\"\xff\"}",
            b"\xef\xbb\xbf{}",
        ] {
            assert_eq!(
                read_request_body(body, LIMIT),
                Err(BodyError::NotJsonObject),
                "{body:?}"
            );
            assert_eq!(with_stream_usage(body), None);
        }
        assert!(read_request_body(b" \n{}\n ", LIMIT).is_ok());
    }

    #[test]
    fn deep_nesting_in_unread_values_is_skipped_without_recursion() {
        let body = format!(
            r#"{{"a":{}{},"model":"m","stream":true}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let read = read_request_body(body.as_bytes(), usize::MAX).unwrap();
        assert_eq!(read.model.as_deref(), Some("m"));
        let out = with_stream_usage(body.as_bytes()).unwrap();
        assert!(out.ends_with(br#""stream":true,"stream_options":{"include_usage":true}}"#));
    }

    #[test]
    fn too_large_is_refused_before_parsing() {
        assert_eq!(read_request_body(b"{}", 1), Err(BodyError::TooLarge));
        assert_eq!(
            read_request_body(b"not json at all", 3),
            Err(BodyError::TooLarge)
        );
        assert!(read_request_body(b"{}", 2).is_ok());
    }

    #[test]
    fn adds_stream_options_keeping_every_other_byte() {
        let out = rewrite(CHAT_STREAM).unwrap();
        let expected = CHAT_STREAM.replace(
            "\"stream\": true\n",
            "\"stream\": true,\"stream_options\":{\"include_usage\":true}\n",
        );
        assert_eq!(out, expected);
        // The numbers a Value round trip would change are still there, byte for byte.
        for number in ["0.1", "1e-7", "123456789012345678901234567890", "-100"] {
            assert!(out.contains(number), "{number}");
        }
        let after = facts(&out);
        assert!(after.stream_usage_requested);
        assert_eq!(after.model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(after.max_output_tokens, Some(512));
        assert_eq!(with_stream_usage(out.as_bytes()), None);
    }

    #[test]
    fn preserves_numbers_that_serde_json_cannot_represent() {
        let body = r#"{"stream":true,"x":1e400,"y":-0.0,"z":18446744073709551616}"#;
        assert_eq!(
            rewrite(body).unwrap(),
            r#"{"stream":true,"x":1e400,"y":-0.0,"z":18446744073709551616,"stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn edits_existing_stream_options() {
        let cases = [
            (
                r#"{"stream":true,"stream_options":{"include_obfuscation":false},"n":1}"#,
                r#"{"stream":true,"stream_options":{"include_obfuscation":false,"include_usage":true},"n":1}"#,
            ),
            (
                r#"{"stream":true,"stream_options":{"include_usage":false,"x":0.10}}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true,"x":0.10}}"#,
            ),
            (
                r#"{"stream":true,"stream_options":{ "include_usage" : null }}"#,
                r#"{"stream":true,"stream_options":{ "include_usage" : true }}"#,
            ),
            (
                r#"{"stream_options": { } ,"stream":true}"#,
                r#"{"stream_options": {"include_usage":true} ,"stream":true}"#,
            ),
            (
                r#"{"stream":true,"stream_options":null}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            (
                r#"{"stream":true,"stream_options":{"include_usage":false,"include_usage":true,"include_usage":0}}"#,
                r#"{"stream":true,"stream_options":{"include_usage":true,"include_usage":true,"include_usage":true}}"#,
            ),
            (
                r#"{"stream":true,"stream_options":{"a":1},"stream_options":null}"#,
                r#"{"stream":true,"stream_options":{"a":1,"include_usage":true},"stream_options":{"include_usage":true}}"#,
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(rewrite(body).as_deref(), Some(expected), "{body}");
        }
    }

    #[test]
    fn leaves_alone_what_needs_no_rewrite() {
        for body in [
            r#"{"model":"gpt-4o","stream":false}"#,
            r#"{"model":"gpt-4o"}"#,
            r#"{"stream":"true"}"#,
            r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
            r#"{"stream":true,"stream_options":"yes"}"#,
            r#"{"stream":true,"stream_options":[]}"#,
            r#"{"stream":true,"stream":false}"#,
            "[true]",
            "",
        ] {
            assert_eq!(rewrite(body), None, "{body}");
        }
    }

    #[test]
    fn escaped_key_names_are_the_keys_they_spell() {
        let body = r#"{"str\u0065am":true,"stream\u005foptions":{"x":"}"}}"#;
        assert!(facts(body).stream);
        assert_eq!(
            rewrite(body).unwrap(),
            r#"{"str\u0065am":true,"stream\u005foptions":{"x":"}","include_usage":true}}"#
        );
    }

    #[test]
    fn strings_that_look_like_structure_do_not_confuse_the_splice() {
        let body =
            "{\"messages\":[{\"content\":\"\\\"stream_options\\\": {} }\"}],\"stream\":true\t}";
        let out = rewrite(body).unwrap();
        assert_eq!(
            out,
            "{\"messages\":[{\"content\":\"\\\"stream_options\\\": {} }\"}],\"stream\":true,\"stream_options\":{\"include_usage\":true}\t}"
        );
    }

    #[test]
    fn non_ascii_content_survives() {
        let body = r#"{"messages":[{"role":"user","content":"héllo 世界 🎉 \ud83c\udf89"}],"stream":true}"#;
        let out = rewrite(body).unwrap();
        assert!(out.starts_with(
            r#"{"messages":[{"role":"user","content":"héllo 世界 🎉 \ud83c\udf89"}],"stream":true,"#
        ));
    }

    #[test]
    fn json_u64_reads_plain_integers_only() {
        let raw = |text: &str| RawValue::from_string(text.to_owned()).unwrap();
        assert_eq!(json_u64(&raw("0")), Some(0));
        assert_eq!(json_u64(&raw("42")), Some(42));
        assert_eq!(json_u64(&raw("18446744073709551615")), Some(u64::MAX));
        assert_eq!(json_u64(&raw("18446744073709551616")), Some(u64::MAX));
        for text in ["-1", "1.0", "1e2", "\"1\"", "null", "true", "[1]"] {
            assert_eq!(json_u64(&raw(text)), None, "{text}");
        }
    }
}
