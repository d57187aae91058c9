//! The usage reader against every provider shape, split anywhere.

use super::*;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    usage: Option<TokenUsage>,
    model: Option<String>,
    saw_end: bool,
    oversized: u64,
}

fn outcome(reader: &UsageReader) -> Outcome {
    Outcome {
        usage: reader.usage(),
        model: reader.model().map(str::to_owned),
        saw_end: reader.saw_end(),
        oversized: reader.oversized_values(),
    }
}

fn read_chunks<'a>(shape: BodyShape, chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut reader = UsageReader::new(shape);
    for chunk in chunks {
        reader.feed(chunk);
    }
    outcome(&reader)
}

/// Reads `body` whole, byte by byte, split in two at every position and in three at many
/// pseudo-random positions; every way must give the same outcome, which is returned.
fn read(shape: BodyShape, body: &str) -> Outcome {
    let body = body.as_bytes();
    let whole = read_chunks(shape, [body]);
    assert_eq!(read_chunks(shape, body.chunks(1)), whole, "byte by byte");
    for at in 0..=body.len() {
        let (a, b) = body.split_at(at);
        assert_eq!(read_chunks(shape, [a, b]), whole, "split at {at}");
    }
    let mut seed = 0x9e37_79b9_u32;
    for _ in 0..200 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let i = seed as usize % (body.len() + 1);
        let j = (seed >> 16) as usize % (body.len() + 1);
        let (i, j) = (i.min(j), i.max(j));
        let parts = [&body[..i], &body[i..j], &body[j..]];
        assert_eq!(read_chunks(shape, parts), whole, "split at {i} and {j}");
    }
    whole
}

fn usage(input: u64, cached: u64, write: u64, output: u64) -> Option<TokenUsage> {
    Some(TokenUsage {
        input_tokens: input,
        cached_input_tokens: cached,
        cache_write_tokens: write,
        output_tokens: output,
    })
}

const OPENAI_CHAT: &str = r#"{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4.1-2025-04-14",
  "choices": [
{
  "index": 0,
  "message": {
    "role": "assistant",
    "content": "Sure: {\"usage\": {\"prompt_tokens\": 999}} is how \\\"usage\\\" looks.",
    "refusal": null,
    "annotations": []
  },
  "logprobs": null,
  "finish_reason": "stop"
}
  ],
  "usage": {
"prompt_tokens": 1117,
"completion_tokens": 46,
"total_tokens": 1163,
"prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
"completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
  "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
  },
  "service_tier": "default",
  "system_fingerprint": "fp_f12167b370"
}"#;

#[test]
fn openai_chat_completion() {
    let got = read(BodyShape::Json, OPENAI_CHAT);
    assert_eq!(got.usage, usage(93, 1024, 0, 46));
    assert_eq!(got.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert!(got.saw_end);
    assert_eq!(got.usage.unwrap().total_tokens(), 1163);
}

#[test]
fn openai_responses_json() {
    let body = r#"{"id":"resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b","object":"response",
      "created_at":1741476542,"status":"completed","error":null,"model":"gpt-4.1-2025-04-14",
      "output":[{"type":"message","id":"msg_67ccd2bf17f0819081ff3bb2cf6508e6","status":"completed",
        "role":"assistant","content":[{"type":"output_text","text":"In a peaceful grove...","annotations":[]}]}],
      "usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":6},"output_tokens":87,
        "output_tokens_details":{"reasoning_tokens":0},"total_tokens":123},
      "user":null,"metadata":{}}"#;
    let got = read(BodyShape::Json, body);
    assert_eq!(got.usage, usage(30, 6, 0, 87));
    assert_eq!(got.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert!(got.saw_end);
}

#[test]
fn anthropic_messages_json() {
    let body = r#"{"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant",
      "model":"claude-sonnet-4-5-20250929",
      "content":[{"type":"text","text":"Hi! My name is Claude."}],
      "stop_reason":"end_turn","stop_sequence":null,
      "usage":{"input_tokens":2095,"cache_creation_input_tokens":2051,"cache_read_input_tokens":1000,
        "output_tokens":503,"service_tier":"standard"}}"#;
    let got = read(BodyShape::Json, body);
    assert_eq!(got.usage, usage(2095, 1000, 2051, 503));
    assert_eq!(got.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    assert!(got.saw_end);
}

#[test]
fn usage_first_and_whitespace_everywhere() {
    let body = " \r\n\t{ \"usage\" \n:\t{ \"input_tokens\" : 12 ,\"output_tokens\":3 } , \"model\"\n:\n\"claude-haiku-4-5\" }\n ";
    let got = read(BodyShape::Json, body);
    assert_eq!(got.usage, usage(12, 0, 0, 3));
    assert_eq!(got.model.as_deref(), Some("claude-haiku-4-5"));
    assert!(got.saw_end);
}

#[test]
fn nested_usage_and_model_are_decoys() {
    let body = r#"{"choices":[{"message":{"content":"x","usage":{"prompt_tokens":5}},"model":"inner"}],
      "metadata":{"usage":{"prompt_tokens":7},"model":"meta"},
      "items":["usage",{"usage":{"input_tokens":1}}],
      "note":"\"usage\":{\"prompt_tokens\":9}, \"model\": \"text\""}"#;
    let got = read(BodyShape::Json, body);
    assert_eq!(got.usage, None);
    assert_eq!(got.model, None);
    assert!(got.saw_end);
}

#[test]
fn escapes_do_not_confuse_the_scanner() {
    let body = r#"{"content":"a\\","usage":{"prompt_tokens":4,"completion_tokens":2},
      "tricky":"\\\"usage\\\":{}\\\\","model":"m\u00e9\"x\\y"}"#;
    let got = read(BodyShape::Json, body);
    assert_eq!(got.usage, usage(4, 0, 0, 2));
    assert_eq!(got.model.as_deref(), Some("mé\"x\\y"));
}

#[test]
fn usage_null_garbage_and_unknown_shapes_are_none() {
    for body in [
        r#"{"usage":null,"model":"gpt-4o"}"#,
        r#"{"usage":"lots"}"#,
        r#"{"usage":[1,2,3]}"#,
        r#"{"usage":{}}"#,
        r#"{"usage":{"tokens":5}}"#,
        r#"["usage",{"prompt_tokens":1}]"#,
        "not json at all",
        "",
        "}}}]]]{",
        "\u{0}\u{1}\u{7f}",
    ] {
        assert_eq!(read(BodyShape::Json, body).usage, None, "{body}");
    }
}

#[test]
fn invalid_counts_are_usage_that_cannot_be_billed() {
    for body in [
        r#"{"usage":{"prompt_tokens":-3,"completion_tokens":1.5}}"#,
        r#"{"usage":{"prompt_tokens":"10","completion_tokens":5}}"#,
        r#"{"usage":{"input_tokens":5,"input_tokens_details":{"cached_tokens":-1}}}"#,
    ] {
        let mut reader = UsageReader::new(BodyShape::Json);
        reader.feed(body.as_bytes());
        assert!(reader.usage().is_some(), "{body}");
        assert!(reader.has_invalid_counts(), "{body}");
    }
    let mut stream = UsageReader::new(BodyShape::EventStream);
    stream.feed(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":-1,\"completion_tokens\":2}}\n\n",
    );
    assert!(stream.has_invalid_counts());
    let mut fine = UsageReader::new(BodyShape::Json);
    fine.feed(br#"{"usage":{"prompt_tokens":3,"completion_tokens":null}}"#);
    assert!(!fine.has_invalid_counts());
}

#[test]
fn bad_counts_are_ignored_and_huge_ones_saturate() {
    let body = r#"{"usage":{"prompt_tokens":"10","completion_tokens":5,
        "prompt_tokens_details":{"cached_tokens":-1}}}"#;
    assert_eq!(read(BodyShape::Json, body).usage, usage(0, 0, 0, 5));
    let body = r#"{"usage":{"input_tokens":99999999999999999999999,"output_tokens":1e3}}"#;
    let got = read(BodyShape::Json, body).usage.unwrap();
    assert_eq!(got, usage(u64::MAX, 0, 0, 0).unwrap());
    assert_eq!(got.total_tokens(), u64::MAX);
    // More cached than prompt tokens is nonsense: no negative remainder.
    let body = r#"{"usage":{"prompt_tokens":5,"prompt_tokens_details":{"cached_tokens":9}}}"#;
    assert_eq!(read(BodyShape::Json, body).usage, usage(0, 5, 0, 0));
}

#[test]
fn responses_or_anthropic_by_their_extra_fields() {
    let no_extras = r#"{"usage":{"input_tokens":10,"output_tokens":2}}"#;
    assert_eq!(read(BodyShape::Json, no_extras).usage, usage(10, 0, 0, 2));
    let anthropic_cache = r#"{"usage":{"input_tokens":10,"cache_read_input_tokens":4,
        "input_tokens_details":{"cached_tokens":4},"output_tokens":2}}"#;
    assert_eq!(
        read(BodyShape::Json, anthropic_cache).usage,
        usage(10, 4, 0, 2)
    );
}

#[test]
fn duplicate_top_level_usage_last_wins_model_first_wins() {
    let body = r#"{"model":"first","usage":{"input_tokens":1},"model":"second",
        "usage":{"input_tokens":2},"usage":null}"#;
    let got = read(BodyShape::Json, body);
    assert_eq!(got.usage, usage(2, 0, 0, 0));
    assert_eq!(got.model.as_deref(), Some("first"));
}

#[test]
fn cut_off_json_has_no_end() {
    let got = read(
        BodyShape::Json,
        r#"{"usage":{"input_tokens":5,"output_tokens":1},"id":"#,
    );
    assert_eq!(got.usage, usage(5, 0, 0, 1));
    assert!(!got.saw_end);
    let got = read(
        BodyShape::Json,
        r#"{"id":"x","usage":{"input_tokens":5,"output"#,
    );
    assert_eq!(got.usage, None);
    assert!(!got.saw_end);
}

#[test]
fn trailing_values_after_the_body_are_ignored() {
    let body = r#"{"model":"a"} {"usage":{"input_tokens":5}}"#;
    let got = read(BodyShape::Json, body);
    assert_eq!(got.usage, None);
    assert!(got.saw_end);
}

#[test]
fn long_model_is_ignored_longest_kept() {
    let long = format!(
        r#"{{"model":"{}","usage":{{"input_tokens":1}}}}"#,
        "m".repeat(257)
    );
    let got = read(BodyShape::Json, &long);
    assert_eq!(got.model, None);
    assert_eq!(got.oversized, 1);
    assert_eq!(got.usage, usage(1, 0, 0, 0));
    let longest = format!(r#"{{"model":"{}"}}"#, "m".repeat(256));
    assert_eq!(
        read(BodyShape::Json, &longest).model.map(|m| m.len()),
        Some(256)
    );
}

#[test]
fn oversized_usage_is_given_up() {
    let padding = " ".repeat(MAX_USAGE_BYTES);
    let body =
        format!(r#"{{"usage":{{"input_tokens":1,{padding}"output_tokens":2}},"model":"m"}}"#);
    let mut reader = UsageReader::new(BodyShape::Json);
    for chunk in body.as_bytes().chunks(1000) {
        reader.feed(chunk);
    }
    assert_eq!(reader.usage(), None);
    assert_eq!(reader.model(), Some("m"));
    assert_eq!(reader.oversized_values(), 1);
    assert!(reader.buffered_bytes() <= MAX_USAGE_BYTES + MAX_MODEL_BYTES);
}

const OPENAI_CHAT_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,",
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,",
    "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,",
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \\\"usage\\\": {\"},",
    "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,",
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,",
    "\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,",
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,",
    "\"completion_tokens\":7,\"total_tokens\":1207,\"prompt_tokens_details\":{\"cached_tokens\":1152,",
    "\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

#[test]
fn openai_chat_stream() {
    let got = read(BodyShape::EventStream, OPENAI_CHAT_STREAM);
    assert_eq!(got.usage, usage(48, 1152, 0, 7));
    assert_eq!(got.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
    assert!(got.saw_end);
}

#[test]
fn line_endings_do_not_matter() {
    for ending in ["\r\n", "\r"] {
        let body = OPENAI_CHAT_STREAM.replace('\n', ending);
        let got = read(BodyShape::EventStream, &body);
        assert_eq!(got.usage, usage(48, 1152, 0, 7), "{ending:?}");
        assert!(got.saw_end);
    }
}

#[test]
fn openai_chat_stream_without_usage_or_done() {
    let without_usage: String = OPENAI_CHAT_STREAM
        .split("\n\n")
        .filter(|event| !event.contains("\"usage\":{"))
        .map(|event| format!("{event}\n\n"))
        .collect();
    let got = read(BodyShape::EventStream, &without_usage);
    assert_eq!(got.usage, None);
    assert!(got.saw_end);
    let cut = OPENAI_CHAT_STREAM.replace("data: [DONE]\n\n", "");
    let got = read(BodyShape::EventStream, &cut);
    assert_eq!(got.usage, usage(48, 1152, 0, 7));
    assert!(!got.saw_end);
}

const ANTHROPIC_STREAM: &str = concat!(
    "event: message_start\n",
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",",
    "\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-opus-4-1-20250805\",",
    "\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,",
    "\"cache_creation_input_tokens\":100,\"cache_read_input_tokens\":2000,\"output_tokens\":2}}}\n\n",
    "event: content_block_start\n",
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\n",
    "data: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\n",
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello \\\"usage\\\"\"}}\n\n",
    "event: content_block_stop\n",
    "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},",
    "\"usage\":{\"output_tokens\":10}}\n\n",
    "event: message_delta\n",
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},",
    "\"usage\":{\"output_tokens\":15}}\n\n",
    "event: message_stop\n",
    "data: {\"type\":\"message_stop\"}\n\n",
);

#[test]
fn anthropic_stream() {
    let got = read(BodyShape::EventStream, ANTHROPIC_STREAM);
    assert_eq!(got.usage, usage(472, 2000, 100, 15));
    assert_eq!(got.model.as_deref(), Some("claude-opus-4-1-20250805"));
    assert!(got.saw_end);
}

#[test]
fn anthropic_stream_cut_after_message_start() {
    let cut = &ANTHROPIC_STREAM[..ANTHROPIC_STREAM.find("event: content_block_start").unwrap()];
    let got = read(BodyShape::EventStream, cut);
    assert_eq!(got.usage, usage(472, 2000, 100, 2));
    assert!(!got.saw_end);
}

#[test]
fn anthropic_delta_may_restate_input_counts() {
    let body = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude\",",
        "\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "event: message_delta\ndata: {\"usage\":{\"output_tokens\":20,\"input_tokens\":12,",
        "\"cache_creation_input_tokens\":3},\"type\":\"message_delta\"}\n\n",
    );
    assert_eq!(
        read(BodyShape::EventStream, body).usage,
        usage(12, 5, 3, 20)
    );
}

#[test]
fn event_name_alone_marks_delta_and_stop() {
    let body = concat!(
        "event: message_start\ndata: {\"message\":{\"usage\":{\"input_tokens\":10,\"output_tokens\":1}}}\n\n",
        "event: message_delta\ndata: {\"usage\":{\"output_tokens\":20}}\n\n",
        "event: message_stop\ndata: {}\n\n",
    );
    let got = read(BodyShape::EventStream, body);
    assert_eq!(got.usage, usage(10, 0, 0, 20));
    assert!(got.saw_end);
}

fn responses_stream(output_text: &str) -> String {
    let text = serde_json::to_string(output_text).unwrap();
    format!(
        concat!(
            "event: response.created\n",
            "data: {{\"type\":\"response.created\",\"sequence_number\":0,\"response\":{{\"id\":\"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654\",",
            "\"object\":\"response\",\"status\":\"in_progress\",\"model\":\"gpt-4.1-2025-04-14\",\"output\":[],\"usage\":null}}}}\n\n",
            "event: response.output_text.delta\n",
            "data: {{\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,",
            "\"content_index\":0,\"delta\":{text}}}\n\n",
            "event: response.completed\n",
            "data: {{\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{{\"id\":\"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654\",",
            "\"object\":\"response\",\"status\":\"completed\",\"model\":\"gpt-4.1-2025-04-14\",",
            "\"output\":[{{\"type\":\"message\",\"content\":[{{\"type\":\"output_text\",\"text\":{text}}}]}}],",
            "\"usage\":{{\"input_tokens\":37,\"input_tokens_details\":{{\"cached_tokens\":0}},\"output_tokens\":11,",
            "\"output_tokens_details\":{{\"reasoning_tokens\":0}},\"total_tokens\":48}}}}}}\n\n",
        ),
        text = text
    )
}

#[test]
fn openai_responses_stream() {
    let got = read(
        BodyShape::EventStream,
        &responses_stream("Hi \"usage\": {} there"),
    );
    assert_eq!(got.usage, usage(37, 0, 0, 11));
    assert_eq!(got.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert!(got.saw_end);
    let body = responses_stream("x");
    let cut = &body[..body.find("event: response.completed").unwrap()];
    let got = read(BodyShape::EventStream, cut);
    assert_eq!(got.usage, None);
    assert_eq!(got.model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert!(!got.saw_end);
}

#[test]
fn huge_response_completed_event_still_yields_usage() {
    let body = responses_stream(&"a long story. ".repeat(20_000));
    let mut reader = UsageReader::new(BodyShape::EventStream);
    for chunk in body.as_bytes().chunks(16 * 1024 - 3) {
        reader.feed(chunk);
        assert!(reader.buffered_bytes() <= MAX_USAGE_BYTES + MAX_MODEL_BYTES);
    }
    assert_eq!(reader.usage(), usage(37, 0, 0, 11));
    assert!(reader.saw_end());
}

#[test]
fn multi_line_data_comments_and_other_fields() {
    let body = concat!(
        ": keep-alive comment\n",
        "retry: 1000\n",
        "id: 7\n",
        "event: message_start\n",
        "data:{\"type\":\"message_start\",\n",
        "data:  \"message\":{\"model\":\"claude-3-5-haiku\",\"usage\":\n",
        "data: {\"input_tokens\":9,\"output_tokens\":1}}}\n",
        "\n",
        "data\n",
        "data: [DONE]\n\n",
    );
    let got = read(BodyShape::EventStream, body);
    assert_eq!(got.usage, usage(9, 0, 0, 1));
    assert_eq!(got.model.as_deref(), Some("claude-3-5-haiku"));
    // The second event's data is "\n[DONE]": still the end marker.
    assert!(got.saw_end);
}

#[test]
fn done_must_be_the_whole_data() {
    for body in [
        "data: [DONE] and more\n\n",
        "data: \"[DONE]\"\n\n",
        "data: [DONE]\n",
        "event: [DONE]\n\n",
        "dat: [DONE]\n\n",
        "data: [DO\n\nNE]\n\n",
    ] {
        assert!(!read(BodyShape::EventStream, body).saw_end, "{body:?}");
    }
    assert!(read(BodyShape::EventStream, "data:[DONE]\r\n\r\n").saw_end);
    assert!(read(BodyShape::EventStream, "\u{feff}data: [DONE]\n\n").saw_end);
    assert!(!read(BodyShape::EventStream, "\u{feff}\u{feff}data: [DONE]\n\n").saw_end);
}

#[test]
fn finish_dispatches_an_unterminated_last_event() {
    let mut reader = UsageReader::new(BodyShape::EventStream);
    reader.feed(b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]");
    assert!(!reader.saw_end());
    reader.finish();
    assert!(reader.saw_end());
    assert_eq!(reader.usage(), usage(3, 0, 0, 4));
}

#[test]
fn an_event_with_broken_json_does_not_leak_into_the_next() {
    let body = concat!(
        "data: {\"choices\":[{\"delta\":{\"content\":\"unterminated\n\n",
        "data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4},\"model\":\"m\"}\n\n",
        "data: {\"usage\":{\"prompt_tokens\":[1,\n\n",
        "data: [DONE]\n\n",
    );
    let got = read(BodyShape::EventStream, body);
    assert_eq!(got.usage, usage(3, 0, 0, 4));
    assert_eq!(got.model.as_deref(), Some("m"));
    assert!(got.saw_end);
}

#[test]
fn garbage_streams_never_report_usage() {
    for body in [
        "",
        "\n\n\n",
        "data\n\n",
        ":::\n\n",
        "data: usage\n\n",
        "data: {\"usage\":\"x\"}\n\n",
        "event: message_delta\n\n",
        "\u{0}\u{ff}data: {\"usage\":{\"input_tokens\":1}}\n\n",
        "\r\r\n\n\rdata: null\r\r",
    ] {
        assert_eq!(read(BodyShape::EventStream, body).usage, None, "{body:?}");
    }
}

#[test]
fn content_type_to_shape() {
    let cases: [(&[u8], Option<BodyShape>); 12] = [
        (b"application/json", Some(BodyShape::Json)),
        (b"application/json; charset=utf-8", Some(BodyShape::Json)),
        (b"Application/JSON;charset=UTF-8", Some(BodyShape::Json)),
        (b" application/problem+json ", Some(BodyShape::Json)),
        (b"application/vnd.api+JSON; x=y", Some(BodyShape::Json)),
        (b"text/event-stream", Some(BodyShape::EventStream)),
        (
            b"text/event-stream; charset=utf-8",
            Some(BodyShape::EventStream),
        ),
        (b"TEXT/EVENT-STREAM", Some(BodyShape::EventStream)),
        (b"text/json", None),
        (b"application/x-ndjson", None),
        (b"", None),
        (b"\xff/json", None),
    ];
    for (value, expected) in cases {
        assert_eq!(BodyShape::from_content_type(value), expected, "{value:?}");
    }
}

/// 50 MB of streamed content deltas in Envoy-sized chunks: memory never grows.
#[test]
fn memory_stays_bounded_over_a_long_stream() {
    let delta = concat!(
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,",
        "\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" token\"},",
        "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    );
    let block = delta.repeat(1000);
    let mut reader = UsageReader::new(BodyShape::EventStream);
    let mut fed = 0;
    while fed < 50_000_000 {
        for chunk in block.as_bytes().chunks(16_381) {
            reader.feed(chunk);
        }
        fed += block.len();
        assert!(reader.buffered_bytes() <= MAX_USAGE_BYTES + MAX_MODEL_BYTES);
    }
    reader.feed(OPENAI_CHAT_STREAM.as_bytes());
    assert_eq!(reader.usage(), usage(48, 1152, 0, 7));
    assert_eq!(reader.model(), Some("gpt-4o-mini"));
    assert!(reader.saw_end());
    assert!(reader.buffered_bytes() <= MAX_USAGE_BYTES + MAX_MODEL_BYTES);
}

/// A 50 MB JSON completion: only the usage is kept.
#[test]
fn memory_stays_bounded_over_a_long_json_body() {
    let mut reader = UsageReader::new(BodyShape::Json);
    reader.feed(br#"{"id":"chatcmpl-1","model":"gpt-4o","choices":[{"message":{"content":""#);
    let text = "word \\\"quoted\\\" \\u00e9 ".repeat(4000);
    let mut fed = 0;
    while fed < 50_000_000 {
        for chunk in text.as_bytes().chunks(16_381) {
            reader.feed(chunk);
        }
        fed += text.len();
        assert!(reader.buffered_bytes() <= MAX_USAGE_BYTES + MAX_MODEL_BYTES);
    }
    reader.feed(br#""}}],"usage":{"prompt_tokens":10,"completion_tokens":12000000}}"#);
    assert_eq!(reader.usage(), usage(10, 0, 0, 12_000_000));
    assert_eq!(reader.model(), Some("gpt-4o"));
    assert!(reader.saw_end());
    assert!(reader.buffered_bytes() <= MAX_USAGE_BYTES + MAX_MODEL_BYTES);
}

#[test]
fn an_oversized_usage_in_one_event_does_not_stop_the_next() {
    let padding = " ".repeat(MAX_USAGE_BYTES);
    let body = format!(
        "data: {{\"usage\":{{\"prompt_tokens\":1,{padding}\"completion_tokens\":1}}}}\n\n\
         data: {{\"usage\":{{\"prompt_tokens\":2,\"completion_tokens\":3}}}}\n\ndata: [DONE]\n\n"
    );
    let mut reader = UsageReader::new(BodyShape::EventStream);
    for chunk in body.as_bytes().chunks(777) {
        reader.feed(chunk);
    }
    assert_eq!(reader.usage(), usage(2, 0, 0, 3));
    assert_eq!(reader.oversized_values(), 1);
    assert!(reader.saw_end());
}

#[test]
fn deep_nesting_is_just_depth() {
    let body = format!(
        "{{\"a\":{}{},\"usage\":{{\"input_tokens\":1}}}}",
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    let mut reader = UsageReader::new(BodyShape::Json);
    reader.feed(body.as_bytes());
    assert_eq!(reader.usage(), usage(1, 0, 0, 0));
    assert!(reader.saw_end());
}

#[test]
fn deep_values_are_skipped_whole_whatever_their_strings_hold() {
    // Below depth 2 the scanner only follows strings and brackets: brackets, quotes, escapes
    // and `usage` keys inside deep strings and objects change nothing above them.
    let body = r#"{"choices":[{"delta":{"content":"}]}\"usage\":{\"prompt_tokens\":9}[{","usage":{"input_tokens":8}},"x":[1,{"y":"]"}]}],
      "model":"top","usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
    let got = read(BodyShape::Json, body);
    assert_eq!(got.usage, usage(3, 0, 0, 4));
    assert_eq!(got.model.as_deref(), Some("top"));
    assert!(got.saw_end);
}
