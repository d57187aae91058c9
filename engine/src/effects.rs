//! What a step of the request core asks its host to do: edit the request's headers, answer
//! locally, log, count, and record usage. The host applies these and decides nothing.

use std::borrow::Cow;

use crate::config::Settings;
use crate::denial::{Denial, DenyCode};
use crate::provider::ProviderKeyUse;
use crate::route::ErrorFormat;
use crate::settlement::Usage;
use crate::window_counter::CountedWindows;

/// One edit of the upstream request's headers (pseudo-headers included: `:path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit<'a> {
    Remove(&'a str),
    /// Every copy of the header is replaced by this one value.
    Set(&'a str, Cow<'a, str>),
    /// A header the request is known not to carry (hygiene removed every client copy first), so
    /// appending equals replacing. A host may append: in Envoy that skips a walk over the whole
    /// header map that replacing does, per header.
    Add(&'a str, Cow<'a, str>),
}

/// A local answer: the request never reaches the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// keyward's error reply: the JSON body in the route's format, `content-type`,
    /// `cache-control: no-store`, the error-code header, `www-authenticate` on 401, and any
    /// headers of the refusal itself (rate limits) first.
    pub fn error(
        settings: &Settings,
        denial: &Denial,
        format: ErrorFormat,
        request_id: &str,
        extra_headers: Vec<(String, String)>,
    ) -> Reply {
        let mut headers = extra_headers;
        headers.extend([
            ("content-type".to_owned(), "application/json".to_owned()),
            ("cache-control".to_owned(), "no-store".to_owned()),
            (
                settings.error_header.clone(),
                denial.code.as_str().to_owned(),
            ),
        ]);
        if denial.status == 401 {
            headers.push((
                "www-authenticate".to_owned(),
                "Bearer realm=\"keyward\"".to_owned(),
            ));
        }
        Reply {
            status: denial.status,
            headers,
            body: denial.body(format, request_id),
        }
    }
}

impl Reply {
    /// The 500 a host sends when it has no configuration to decide with (the default error
    /// header and format).
    pub fn unconfigured() -> Reply {
        let denial = Denial::new(DenyCode::InternalError, 403);
        Reply {
            status: denial.status,
            headers: vec![
                ("content-type".to_owned(), "application/json".to_owned()),
                ("cache-control".to_owned(), "no-store".to_owned()),
                (
                    "x-keyward-error".to_owned(),
                    denial.code.as_str().to_owned(),
                ),
            ],
            body: denial.body(ErrorFormat::Openai, ""),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub level: Level,
    pub line: String,
}

/// A counter to increase; each maps to one host metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Allowed,
    Denied(DenyCode),
    ShadowDenied,
    Exempt,
    FailOpen,
    Reservation,
    Unpriced,
    SoftCapWarning,
    UsageMissing,
    UsageInvalid,
    UsageUnreadable,
    Incomplete,
    SettledMicrousd(u64),
    SettleFailure,
}

/// Usage for the report to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord<'a> {
    pub key_id: &'a str,
    pub project: Option<&'a str>,
    pub usage: Usage,
    /// The budget and quota windows the request was counted in (the report names them).
    pub windows: CountedWindows,
    /// The provider key the request was forwarded with.
    pub provider_key: Option<ProviderKeyUse>,
}

/// Everything one step asks of the host, in the order to apply it: edits, then the reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects<'a> {
    pub edits: Vec<Edit<'a>>,
    pub reply: Option<Reply>,
    pub logs: Vec<LogEntry>,
    pub counts: Vec<Count>,
    pub usage: Option<UsageRecord<'a>>,
}

impl<'a> Effects<'a> {
    pub fn log(&mut self, level: Level, line: String) {
        self.logs.push(LogEntry { level, line });
    }

    pub fn count(&mut self, count: Count) {
        self.counts.push(count);
    }
}
