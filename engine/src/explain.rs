//! One request through the request core, offline, with its trace: what `keyward explain` and
//! `keyward audit` print. The verdict is read from the same effects the filter applies, so it is
//! the filter's answer for a fresh Envoy (no spend or rate taken yet beyond the snapshot's).

use serde::Serialize;

use crate::config::Settings;
use crate::effects::{Count, Edit, Effects};
use crate::gate::{Gate, HeaderFacts, Next, SHADOW_HEADER};
use crate::ledger::MemoryLedger;
use crate::request::Header;
use crate::snapshot::Policy;
use crate::trace::{Steps, TraceStep};

/// What the filter does with the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Verdict {
    /// No authentication on this route.
    Exempt,
    /// No usable policy, and `policy_unavailable: fail_open`.
    FailOpen,
    /// Goes upstream. `headers` are the identity headers it carries; `shadow_denied` the code
    /// shadow mode would have refused it with.
    Allow {
        headers: Vec<(String, String)>,
        #[serde(skip_serializing_if = "Option::is_none")]
        shadow_denied: Option<String>,
    },
    /// Answered locally.
    Deny {
        status: u16,
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    #[serde(flatten)]
    pub verdict: Verdict,
    pub steps: Vec<TraceStep>,
}

/// Decides one request: headers as the client sends them (pseudo-headers included), the Envoy
/// route name when routes match on it, the clock, and the body for routes that read it.
pub fn explain(
    settings: &Settings,
    policy: Option<&Policy>,
    headers: &[Header],
    route_name: Option<&str>,
    now_s: u64,
    body: Option<&[u8]>,
) -> Explanation {
    let gate = Gate {
        settings,
        policy,
        reports_usage: false,
    };
    let mut ledger = MemoryLedger {
        now_ms: now_s.saturating_mul(1000),
        ..MemoryLedger::default()
    };
    let mut trace = Steps::default();
    let facts = HeaderFacts {
        headers,
        route_name,
        now_s,
        end_of_stream: body.is_none(),
    };
    let step = gate.on_headers(&facts, &mut ledger, &mut trace);
    let mut applied: Vec<Effects<'_>> = vec![step.effects];
    if let Next::AwaitBody(ticket) = step.next {
        let body = body.unwrap_or_default();
        let read = (!gate.body_too_large(body.len())).then_some(body);
        let second = gate.on_body(*ticket, read, &mut ledger, &mut trace);
        applied.push(second.step.effects);
    }
    Explanation {
        verdict: verdict_of(settings, &applied),
        steps: trace.0,
    }
}

fn verdict_of(settings: &Settings, applied: &[Effects<'_>]) -> Verdict {
    if let Some(reply) = applied.iter().find_map(|effects| effects.reply.as_ref()) {
        let code = reply
            .headers
            .iter()
            .find(|(name, _)| *name == settings.error_header)
            .map(|(_, value)| value.clone())
            .unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|body| {
                let error = body.get("error")?;
                error.get("message")?.as_str().map(str::to_owned)
            })
            .unwrap_or_default();
        return Verdict::Deny {
            status: reply.status,
            code,
            message,
        };
    }
    let counted = |wanted: Count| {
        applied
            .iter()
            .any(|effects| effects.counts.contains(&wanted))
    };
    if counted(Count::Exempt) {
        return Verdict::Exempt;
    }
    if counted(Count::FailOpen) {
        return Verdict::FailOpen;
    }
    // The request headers as they leave: replay every edit in order.
    let mut upstream: Vec<(String, String)> = Vec::new();
    for edit in applied.iter().flat_map(|effects| effects.edits.iter()) {
        match edit {
            Edit::Remove(name) => upstream.retain(|(existing, _)| existing != name),
            Edit::Set(name, value) => {
                upstream.retain(|(existing, _)| existing != name);
                upstream.push(((*name).to_owned(), value.to_string()));
            }
            Edit::Add(name, value) => upstream.push(((*name).to_owned(), value.to_string())),
        }
    }
    let identity: Vec<&str> = settings.identity_headers.all().collect();
    let shadow_denied = upstream
        .iter()
        .find(|(name, _)| name == SHADOW_HEADER)
        .map(|(_, value)| value.clone());
    Verdict::Allow {
        headers: upstream
            .into_iter()
            .filter(|(name, _)| identity.contains(&name.as_str()))
            .collect(),
        shadow_denied,
    }
}
