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
                let end = chunk
                    .iter()
                    .position(|&b| b == b'\n' || b == b'\r')
                    .unwrap_or(chunk.len());
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
            match key.as_str() {
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

/// What one JSON value (a body, or one event's data) held at the places read.
#[derive(Debug, Default)]
struct Found {
    /// The last recognizable top-level `usage`.
    usage: Option<UsageFields>,
    /// The last recognizable `usage` of a top-level `message` or `response` object.
    nested_usage: Option<UsageFields>,
    /// The first top-level `model` string.
    model: Option<String>,
    /// The first `model` string of a top-level `message` or `response` object.
    nested_model: Option<String>,
    /// The top-level `type`.
    event: EventType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

/// What comes next in the object or array at depth 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Key,
    Colon,
    Value,
    Comma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Usage,
    Model,
    Type,
    Message,
    Response,
    Other,
}

impl Key {
    fn from_bytes(key: &[u8]) -> Self {
        match key {
            b"usage" => Key::Usage,
            b"model" => Key::Model,
            b"type" => Key::Type,
            b"message" => Key::Message,
            b"response" => Key::Response,
            _ => Key::Other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Usage,
    Model,
    Type,
}

#[derive(Debug, Clone, Copy)]
struct Capture {
    target: Target,
    /// Depth of the object holding the key: 1 is top-level, 2 inside `message`/`response`.
    level: u32,
    /// For an object value: it ends when the depth falls below this. `None` for a string value.
    close_below: Option<u32>,
    limit: usize,
    overflow: bool,
}

/// A streaming JSON tokenizer that copies out `usage`, `model` and `type` values at the top
/// level (and, for event data, inside a top-level `message` or `response` object) and nothing
/// else. It checks no more of the grammar than it needs: on invalid JSON it reads something or
/// nothing, never panics, and keeps its bounds.
#[derive(Debug)]
struct Scanner {
    /// Also read inside a top-level `message` or `response` object (SSE events).
    nested: bool,
    want_model: bool,
    depth: u32,
    containers: [Container; 2],
    expect: Expect,
    /// The latest key read at depth 1 or 2.
    last_key: Key,
    /// The depth-1 key whose value is the open depth-2 container.
    parent: Key,
    in_string: bool,
    escaped: bool,
    string_is_key: bool,
    key: Small<MAX_KEY_BYTES>,
    capture: Option<Capture>,
    buf: Vec<u8>,
    /// The top-level value has closed; what follows is ignored.
    closed: bool,
    oversized: u64,
    found: Found,
}

impl Scanner {
    fn new(nested: bool) -> Self {
        Self {
            nested,
            want_model: true,
            depth: 0,
            containers: [Container::Object; 2],
            expect: Expect::Value,
            last_key: Key::Other,
            parent: Key::Other,
            in_string: false,
            escaped: false,
            string_is_key: false,
            key: Small::default(),
            capture: None,
            buf: Vec::new(),
            closed: false,
            oversized: 0,
            found: Found::default(),
        }
    }

    /// Ready for the next value, keeping the buffer's allocation and the counters.
    fn reset(&mut self) {
        let buf = core::mem::take(&mut self.buf);
        let oversized = self.oversized;
        *self = Self::new(self.nested);
        self.buf = buf;
        self.buf.clear();
        self.oversized = oversized;
    }

    fn buffered_bytes(&self) -> usize {
        self.buf.capacity()
    }

    fn feed(&mut self, mut bytes: &[u8]) {
        while !self.closed {
            if self.in_string && !self.escaped {
                // Runs of plain string content are most of a body: skip them in one step.
                let stop = bytes
                    .iter()
                    .position(|&b| b == b'"' || b == b'\\')
                    .unwrap_or(bytes.len());
                let (plain, rest) = bytes.split_at_checked(stop).unwrap_or((bytes, &[]));
                self.string_content(plain);
                bytes = rest;
            }
            let Some((&byte, rest)) = bytes.split_first() else {
                return;
            };
            bytes = rest;
            if self.in_string {
                self.string_byte(byte);
            } else {
                self.structural_byte(byte);
            }
        }
    }

    fn string_content(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.string_is_key {
            self.key.extend(bytes);
        }
        self.append(bytes);
    }

    fn string_byte(&mut self, byte: u8) {
        if self.escaped {
            self.escaped = false;
            self.string_content(&[byte]);
            return;
        }
        match byte {
            b'\\' => {
                self.escaped = true;
                // Providers never escape characters in the key names read here.
                if self.string_is_key {
                    self.key.unusable = true;
                }
                self.append(&[byte]);
            }
            b'"' => {
                self.in_string = false;
                self.append(&[byte]);
                if self.string_is_key {
                    self.string_is_key = false;
                    self.last_key = self.key.as_slice().map_or(Key::Other, Key::from_bytes);
                    self.expect = Expect::Colon;
                } else if matches!(
                    self.capture,
                    Some(Capture {
                        close_below: None,
                        ..
                    })
                ) {
                    self.finish_capture();
                }
            }
            _ => self.string_content(&[byte]),
        }
    }

    /// The container at `depth` when it is 1 or 2.
    fn container(&self, depth: u32) -> Option<Container> {
        let index = usize::try_from(depth.checked_sub(1)?).ok()?;
        self.containers.get(index).copied()
    }

    fn outer_levels(&self) -> bool {
        self.depth == 1 || self.depth == 2
    }

    /// At depth 1 or 2, in an object, where a member's value starts.
    fn at_member_value(&self) -> bool {
        self.expect == Expect::Value && self.container(self.depth) == Some(Container::Object)
    }

    /// What to copy out of the value starting here, if anything.
    fn wanted(&self, opening: u8) -> Option<Target> {
        if !self.at_member_value() {
            return None;
        }
        let found = &self.found;
        let inside_reported =
            self.depth == 2 && self.nested && matches!(self.parent, Key::Message | Key::Response);
        match (self.depth, self.last_key, opening) {
            (1, Key::Usage, b'{') => Some(Target::Usage),
            (1, Key::Model, b'"') if self.want_model && found.model.is_none() => {
                Some(Target::Model)
            }
            (1, Key::Type, b'"') if self.nested => Some(Target::Type),
            (2, Key::Usage, b'{') if inside_reported => Some(Target::Usage),
            (2, Key::Model, b'"')
                if inside_reported && self.want_model && found.nested_model.is_none() =>
            {
                Some(Target::Model)
            }
            _ => None,
        }
    }

    fn start_capture(&mut self, target: Target, close_below: Option<u32>) {
        let limit = match target {
            Target::Usage => MAX_USAGE_BYTES,
            // The quotes around the string are copied too.
            Target::Model => MAX_MODEL_BYTES + 2,
            Target::Type => MAX_TYPE_BYTES + 2,
        };
        self.buf.clear();
        self.capture = Some(Capture {
            target,
            level: self.depth,
            close_below,
            limit,
            overflow: false,
        });
    }

    fn structural_byte(&mut self, byte: u8) {
        match byte {
            b'"' => {
                self.in_string = true;
                if self.outer_levels()
                    && self.expect == Expect::Key
                    && self.container(self.depth) == Some(Container::Object)
                {
                    self.string_is_key = true;
                    self.key.clear();
                } else {
                    if let Some(target) = self.wanted(byte) {
                        self.start_capture(target, None);
                    }
                    if self.outer_levels() {
                        self.expect = Expect::Comma;
                    }
                }
                self.append(&[byte]);
            }
            b'{' | b'[' => {
                let member_value = self.at_member_value();
                if let Some(target) = self.wanted(byte) {
                    self.start_capture(target, Some(self.depth.saturating_add(1)));
                }
                self.append(&[byte]);
                if self.depth == 1 {
                    self.parent = if member_value {
                        self.last_key
                    } else {
                        Key::Other
                    };
                }
                self.depth = self.depth.saturating_add(1);
                let container = if byte == b'{' {
                    Container::Object
                } else {
                    Container::Array
                };
                if let Some(index) = self
                    .depth
                    .checked_sub(1)
                    .and_then(|i| usize::try_from(i).ok())
                {
                    if let Some(slot) = self.containers.get_mut(index) {
                        *slot = container;
                    }
                }
                self.expect = match container {
                    Container::Object => Expect::Key,
                    Container::Array => Expect::Value,
                };
            }
            b'}' | b']' => {
                self.append(&[byte]);
                let Some(depth) = self.depth.checked_sub(1) else {
                    return;
                };
                self.depth = depth;
                if depth == 0 {
                    self.closed = true;
                }
                self.expect = Expect::Comma;
                if let Some(Capture {
                    close_below: Some(close_below),
                    ..
                }) = self.capture
                {
                    if depth < close_below {
                        self.finish_capture();
                    }
                }
            }
            b':' => {
                self.append(&[byte]);
                if self.expect == Expect::Colon {
                    self.expect = Expect::Value;
                }
            }
            b',' => {
                self.append(&[byte]);
                self.expect = match self.container(self.depth) {
                    Some(Container::Object) => Expect::Key,
                    _ => Expect::Value,
                };
            }
            b' ' | b'\t' | b'\n' | b'\r' => self.append(&[byte]),
            _ => {
                self.append(&[byte]);
                if self.expect == Expect::Value {
                    self.expect = Expect::Comma;
                }
            }
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let Some(capture) = self.capture.as_mut() else {
            return;
        };
        if capture.overflow {
            return;
        }
        if !push_bounded(&mut self.buf, bytes, capture.limit) {
            capture.overflow = true;
            self.buf.clear();
        }
    }

    fn finish_capture(&mut self) {
        let Some(capture) = self.capture.take() else {
            return;
        };
        if capture.overflow {
            self.oversized = self.oversized.saturating_add(1);
            return;
        }
        let nested = capture.level == 2;
        match capture.target {
            Target::Usage => {
                if let Some(fields) = UsageFields::parse(&self.buf) {
                    let slot = if nested {
                        &mut self.found.nested_usage
                    } else {
                        &mut self.found.usage
                    };
                    *slot = Some(fields);
                }
            }
            Target::Model => {
                let slot = if nested {
                    &mut self.found.nested_model
                } else {
                    &mut self.found.model
                };
                if slot.is_none() {
                    *slot = decode_string(&self.buf).filter(|model| !model.is_empty());
                }
            }
            Target::Type => {
                self.found.event = decode_string(&self.buf).map_or(EventType::Other, |name| {
                    EventType::from_name(name.as_bytes())
                });
            }
        }
        self.buf.clear();
    }
}

fn decode_string(json: &[u8]) -> Option<String> {
    serde_json::from_slice::<String>(json).ok()
}

/// Appends `bytes` unless that would pass `limit`, growing the allocation no further than
/// `limit` (a plain `extend` could double it past).
fn push_bounded(buf: &mut Vec<u8>, bytes: &[u8], limit: usize) -> bool {
    let Some(needed) = buf.len().checked_add(bytes.len()) else {
        return false;
    };
    if needed > limit {
        return false;
    }
    if needed > buf.capacity() {
        let target = buf
            .capacity()
            .saturating_mul(2)
            .max(needed)
            .max(64)
            .min(limit);
        buf.reserve_exact(target.saturating_sub(buf.len()));
    }
    buf.extend_from_slice(bytes);
    true
}

#[cfg(test)]
mod tests {
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
        reader.feed(
            b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]",
        );
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
}
