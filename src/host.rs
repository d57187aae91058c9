//! The few host operations the filter needs, behind traits so the glue is tested natively with
//! one fake host (`test_support`). The Envoy implementation lives in `envoy_host`.

use keyward_engine::request::Header;

use core::fmt;

/// A host operation that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// The host call returned this proxy-wasm status (not `Ok`).
    Status(u32),
    /// What the host returned, or a shared-data record, cannot be decoded (never read as
    /// empty or zero).
    Malformed,
    /// A shared-data record kept changing under compare-and-swap.
    Contended,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Status(status) => write!(f, "host status {status}"),
            HostError::Malformed => f.write_str("unreadable host data"),
            HostError::Contended => f.write_str("shared record stayed contended"),
        }
    }
}

impl From<HostError> for keyward_engine::ledger::LedgerError {
    fn from(error: HostError) -> Self {
        use keyward_engine::ledger::LedgerError;
        match error {
            HostError::Status(status) => LedgerError::Host(status),
            HostError::Malformed => LedgerError::Corrupt,
            HostError::Contended => LedgerError::Contended,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// Metrics and logs: what every context reports through.
pub trait Telemetry {
    /// Metrics are best effort: a failed update must never change a decision.
    fn increment_metric(&self, id: u32, delta: i64);
    fn record_metric(&self, id: u32, value: u64);
    fn log(&self, level: LogLevel, message: &str);
}

/// Result of a compare-and-swap write to shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Written,
    CasMismatch,
}

/// CAS value that only succeeds while the entry is missing. A get that returned nothing must not
/// be followed by a set with cas 0, which overwrites unconditionally (see FACTS.md).
pub const CREATE_ONLY: u32 = u32::MAX;

/// Envoy's process-wide shared data (per vm_id) and the clock.
pub trait SharedData {
    /// The value and its CAS token, `None` when the entry does not exist.
    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError>;
    /// `cas: None` writes unconditionally; `Some(token)` only if the entry is unchanged.
    fn shared_set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<SetOutcome, HostError>;
    fn now_ms(&self) -> Result<u64, HostError>;
}

/// Calls to the control plane (policy sync, usage reports), answered later by token.
pub trait SyncHost: Telemetry + SharedData {
    /// Starts a GET; returns the call's token.
    fn dispatch_get(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u32, HostError>;
    /// Starts a POST; returns the call's token.
    fn dispatch_post(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, HostError>;
    /// The headers of the answer being handled (`:status` included).
    fn call_response_headers(&self) -> Result<Vec<Header>, HostError>;
    fn call_response_body(&self, size: usize) -> Result<Vec<u8>, HostError>;
}

/// The first value of header `name` as text (`None` when missing or not UTF-8).
pub fn header_text<'h>(headers: &'h [Header], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(candidate, _)| candidate == name)
        .and_then(|(_, value)| core::str::from_utf8(value).ok())
}

/// What a request context asks of its host. Counters (spend, rate limits) are not here: the
/// request glue is handed a ledger, so a host keeps them where it likes.
pub trait Host: Telemetry {
    /// All request headers, read in one host call (pseudo-headers included).
    fn request_headers(&self) -> Result<Vec<Header>, HostError>;
    /// A property such as `["xds", "route_name"]`; `Ok(None)` when the host has none.
    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError>;
    fn replace_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError>;
    /// Appends a header the request does not carry (the engine's `Edit::Add`).
    fn add_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError>;
    fn remove_request_header(&self, name: &str) -> Result<(), HostError>;
    fn send_local_reply(
        &self,
        status: u16,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError>;
    fn now_unix_seconds(&self) -> Result<u64, HostError>;
    /// The buffered request body (the first `size` bytes).
    fn request_body(&self, size: usize) -> Result<Vec<u8>, HostError>;
    /// Replaces the whole buffered request body of `old_size` bytes.
    fn replace_request_body(&self, old_size: usize, body: &[u8]) -> Result<(), HostError>;
    fn response_headers(&self) -> Result<Vec<Header>, HostError>;
    /// Hands a header list back once the glue is done with it, for the host to read the next
    /// map into (its values are wiped first). Dropping it instead is always correct.
    fn recycle_headers(&self, headers: Vec<Header>) {
        drop(headers);
    }
    fn replace_response_header(&self, name: &str, value: &[u8]) -> Result<(), HostError>;
    /// The response body chunk Envoy is passing through (`size` bytes).
    fn response_body(&self, size: usize) -> Result<Vec<u8>, HostError>;
}
