//! Token usage read from a provider's response body as Envoy hands it over: in chunks of any
//! size, split anywhere (inside a UTF-8 character, a JSON string, an SSE line).
//!
//! Neither shape is ever buffered whole. A JSON body and every SSE event's data go through
//! [`Scanner`], a byte-at-a-time JSON tokenizer that tracks only nesting depth, strings and the
//! keys of the outer two levels, and copies out just the values asked for (a `usage` object,
//! bounded to [`MAX_USAGE_BYTES`]; `model` and `type` strings). So a reader holds at most
//! [`MAX_USAGE_BYTES`] plus a few hundred bytes whatever the body's size, content deltas cost one
//! pass over their bytes, and a huge event (OpenAI Responses' `response.completed` repeats the
//! whole output before its `usage`) is read, not skipped.

use serde_json::value::RawValue;

use crate::request_body::{json_u64, object_entries};

mod scanner;

use scanner::Scanner;

/// The largest `usage` object copied out for parsing; providers' are a few hundred bytes.
pub const MAX_USAGE_BYTES: usize = 8 * 1024;
/// The longest `model` kept; longer ones are ignored.
pub const MAX_MODEL_BYTES: usize = 256;
/// Event `type` strings worth reading are short; longer ones are ignored.
const MAX_TYPE_BYTES: usize = 64;
/// Keys worth recognizing are at most this long (`response`).
const MAX_KEY_BYTES: usize = 16;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Input tokens billed at the full rate: neither read from nor written to a cache.
    pub input_tokens: u64,
    pub cached_input_tokens: u64,
    pub cache_write_tokens: u64,
    pub output_tokens: u64,
}

impl TokenUsage {
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_add(self.cached_input_tokens)
            .saturating_add(self.cache_write_tokens)
            .saturating_add(self.output_tokens)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyShape {
    Json,
    EventStream,
}

impl BodyShape {
    /// `application/json` and `application/*+json` are [`BodyShape::Json`], `text/event-stream`
    /// is [`BodyShape::EventStream`] (parameters ignored, case-insensitive); anything else `None`.
    pub fn from_content_type(value: &[u8]) -> Option<BodyShape> {
        let media = value.split(|&b| b == b';').next().unwrap_or_default();
        let media = media.trim_ascii();
        if media.eq_ignore_ascii_case(b"text/event-stream") {
            return Some(BodyShape::EventStream);
        }
        let (kind, subtype) = split_once(media, b'/')?;
        let json = subtype.eq_ignore_ascii_case(b"json")
            || subtype
                .len()
                .checked_sub(5)
                .and_then(|at| subtype.get(at..))
                .is_some_and(|suffix| suffix.eq_ignore_ascii_case(b"+json"));
        (kind.eq_ignore_ascii_case(b"application") && json).then_some(BodyShape::Json)
    }
}

fn split_once(bytes: &[u8], separator: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == separator)?;
    Some((bytes.get(..at)?, bytes.get(at.checked_add(1)?..)?))
}

/// Reads token usage, the model and the end-of-stream signal from a response body fed in chunks.
#[derive(Debug)]
pub struct UsageReader {
    shape: BodyShape,
    scanner: Scanner,
    sse: EventStream,
    usage: Option<TokenUsage>,
    /// Some usage read had a count that is not a non-negative integer.
    invalid_counts: bool,
    model: Option<String>,
    saw_end: bool,
}

impl UsageReader {
    pub fn new(shape: BodyShape) -> Self {
        Self {
            shape,
            scanner: Scanner::new(shape == BodyShape::EventStream),
            sse: EventStream::default(),
            usage: None,
            invalid_counts: false,
            model: None,
            saw_end: false,
        }
    }

    /// Whether any usage object read gave a count as something other than a non-negative
    /// integer (negative, fractional, a string): such usage is not billed as reported.
    pub fn has_invalid_counts(&self) -> bool {
        self.invalid_counts
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match self.shape {
            BodyShape::Json => {
                self.scanner.feed(chunk);
                self.absorb_json();
            }
            BodyShape::EventStream => self.feed_event_stream(chunk),
        }
    }

    /// Ends the body. Only needed for an event stream whose last event lacks its closing blank
    /// line: the SSE rules drop such an event, but its usage was still billed.
    pub fn finish(&mut self) {
        if self.shape == BodyShape::EventStream {
            if !matches!(self.sse.line, Line::Start) {
                self.end_line();
            }
            self.dispatch();
        }
    }

    /// Usage seen so far (None until a usage object was read).
    pub fn usage(&self) -> Option<TokenUsage> {
        self.usage
    }

    /// The response's own `model` (top-level `model` in JSON; `model` of a chunk/`message`/
    /// `response` object in SSE), at most [`MAX_MODEL_BYTES`]; the first one seen.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// Whether the body signalled its normal end: SSE `data: [DONE]`, Anthropic `message_stop`,
    /// OpenAI Responses `response.completed` (or `response.incomplete`, which ends a response cut
    /// short by its output limit and carries the final usage); for JSON, the top-level object
    /// or array closed.
    pub fn saw_end(&self) -> bool {
        self.saw_end
    }

    /// Heap bytes held, for checking that memory stays bounded.
    pub fn buffered_bytes(&self) -> usize {
        self.scanner.buffered_bytes() + self.model.as_ref().map_or(0, String::capacity)
    }

    /// Values too large to copy out (a `usage` over [`MAX_USAGE_BYTES`], an over-long `model`):
    /// ignored, counted here.
    pub fn oversized_values(&self) -> u64 {
        self.scanner.oversized
    }

    fn absorb_json(&mut self) {
        let found = &mut self.scanner.found;
        if let Some(fields) = found.usage.take() {
            self.invalid_counts |= fields.invalid;
            self.usage = Some(fields.normalize());
        }
        if self.model.is_none() {
            self.model = found.model.take();
        }
        self.scanner.want_model = self.model.is_none();
        self.saw_end = self.scanner.closed;
    }

    fn feed_event_stream(&mut self, mut chunk: &[u8]) {
        while let Some((&byte, rest)) = chunk.split_first() {
            if self.sse.pending_cr {
                self.sse.pending_cr = false;
                if byte == b'\n' {
                    chunk = rest;
                    continue;
                }
            }
            if let Line::Value(field) = self.sse.line {
                // The bulk of a stream is data values: hand them over a run at a time.
                let end = memchr::memchr2(b'\n', b'\r', chunk).unwrap_or(chunk.len());
                if end > 0 {
                    let (value, rest) = chunk.split_at_checked(end).unwrap_or((chunk, &[]));
                    self.value_bytes(field, value);
                    chunk = rest;
                    continue;
                }
            }
            self.line_byte(byte);
            chunk = rest;
        }
    }

    fn line_byte(&mut self, byte: u8) {
        if !self.sse.started {
            if BOM.get(self.sse.bom_matched) == Some(&byte) {
                self.sse.bom_matched += 1;
                self.sse.started = self.sse.bom_matched == BOM.len();
                return;
            }
            self.sse.started = true;
            if self.sse.bom_matched > 0 {
                // Part of a byte order mark starts a field name that no field has.
                self.sse.field.clear();
                self.sse.field.unusable = true;
                self.sse.line = Line::Field;
            }
        }
        if byte == b'\n' || byte == b'\r' {
            self.end_line();
            self.sse.pending_cr = byte == b'\r';
            return;
        }
        match self.sse.line {
            Line::Start => {
                if byte == b':' {
                    self.sse.line = Line::Value(Field::Ignored);
                } else {
                    self.sse.field.clear();
                    self.sse.field.push(byte);
                    self.sse.line = Line::Field;
                }
            }
            Line::Field => {
                if byte == b':' {
                    let field = self.begin_field();
                    self.sse.line = Line::Space(field);
                } else {
                    self.sse.field.push(byte);
                }
            }
            Line::Space(field) => {
                self.sse.line = Line::Value(field);
                if byte != b' ' {
                    self.value_bytes(field, &[byte]);
                }
            }
            Line::Value(field) => self.value_bytes(field, &[byte]),
        }
    }

    fn end_line(&mut self) {
        match self.sse.line {
            Line::Start => self.dispatch(),
            // A line without a colon is a field with an empty value.
            Line::Field => {
                self.begin_field();
            }
            Line::Space(_) | Line::Value(_) => {}
        }
        self.sse.line = Line::Start;
    }

    fn begin_field(&mut self) -> Field {
        let field = match self.sse.field.as_slice() {
            Some(b"data") => Field::Data,
            Some(b"event") => Field::Event,
            _ => Field::Ignored,
        };
        match field {
            Field::Data => {
                // Lines of one event's data are joined by a line feed.
                if self.sse.has_data {
                    self.data_bytes(b"\n");
                }
                self.sse.has_data = true;
            }
            Field::Event => self.sse.event.clear(),
            Field::Ignored => {}
        }
        field
    }

    fn value_bytes(&mut self, field: Field, bytes: &[u8]) {
        match field {
            Field::Data => self.data_bytes(bytes),
            Field::Event => self.sse.event.extend(bytes),
            Field::Ignored => {}
        }
    }

    fn data_bytes(&mut self, bytes: &[u8]) {
        self.sse.head.extend(bytes);
        self.scanner.feed(bytes);
    }

    fn dispatch(&mut self) {
        if self.sse.has_data {
            self.apply_event();
        }
        self.sse.has_data = false;
        self.sse.head.clear();
        self.sse.event.clear();
        self.scanner.reset();
        self.scanner.want_model = self.model.is_none();
    }

    fn apply_event(&mut self) {
        let found = core::mem::take(&mut self.scanner.found);
        let named = self
            .sse
            .event
            .as_slice()
            .map_or(EventType::Other, EventType::from_name);
        let kind = if found.event == EventType::Other {
            named
        } else {
            found.event
        };
        let done = self.sse.head.as_slice().map(<[u8]>::trim_ascii) == Some(b"[DONE]");
        if done || matches!(kind, EventType::MessageStop | EventType::ResponseDone) {
            self.saw_end = true;
        }
        if self.model.is_none() {
            self.model = found.model.or(found.nested_model);
        }
        let read = [found.usage, found.nested_usage];
        self.invalid_counts |= read.iter().flatten().any(|fields| fields.invalid);
        match (kind, found.usage, found.nested_usage) {
            // Anthropic's message_delta counts are cumulative and may name only output_tokens.
            (EventType::MessageDelta, Some(delta), _) => {
                self.usage = Some(delta.overlay(self.usage.unwrap_or_default()));
            }
            (_, _, Some(nested)) => self.usage = Some(nested.normalize()),
            (_, Some(top), None) => self.usage = Some(top.normalize()),
            (_, None, None) => {}
        }
    }
}

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    Event,
    Ignored,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Line {
    #[default]
    Start,
    /// Reading the field name.
    Field,
    /// Just after the colon, where one space is dropped.
    Space(Field),
    Value(Field),
}

/// A fixed-size byte buffer that remembers whether more arrived than fits.
#[derive(Debug, Clone, Copy)]
struct Small<const N: usize> {
    bytes: [u8; N],
    len: usize,
    unusable: bool,
}

impl<const N: usize> Default for Small<N> {
    fn default() -> Self {
        Self {
            bytes: [0; N],
            len: 0,
            unusable: false,
        }
    }
}

impl<const N: usize> Small<N> {
    fn clear(&mut self) {
        self.len = 0;
        self.unusable = false;
    }

    fn push(&mut self, byte: u8) {
        self.extend(&[byte]);
    }

    fn extend(&mut self, bytes: &[u8]) {
        let end = self.len.saturating_add(bytes.len());
        match self.bytes.get_mut(self.len..end) {
            Some(slot) if !self.unusable => {
                slot.copy_from_slice(bytes);
                self.len = end;
            }
            _ => self.unusable = true,
        }
    }

    /// The bytes, unless more arrived than fit.
    fn as_slice(&self) -> Option<&[u8]> {
        if self.unusable {
            None
        } else {
            self.bytes.get(..self.len)
        }
    }
}

#[derive(Debug, Default)]
struct EventStream {
    line: Line,
    /// The previous byte ended a line with CR: a LF right after it belongs to that line end.
    pending_cr: bool,
    started: bool,
    bom_matched: usize,
    field: Small<8>,
    event: Small<32>,
    /// The start of the event's data, enough to recognize `[DONE]`.
    head: Small<16>,
    has_data: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum EventType {
    #[default]
    Other,
    MessageDelta,
    MessageStop,
    /// `response.completed` or `response.incomplete`.
    ResponseDone,
}

impl EventType {
    fn from_name(name: &[u8]) -> Self {
        match name {
            b"message_delta" => EventType::MessageDelta,
            b"message_stop" => EventType::MessageStop,
            b"response.completed" | b"response.incomplete" => EventType::ResponseDone,
            _ => EventType::Other,
        }
    }
}

/// The fields of one `usage` object, any provider's, before normalizing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct UsageFields {
    prompt: Option<u64>,
    completion: Option<u64>,
    input: Option<u64>,
    output: Option<u64>,
    /// `prompt_tokens_details.cached_tokens` (Chat Completions).
    prompt_cached: Option<u64>,
    /// `input_tokens_details.cached_tokens` (Responses).
    input_cached: Option<u64>,
    cache_read: Option<u64>,
    cache_write: Option<u64>,
    chat_keys: bool,
    input_details_key: bool,
    cache_keys: bool,
    /// A count this module knows was given as something other than a non-negative integer
    /// (negative, fractional, a string): the usage cannot be billed as reported.
    invalid: bool,
}

impl UsageFields {
    /// `None` unless `json` is an object with at least one count this module knows (valid or
    /// not: an invalid count is usage that cannot be billed, never usage that is missing).
    fn parse(json: &[u8]) -> Option<Self> {
        let entries = object_entries(core::str::from_utf8(json).ok()?)?;
        let mut fields = UsageFields::default();
        let mut known = false;
        for (key, raw) in &entries {
            let mut count = || {
                known = true;
                let value = json_u64(raw);
                fields.invalid |= value.is_none() && raw.get() != "null";
                value
            };
            match key.as_ref() {
                "prompt_tokens" => {
                    fields.prompt = count();
                    fields.chat_keys = true;
                }
                "completion_tokens" => {
                    fields.completion = count();
                    fields.chat_keys = true;
                }
                "prompt_tokens_details" => {
                    known = true;
                    fields.chat_keys = true;
                    fields.prompt_cached = cached_tokens(raw, &mut fields.invalid);
                }
                "input_tokens" => fields.input = count(),
                "output_tokens" => fields.output = count(),
                "input_tokens_details" => {
                    known = true;
                    fields.input_details_key = true;
                    fields.input_cached = cached_tokens(raw, &mut fields.invalid);
                }
                "cache_read_input_tokens" => {
                    fields.cache_read = count();
                    fields.cache_keys = true;
                }
                "cache_creation_input_tokens" => {
                    fields.cache_write = count();
                    fields.cache_keys = true;
                }
                _ => {}
            }
        }
        known.then_some(fields)
    }

    fn normalize(&self) -> TokenUsage {
        // OpenAI's input counts include the cached part; Anthropic's exclude both cache counts.
        let split_cached = |total: Option<u64>, cached: Option<u64>| {
            let total = total.unwrap_or(0);
            let cached = cached.unwrap_or(0).min(total);
            (total - cached, cached)
        };
        if self.chat_keys {
            let (input, cached) = split_cached(self.prompt, self.prompt_cached);
            TokenUsage {
                input_tokens: input,
                cached_input_tokens: cached,
                cache_write_tokens: 0,
                output_tokens: self.completion.unwrap_or(0),
            }
        } else if self.input_details_key && !self.cache_keys {
            let (input, cached) = split_cached(self.input, self.input_cached);
            TokenUsage {
                input_tokens: input,
                cached_input_tokens: cached,
                cache_write_tokens: 0,
                output_tokens: self.output.unwrap_or(0),
            }
        } else {
            TokenUsage {
                input_tokens: self.input.unwrap_or(0),
                cached_input_tokens: self.cache_read.unwrap_or(0),
                cache_write_tokens: self.cache_write.unwrap_or(0),
                output_tokens: self.output.unwrap_or(0),
            }
        }
    }

    /// Anthropic `message_delta` usage: the counts it names replace those so far.
    fn overlay(&self, mut usage: TokenUsage) -> TokenUsage {
        if let Some(input) = self.input {
            usage.input_tokens = input;
        }
        if let Some(read) = self.cache_read {
            usage.cached_input_tokens = read;
        }
        if let Some(write) = self.cache_write {
            usage.cache_write_tokens = write;
        }
        if let Some(output) = self.output {
            usage.output_tokens = output;
        }
        usage
    }
}

fn cached_tokens(details: &RawValue, invalid: &mut bool) -> Option<u64> {
    let entries = object_entries(details.get())?;
    let (_, raw) = entries
        .iter()
        .rev()
        .find(|(key, _)| key == "cached_tokens")?;
    let value = json_u64(raw);
    *invalid |= value.is_none() && raw.get() != "null";
    value
}

#[cfg(test)]
mod tests;
