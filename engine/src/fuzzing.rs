//! Entry points shared by the fuzz targets (`fuzz/`) and the corpus replay that `cargo test`
//! runs (`engine/tests/fuzz_corpus.rs`): each takes arbitrary bytes and must never panic.

use crate::config::PluginConfig;
use crate::credential::BadCredential;
use crate::decision::{decide, Outcome};
use crate::denial::{Denial, DenyCode};
use crate::hash::sha256;
use crate::key_format::{parse_key, Charset, Checksum, KeyFormat, MalformedKey, PartShape};
use crate::request::{Header, Request};
use crate::request_body::{read_request_body, with_stream_usage, RequestBodyFacts};
use crate::route::ErrorFormat;
use crate::signature::SigningKey;
use crate::signed_snapshot::verify_snapshot;
use crate::snapshot::Policy;
use crate::usage::{self, BodyShape, TokenUsage, UsageReader};

/// Inputs larger than this are cut: the filter never sees more than Envoy's header limits, and
/// an unbounded input would only measure the allocator.
const MAX_INPUT: usize = 64 * 1024;

fn bounded(data: &[u8]) -> &[u8] {
    data.get(..MAX_INPUT).unwrap_or(data)
}

/// Credential extraction, key parsing and the whole decision on headers built from `data`.
/// Checks the invariants that must hold for any input: exactly one outcome, and a denial body
/// that never contains the presented credential.
pub fn credential_and_decision(data: &[u8]) {
    let data = bounded(data);
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // Split the rest into up to three header values at NUL bytes.
    let mut parts = rest.splitn(3, |b| *b == 0);
    let first = parts.next().unwrap_or_default().to_vec();
    let second = parts.next().unwrap_or_default().to_vec();
    let third = parts.next().unwrap_or_default().to_vec();
    let mut headers: Vec<Header> = vec![(":path".to_owned(), b"/v1/chat/completions".to_vec())];
    let names = [
        "authorization",
        "x-api-key",
        "x-project-id",
        "origin",
        "x-model",
    ];
    let pick = |shift: u32| {
        names
            .get(((selector >> shift) % 5) as usize)
            .copied()
            .unwrap_or("authorization")
    };
    headers.push((pick(0).to_owned(), first.clone()));
    if selector & 0x40 != 0 {
        headers.push((pick(2).to_owned(), second.clone()));
    }
    if selector & 0x80 != 0 {
        headers.push((pick(4).to_owned(), third.clone()));
    }
    let config = fixture();
    let request = Request::new(&headers, Some("chat"));
    let route = config.settings.route_for(&request);
    let outcome = decide(
        &config.settings,
        route,
        &request,
        config.policy.as_ref(),
        1_800_000_000,
    );
    if let Outcome::Deny(rejection) = &outcome {
        let body = rejection.denial.body(route.error_format, "fuzz");
        for presented in [&first, &second, &third] {
            let trimmed = presented.trim_ascii();
            // Short values can appear in any message by chance, and input that copies keyward's
            // own fixed texts is found in them: only text from nowhere else is an echo.
            if trimmed.len() >= 8 {
                let text = String::from_utf8_lossy(trimmed);
                let echoed = body.contains(text.as_ref()) && !fixed_texts().contains(text.as_ref());
                assert!(!echoed, "denial echoed the input {text:?}: {body}");
            }
        }
    }
    let formats = checksum_formats();
    let _ = parse_key(&formats, &first);
}

/// Every text a denial body is built from, with the fixture's request id and route settings.
fn fixed_texts() -> &'static str {
    static TEXTS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXTS.get_or_init(|| {
        let mut texts = String::new();
        for code in DenyCode::ALL {
            for format in [ErrorFormat::Openai, ErrorFormat::Anthropic] {
                texts.push_str(&Denial::new(code, 403).body(format, "fuzz"));
                texts.push('\n');
            }
        }
        let details = BadCredential::ALL.iter().map(|bad| bad.description());
        let details = details.chain(MalformedKey::ALL.iter().map(|bad| bad.description()));
        for detail in details.chain(["requires chat:write", "key cap", "project cap"]) {
            texts.push_str(detail);
            texts.push('\n');
        }
        texts
    })
}

/// Plugin configuration parsing and validation.
pub fn plugin_config(data: &[u8]) {
    let _ = PluginConfig::from_json(bounded(data));
}

/// Snapshot parsing, and envelope verification with a fixed key.
pub fn snapshot(data: &[u8]) {
    let data = bounded(data);
    let _ = Policy::from_json(data);
    if let Ok(key) = SigningKey::from_seed("fuzz", &[9; 32]) {
        let keys = [key.public_key()];
        let _ = verify_snapshot(data, &keys, 1_700_000_000);
        let _ = crate::chunked::verify_manifest(data, &keys, 1_700_000_000);
    }
}

fn checksum_formats() -> Vec<KeyFormat> {
    vec![KeyFormat::PrefixedOpaque {
        name: "cks".to_owned(),
        prefix: "cks_".to_owned(),
        environments: vec!["live".to_owned()],
        body: PartShape {
            charset: Charset::Base62,
            min_length: 10,
            max_length: 64,
        },
        checksum: Checksum::Crc32Base62,
    }]
}

/// A configuration with a key of each kind and a route that uses every requirement, built once.
fn fixture() -> &'static PluginConfig {
    static FIXTURE: std::sync::OnceLock<PluginConfig> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> PluginConfig {
    let secret_hash = hex::encode(sha256(b"s3cr3tS3cr3tS3cr3tXY"));
    let opaque_hash = hex::encode(sha256(b"vpx_live_abcdefghijklmnopqrstuvwx"));
    let json = format!(
        r#"{{"routes": [
            {{"name": "chat", "match": {{"route_name": "chat"}}, "scopes": ["chat:write"],
              "environments": ["live"], "project": {{"header": "x-project-id"}},
              "model": {{"header": "x-model"}}, "deny_browser_requests": true, "query_parameter": "k"}}],
          "policy": {{"version": 1, "issued_at": 1799999999,
            "projects": [{{"id": "p", "org": "o", "status": "active", "spend_cap_microusd": 10, "spent_microusd": 1}}],
            "keys": [{{"id": "good1", "secret_sha256": "{secret_hash}", "project": "p", "status": "active",
                       "scopes": ["chat:write"], "models": ["gpt-4o*"]}},
                     {{"id": "org1", "key_sha256": "{opaque_hash}", "org": "o", "status": "active", "scopes": ["*"]}}]}}}}"#
    );
    match PluginConfig::from_json(json.as_bytes()) {
        Ok(config) => config,
        // The fixture is fixed text; a failure here is a bug in this file, found by any run.
        Err(error) => unreachable_fixture(&error.to_string()),
    }
}

#[allow(clippy::panic)]
fn unreachable_fixture(error: &str) -> ! {
    panic!("fuzz fixture is invalid: {error}")
}

/// The response-usage reader: the same body fed whole, in equal chunks and in uneven chunks must
/// give the same usage, model and end, and memory must stay within its bounds throughout. The
/// first byte picks the shape (low bit) and the chunk sizes.
pub fn usage_reader(data: &[u8]) {
    let data = bounded(data);
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let shape = if selector & 1 == 0 {
        BodyShape::Json
    } else {
        BodyShape::EventStream
    };
    let whole = read_usage(shape, [body]);
    let size = usize::from(selector >> 1).saturating_add(1);
    assert_eq!(
        read_usage(shape, body.chunks(size)),
        whole,
        "chunks of {size}"
    );
    let mut uneven = Vec::new();
    let mut rest = body;
    let mut state = u32::from(selector) | 0x100;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let take = usize::try_from(state % 300).unwrap_or(1).min(rest.len());
        let (chunk, tail) = rest.split_at_checked(take).unwrap_or((rest, &[]));
        uneven.push(chunk);
        rest = tail;
    }
    assert_eq!(read_usage(shape, uneven), whole, "uneven chunks");
    if body.len() <= 4096 {
        assert_eq!(read_usage(shape, body.chunks(1)), whole, "byte by byte");
    }
}

#[derive(Debug, PartialEq, Eq)]
struct UsageOutcome {
    usage: Option<TokenUsage>,
    model: Option<String>,
    saw_end: bool,
    oversized: u64,
    after_finish: (Option<TokenUsage>, bool),
}

fn read_usage<'a>(shape: BodyShape, chunks: impl IntoIterator<Item = &'a [u8]>) -> UsageOutcome {
    let bound = usage::MAX_USAGE_BYTES + usage::MAX_MODEL_BYTES;
    let mut reader = UsageReader::new(shape);
    for chunk in chunks {
        reader.feed(chunk);
        assert!(
            reader.buffered_bytes() <= bound,
            "{} bytes held",
            reader.buffered_bytes()
        );
    }
    let model = reader.model().map(str::to_owned);
    assert!(model
        .as_ref()
        .is_none_or(|m| m.len() <= usage::MAX_MODEL_BYTES));
    let (usage, saw_end, oversized) = (reader.usage(), reader.saw_end(), reader.oversized_values());
    reader.finish();
    UsageOutcome {
        usage,
        model,
        saw_end,
        oversized,
        after_finish: (reader.usage(), reader.saw_end()),
    }
}

/// Request body facts and the `include_usage` rewrite: a rewritten body must parse, ask for
/// usage, keep the model, limits and stream flag, need no second rewrite, and differ from the
/// original in `stream_options` only.
pub fn request_body(data: &[u8]) {
    let data = bounded(data);
    let facts = read_request_body(data, MAX_INPUT);
    let Some(rewritten) = with_stream_usage(data) else {
        return;
    };
    assert!(
        facts.is_ok(),
        "rewrote a body that does not read: {facts:?}"
    );
    let before = facts.unwrap_or_default();
    assert!(
        before.stream && !before.stream_usage_requested,
        "{before:?}"
    );
    let after = read_request_body(&rewritten, usize::MAX);
    assert_eq!(
        after,
        Ok(RequestBodyFacts {
            stream_usage_requested: true,
            ..before
        })
    );
    assert_eq!(with_stream_usage(&rewritten), None, "second rewrite");
    let parse = |bytes: &[u8]| match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(serde_json::Value::Object(mut members)) => {
            members.remove("stream_options");
            Some(members)
        }
        _ => None,
    };
    let (old, new) = (parse(data), parse(&rewritten));
    if old.is_some() || new.is_some() {
        assert_eq!(old, new, "members other than stream_options changed");
    }
}

/// Replays every committed corpus input (seeds and past crashes) through its entry point.
#[cfg(all(test, not(target_arch = "wasm32")))]
#[allow(clippy::panic, clippy::expect_used)]
mod corpus_replay {
    use std::path::Path;

    fn replay(target: &str, entry: fn(&[u8])) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut replayed = 0;
        for file in entries {
            let path = file.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            entry_point_guard(&path, || entry(&data));
            replayed += 1;
        }
        assert!(replayed > 0, "no corpus inputs in {}", dir.display());
    }

    fn entry_point_guard(path: &Path, run: impl FnOnce() + std::panic::UnwindSafe) {
        if std::panic::catch_unwind(run).is_err() {
            panic!("corpus input {} panics", path.display());
        }
    }

    #[test]
    fn credential_and_decision_corpus() {
        replay("credential_and_decision", super::credential_and_decision);
    }

    #[test]
    fn plugin_config_corpus() {
        replay("plugin_config", super::plugin_config);
    }

    #[test]
    fn snapshot_corpus() {
        replay("snapshot", super::snapshot);
    }

    #[test]
    fn usage_reader_corpus() {
        replay("usage_reader", super::usage_reader);
    }

    #[test]
    fn request_body_corpus() {
        replay("request_body", super::request_body);
    }
}
