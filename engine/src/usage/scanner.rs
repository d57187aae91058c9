//! A streaming JSON tokenizer for usage: copies out `usage`, `model` and `type` values at the
//! top level (and, for event data, inside a top-level `message` or `response` object) and
//! nothing else, byte by byte, in bounded memory.

use super::{
    EventType, Small, UsageFields, MAX_KEY_BYTES, MAX_MODEL_BYTES, MAX_TYPE_BYTES, MAX_USAGE_BYTES,
};

#[derive(Debug, Default)]
/// What one JSON value (a body, or one event's data) held at the places read.
pub(super) struct Found {
    /// The last recognizable top-level `usage`.
    pub(super) usage: Option<UsageFields>,
    /// The last recognizable `usage` of a top-level `message` or `response` object.
    pub(super) nested_usage: Option<UsageFields>,
    /// The first top-level `model` string.
    pub(super) model: Option<String>,
    /// The first `model` string of a top-level `message` or `response` object.
    pub(super) nested_model: Option<String>,
    /// The top-level `type`.
    pub(super) event: EventType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Container {
    Object,
    Array,
}

/// What comes next in the object or array at depth 1 or 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    Key,
    Colon,
    Value,
    Comma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Key {
    Usage,
    Model,
    Type,
    Message,
    Response,
    Other,
}

impl Key {
    pub(super) fn from_bytes(key: &[u8]) -> Self {
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
pub(super) enum Target {
    Usage,
    Model,
    Type,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Capture {
    pub(super) target: Target,
    /// Depth of the object holding the key: 1 is top-level, 2 inside `message`/`response`.
    pub(super) level: u32,
    /// For an object value: it ends when the depth falls below this. `None` for a string value.
    pub(super) close_below: Option<u32>,
    pub(super) limit: usize,
    pub(super) overflow: bool,
}

/// A streaming JSON tokenizer that copies out `usage`, `model` and `type` values at the top
/// level (and, for event data, inside a top-level `message` or `response` object) and nothing
/// else. It checks no more of the grammar than it needs: on invalid JSON it reads something or
/// nothing, never panics, and keeps its bounds.
#[derive(Debug)]
pub(super) struct Scanner {
    /// Also read inside a top-level `message` or `response` object (SSE events).
    pub(super) nested: bool,
    pub(super) want_model: bool,
    pub(super) depth: u32,
    pub(super) containers: [Container; 2],
    pub(super) expect: Expect,
    /// The latest key read at depth 1 or 2.
    pub(super) last_key: Key,
    /// The depth-1 key whose value is the open depth-2 container.
    pub(super) parent: Key,
    pub(super) in_string: bool,
    pub(super) escaped: bool,
    pub(super) string_is_key: bool,
    pub(super) key: Small<MAX_KEY_BYTES>,
    pub(super) capture: Option<Capture>,
    pub(super) buf: Vec<u8>,
    /// The top-level value has closed; what follows is ignored.
    pub(super) closed: bool,
    pub(super) oversized: u64,
    pub(super) found: Found,
}

impl Scanner {
    pub(super) fn new(nested: bool) -> Self {
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
    pub(super) fn reset(&mut self) {
        let buf = core::mem::take(&mut self.buf);
        let oversized = self.oversized;
        *self = Self::new(self.nested);
        self.buf = buf;
        self.buf.clear();
        self.oversized = oversized;
    }

    pub(super) fn buffered_bytes(&self) -> usize {
        self.buf.capacity()
    }

    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while !self.closed {
            if self.in_string && !self.escaped {
                // Runs of plain string content are most of a body: skip them in one step.
                let stop = memchr::memchr2(b'"', b'\\', bytes).unwrap_or(bytes.len());
                let (plain, rest) = bytes.split_at_checked(stop).unwrap_or((bytes, &[]));
                self.string_content(plain);
                bytes = rest;
            }
            if !self.in_string && self.depth > 2 && self.capture.is_none() {
                // Below the levels read (a `choices` entry, say) and copying nothing: only
                // strings and brackets change the state, so the rest is skipped in one step.
                let stop = bytes
                    .iter()
                    .position(|&b| matches!(b, b'"' | b'{' | b'[' | b'}' | b']'))
                    .unwrap_or(bytes.len());
                bytes = bytes.get(stop..).unwrap_or_default();
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

    pub(super) fn string_content(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.string_is_key {
            self.key.extend(bytes);
        }
        self.append(bytes);
    }

    pub(super) fn string_byte(&mut self, byte: u8) {
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
    pub(super) fn container(&self, depth: u32) -> Option<Container> {
        let index = usize::try_from(depth.checked_sub(1)?).ok()?;
        self.containers.get(index).copied()
    }

    pub(super) fn outer_levels(&self) -> bool {
        self.depth == 1 || self.depth == 2
    }

    /// At depth 1 or 2, in an object, where a member's value starts.
    pub(super) fn at_member_value(&self) -> bool {
        self.expect == Expect::Value && self.container(self.depth) == Some(Container::Object)
    }

    /// What to copy out of the value starting here, if anything.
    pub(super) fn wanted(&self, opening: u8) -> Option<Target> {
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

    pub(super) fn start_capture(&mut self, target: Target, close_below: Option<u32>) {
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

    pub(super) fn structural_byte(&mut self, byte: u8) {
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

    /// Copies `bytes` into the capture, if one is open (called for every byte: kept inline so
    /// the usual case, nothing to copy, costs one test).
    #[inline]
    pub(super) fn append(&mut self, bytes: &[u8]) {
        if self.capture.is_some() {
            self.append_captured(bytes);
        }
    }

    fn append_captured(&mut self, bytes: &[u8]) {
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

    pub(super) fn finish_capture(&mut self) {
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

pub(super) fn decode_string(json: &[u8]) -> Option<String> {
    serde_json::from_slice::<String>(json).ok()
}

/// Appends `bytes` unless that would pass `limit`, growing the allocation no further than
/// `limit` (a plain `extend` could double it past).
pub(super) fn push_bounded(buf: &mut Vec<u8>, bytes: &[u8], limit: usize) -> bool {
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
