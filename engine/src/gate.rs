//! The request core: one request from its headers to its admission, with no host types. A host
//! reads the facts (headers, route name, clock, body), calls [`Gate::on_headers`] and, when told
//! to wait for the body, [`Gate::on_body`]; it applies the [`Effects`] each returns and keeps the
//! [`Ticket`] or [`Watch`] for the next step. The whole decision table, admission, shadow mode,
//! the error reply and every header edit an outcome implies are decided here.

use std::borrow::Cow;

use crate::admission::{admit, Admit, AdmitContext, Admitted, BodyRead, Parties, Refusal};
use crate::config::{length_bit, Mode, Settings};
use crate::decision::{decide_traced, Identity, Outcome, Rejection};
use crate::denial::{Denial, DenyCode};
use crate::effects::{Count, Edit, Effects, Level, Reply, UsageRecord};
use crate::ledger::{Ledger, LedgerError};
use crate::log_line::DecisionLog;
use crate::provider::{
    KeyOwnerKind, MissingProviderKey, ProviderKeyUse, ProviderRoute, PROVIDER_CREDENTIAL_HEADERS,
};
use crate::provider_keys::ProviderKeys;
use crate::request::{header_name_has_prefix, same_header_name, Header, Request};
use crate::request_body::{read_request_body, with_stream_usage, BodyError};
use crate::route::Route;
use crate::settlement::Usage;
use crate::snapshot::{Policy, Project};
use crate::trace::Trace;
use crate::watch::Watch;

/// Every client-sent header with this prefix is removed: the upstream trusts the prefix.
pub const KEYWARD_HEADER_PREFIX: &str = "x-keyward-";
/// Tells the upstream what shadow mode would have refused.
pub const SHADOW_HEADER: &str = "x-keyward-shadow-denied";

/// What the host read before the headers step.
#[derive(Debug, Clone, Copy)]
pub struct HeaderFacts<'r> {
    pub headers: &'r [Header],
    /// Envoy's route name, when [`Gate::needs_route_name`].
    pub route_name: Option<&'r str>,
    /// Unix seconds, when [`Gate::needs_clock`]; otherwise 0.
    pub now_s: u64,
    /// The request has no body.
    pub end_of_stream: bool,
}

/// What comes after a step.
#[derive(Debug)]
pub enum Next {
    /// Goes upstream; nothing more to do.
    Done,
    /// Allowed so far; the buffered body decides the rest.
    AwaitBody(Box<Ticket>),
    /// Goes upstream; its response is watched (headers to add, metering).
    Watch(Box<Watch>),
    /// Answered locally (the reply is in the effects); never goes upstream.
    Stop,
}

#[derive(Debug)]
pub struct Step<'a> {
    pub effects: Effects<'a>,
    pub next: Next,
}

impl Step<'_> {
    pub fn goes_upstream(&self) -> bool {
        !matches!(self.next, Next::Stop)
    }
}

/// The body step's outcome: a [`Step`], and a replacement body when the body must change
/// (stream usage requested).
#[derive(Debug)]
pub struct BodyStep<'a> {
    pub step: Step<'a>,
    pub new_body: Option<Vec<u8>>,
}

/// An authenticated request between its steps: who it acts as, by position in the policy the
/// host keeps for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub key: usize,
    pub project: Option<usize>,
    pub route: Option<usize>,
    /// OpenAI chat completions: the one API whose streams report usage only when asked to.
    pub chat_completions: bool,
    pub request_id: String,
    /// Identity headers were set on the request and would have to go on a late shadow refusal.
    pub identity_set: bool,
    /// The provider key set on the request (its usage names it, for the key's last use).
    pub provider_key: Option<ProviderKeyUse>,
}

/// One request's view of the configuration and policy.
#[derive(Debug, Clone, Copy)]
pub struct Gate<'a> {
    pub settings: &'a Settings,
    pub policy: Option<&'a Policy>,
    /// Usage goes to a control plane: every allowed request is recorded.
    pub reports_usage: bool,
}

impl<'a> Gate<'a> {
    /// Whether any route matches on Envoy's route name (one host call per request if so).
    pub fn needs_route_name(&self) -> bool {
        self.settings.needs_route_name()
    }

    /// Whether any check reads the clock: expiring keys or snapshots, or a maximum age.
    pub fn needs_clock(&self) -> bool {
        self.policy
            .is_some_and(|policy| policy.needs_clock(self.settings.max_policy_age_seconds))
    }

    fn shadow(&self) -> bool {
        self.settings.mode == Mode::Shadow
    }

    /// Rows 0 to 12 for the request headers; a body-reading route waits for the body.
    pub fn on_headers<'s>(
        &self,
        facts: &HeaderFacts<'s>,
        ledger: &mut dyn Ledger,
        trace: &mut impl Trace,
    ) -> Step<'s>
    where
        'a: 's,
    {
        let settings = self.settings;
        let request = settings.request(facts.headers, facts.route_name);
        let route_position = match request.problem() {
            None => settings.route_position_for(&request),
            Some(_) => None,
        };
        let route = settings.route_at(route_position);
        let outcome = decide_traced(settings, route, &request, self.policy, facts.now_s, trace);
        let mut effects = Effects {
            // The usual accepted request: the credential removed, four identity headers set
            // (and, metered, `accept-encoding`): one allocation instead of growing twice.
            edits: Vec::with_capacity(8),
            ..Effects::default()
        };
        self.hygiene(&request, route, &mut effects);
        let version = self.policy.map_or(0, |policy| policy.version);
        let log_base = DecisionLog {
            route: &route.name,
            request_id: request.request_id(),
            policy_version: version,
            ..DecisionLog::default()
        };
        let identity = match outcome {
            Outcome::Exempt => {
                effects.count(Count::Exempt);
                return done(effects);
            }
            Outcome::FailOpen => {
                effects.count(Count::FailOpen);
                let line = DecisionLog {
                    event: "fail_open",
                    ..log_base
                };
                effects.log(Level::Warn, line.to_line());
                return done(effects);
            }
            Outcome::Deny(rejection) => {
                return self.refuse_early(&rejection, route, &request, log_base, effects)
            }
            Outcome::Allow(identity) => identity,
        };
        let mut provider_key = None;
        if let Some(provider_route) = route.provider {
            match self.provider_key(provider_route, &identity, trace) {
                Ok(Some((name, value, owner))) => {
                    // Hygiene removed every client copy of every provider credential header.
                    effects.edits.push(Edit::Add(name, Cow::Borrowed(value)));
                    provider_key = Some(ProviderKeyUse {
                        provider: provider_route.provider,
                        owner,
                    });
                }
                Ok(None) => {}
                Err(denial) => {
                    let rejection = Rejection {
                        denial,
                        key: Some(identity.key),
                        project: identity.project.map(|project| project.id.as_str()),
                    };
                    return self.refuse_early(&rejection, route, &request, log_base, effects);
                }
            }
        }
        add_identity(settings, &identity, &mut effects);
        if settings.log_allowed {
            let line = DecisionLog {
                event: "allow",
                key_id: Some(&identity.key.id),
                key_label: identity.key.label.as_deref(),
                project: identity.project.map(|project| project.id.as_str()),
                ..log_base
            };
            effects.log(Level::Info, line.to_line());
        }
        if !route.reads_body() && !self.reports_usage && !has_budget_or_limit(&identity) {
            // Nothing to read, reserve, limit or report: rows 11 and 12 cannot refuse.
            trace.skip("11", "spend caps", || "no cap or soft cap".to_owned());
            trace.skip("12", "rate limit", || {
                "the key has no rate limit".to_owned()
            });
            effects.count(Count::Allowed);
            return done(effects);
        }
        if route.meter && asks_for_encoding(&request) {
            // Usage must be readable as it passes: no compressed answers on metered routes. A
            // request without the header (or asking for identity only) is left alone: servers
            // compress only when asked, and an answer compressed anyway is charged its
            // reservation, so the edit (a host call) buys nothing there.
            effects
                .edits
                .push(Edit::Set("accept-encoding", Cow::Borrowed("identity")));
        }
        let ticket = Ticket {
            key: identity.key.position,
            project: identity.project.map(|project| project.position),
            route: route_position,
            chat_completions: request.path_without_query().ends_with("/chat/completions"),
            request_id: request.request_id().to_owned(),
            identity_set: true,
            provider_key,
        };
        if route.reads_body() && !facts.end_of_stream {
            let may_grow = route.meter && route.add_stream_usage && ticket.chat_completions;
            if may_grow && !settings.metering.hold_headers && request.has_header("content-length") {
                // The headers leave before the body may grow: let Envoy frame it instead.
                effects.edits.push(Edit::Remove("content-length"));
            }
            return Step {
                effects,
                next: Next::AwaitBody(Box::new(ticket)),
            };
        }
        self.admit_step(ticket, None, ledger, trace, effects, true)
    }

    /// Whether a buffered body of `size` bytes is over the limit (and so is not read).
    pub fn body_too_large(&self, size: usize) -> bool {
        size > self.settings.metering.max_request_body_bytes
    }

    /// The buffered body of a request that waited for it: `body` is `None` when it was too
    /// large to read ([`Gate::body_too_large`]), empty when there was none.
    pub fn on_body<'s>(
        &self,
        ticket: Ticket,
        body: Option<&[u8]>,
        ledger: &mut dyn Ledger,
        trace: &mut impl Trace,
    ) -> BodyStep<'s>
    where
        'a: 's,
    {
        let settings = self.settings;
        let route = settings.route_at(ticket.route);
        let held = settings.metering.hold_headers;
        let read = match body {
            None => Err((DenyCode::RequestTooLarge, None)),
            Some([]) => Ok(None),
            Some(bytes) => match read_request_body(bytes, settings.metering.max_request_body_bytes)
            {
                Ok(facts) => Ok(Some((facts, bytes))),
                Err(BodyError::TooLarge) => Err((DenyCode::RequestTooLarge, None)),
                Err(BodyError::NotJsonObject) => Err((DenyCode::InvalidRequestBody, None)),
                Err(BodyError::ConflictingModel) => Err((
                    DenyCode::InvalidRequestBody,
                    Some("it names more than one model"),
                )),
            },
        };
        let (facts, bytes) = match read {
            Ok(Some((facts, bytes))) => (Some(facts), bytes),
            Ok(None) => (None, &[][..]),
            Err((code, detail)) => {
                trace.fail("10b", "body readable", code.as_str(), || {
                    detail.unwrap_or(code.as_str()).to_owned()
                });
                let mut denial = Denial::new(code, settings.spend_cap_status);
                if let Some(detail) = detail {
                    denial = denial.with_detail(detail);
                }
                let refusal = Refusal {
                    denial,
                    headers: Vec::new(),
                    retry_after_ms: None,
                };
                let effects = Effects::default();
                if self.shadow() {
                    let step = self.shadow_pass(&ticket, &refusal, held, effects);
                    return BodyStep {
                        step,
                        new_body: None,
                    };
                }
                return BodyStep {
                    step: self.refuse_late(&ticket, route, &refusal, effects),
                    new_body: None,
                };
            }
        };
        trace.pass("10b", "body readable", || format!("{} bytes", bytes.len()));
        let rewritten = facts.as_ref().and_then(|facts| {
            let wanted = route.meter
                && route.add_stream_usage
                && ticket.chat_completions
                && facts.stream
                && !facts.stream_usage_requested;
            wanted.then(|| with_stream_usage(bytes)).flatten()
        });
        let body_read = facts.map(|facts| BodyRead {
            facts,
            bytes: bytes.len(),
        });
        let mut step = self.admit_step(
            ticket,
            body_read.as_ref(),
            ledger,
            trace,
            Effects::default(),
            held,
        );
        let new_body = if step.goes_upstream() {
            rewritten
        } else {
            None
        };
        if let (Some(body), true) = (&new_body, held) {
            step.effects.edits.push(Edit::Set(
                "content-length",
                Cow::Owned(body.len().to_string()),
            ));
        }
        BodyStep { step, new_body }
    }

    /// Answers a request the host could not check (a host call failed): 500, fail closed.
    pub fn internal_error(&self, route: Option<usize>, request_id: &str) -> Effects<'static> {
        let denial = Denial::new(DenyCode::InternalError, self.settings.spend_cap_status);
        let format = self.settings.route_at(route).error_format;
        let mut effects = Effects::default();
        effects.count(Count::Denied(DenyCode::InternalError));
        effects.reply = Some(Reply::error(
            self.settings,
            &denial,
            format,
            request_id,
            Vec::new(),
        ));
        effects
    }

    /// Row 13 on a provider route: the header carrying the project's (else its org's) provider
    /// key, borrowed from the opened keyring (nothing copied per request); `None` to forward
    /// without one (`missing_provider_key: pass`).
    fn provider_key(
        &self,
        provider_route: ProviderRoute,
        identity: &Identity<'a>,
        trace: &mut impl Trace,
    ) -> Result<Option<(&'static str, &'a str, KeyOwnerKind)>, Denial> {
        let ProviderRoute {
            provider,
            header,
            missing,
        } = provider_route;
        let status = |code: DenyCode| Denial::new(code, self.settings.spend_cap_status);
        let keyring = match self.policy.map(Policy::provider_keys) {
            Some(ProviderKeys::Open(keyring)) => Some(keyring),
            Some(ProviderKeys::None) | None => None,
            Some(ProviderKeys::Sealed(_) | ProviderKeys::Unavailable(_)) => {
                trace.fail("13", "provider key", "provider_key_unavailable", || {
                    "the policy's provider keys cannot be opened on this data plane".to_owned()
                });
                return Err(status(DenyCode::ProviderKeyUnavailable));
            }
        };
        let project = identity.project.map(|project| project.id.as_str());
        let found = keyring
            .and_then(|keyring| keyring.header_value(provider, header, project, identity.org));
        match (found, missing) {
            (Some((value, owner)), _) => {
                trace.pass("13", "provider key", || {
                    format!(
                        "the {} key of {provider} in {}",
                        owner.as_str(),
                        header.describe()
                    )
                });
                Ok(Some((header.header_name(), value, owner)))
            }
            (None, MissingProviderKey::Pass) => {
                trace.skip("13", "provider key", || {
                    format!("no {provider} key; forwarded without one (missing_provider_key: pass)")
                });
                Ok(None)
            }
            (None, MissingProviderKey::Deny) => {
                trace.fail("13", "provider key", "provider_key_missing", || {
                    format!("neither the project nor its org has a {provider} key")
                });
                Err(status(DenyCode::ProviderKeyMissing))
            }
        }
    }

    /// Client copies of keyward's own headers (every `x-keyward-*`, the identity names, and
    /// `_` spellings of every header keyward reads or writes) never reach the upstream, nor does
    /// a credential: whatever the outcome. The forwarded `:path` is the canonical one, without
    /// credential-named query parameters.
    fn hygiene<'s>(&self, request: &Request<'s>, route: &Route, effects: &mut Effects<'s>) {
        let settings = self.settings;
        // Each name once: straight into the edits (a few entries, so `contains` is cheap).
        let remove = |name: &'s str, edits: &mut Vec<Edit<'s>>| {
            if !edits.contains(&Edit::Remove(name)) {
                edits.push(Edit::Remove(name));
            }
        };
        for name in request.header_names() {
            // On a provider route, no provider credential of the client's rides along, in any
            // spelling: only the one keyward sets.
            let provider_credential = route.provider.is_some()
                && PROVIDER_CREDENTIAL_HEADERS
                    .iter()
                    .any(|header| same_header_name(name, header));
            if provider_credential {
                remove(name, &mut effects.edits);
                continue;
            }
            // `x-keyward-*` in any spelling (for a plain name, as sent).
            let keyward_prefixed = header_name_has_prefix(name, KEYWARD_HEADER_PREFIX);
            // A name none of the comparisons below could match (they all keep the length).
            if !keyward_prefixed && settings.hygiene_name_lengths & length_bit(name.len()) == 0 {
                continue;
            }
            // Most names are plain lower case (Envoy lower-cases them): exact comparisons. A `_`
            // or an upper-case letter takes the comparisons that fold every spelling.
            let plain = !settings.guarded_names_have_underscores
                && name.bytes().all(|b| b != b'_' && !b.is_ascii_uppercase());
            if plain {
                let removed =
                    keyward_prefixed || settings.removed_header_names.iter().any(|own| own == name);
                if removed {
                    remove(name, &mut effects.edits);
                }
                continue;
            }
            let spoofed = keyward_prefixed
                || settings
                    .guarded_header_names
                    .iter()
                    .any(|guarded| same_header_name(name, guarded) && name != guarded)
                || settings
                    .identity_headers
                    .all()
                    .any(|own| own.eq_ignore_ascii_case(name));
            let credential = settings
                .credential_sources
                .iter()
                .any(|source| source.header_name().eq_ignore_ascii_case(name));
            if spoofed || credential {
                remove(name, &mut effects.edits);
            }
        }
        if let Some(path) = request.forwarded_path(&settings.credential_query_names) {
            effects.edits.push(Edit::Set(":path", Cow::Owned(path)));
        }
    }

    fn refuse_early<'s>(
        &self,
        rejection: &Rejection<'_>,
        route: &Route,
        request: &Request<'s>,
        log_base: DecisionLog<'_>,
        mut effects: Effects<'s>,
    ) -> Step<'s> {
        let shadow = self.shadow();
        let line = DecisionLog {
            event: if shadow { "shadow_deny" } else { "deny" },
            code: Some(rejection.denial.code.as_str()),
            status: Some(rejection.denial.status),
            key_id: rejection.key.map(|key| key.id.as_str()),
            key_label: rejection.key.and_then(|key| key.label.as_deref()),
            project: rejection.project,
            ..log_base
        };
        effects.log(Level::Warn, line.to_line());
        if shadow {
            effects.edits.push(Edit::Set(
                SHADOW_HEADER,
                Cow::Borrowed(rejection.denial.code.as_str()),
            ));
            effects.count(Count::ShadowDenied);
            return done(effects);
        }
        effects.count(Count::Denied(rejection.denial.code));
        effects.reply = Some(Reply::error(
            self.settings,
            &rejection.denial,
            route.error_format,
            request.request_id(),
            Vec::new(),
        ));
        Step {
            effects,
            next: Next::Stop,
        }
    }

    /// Rows 10 to 12 once what they need is known (`headers_held`: the request's headers can
    /// still be edited).
    fn admit_step<'s>(
        &self,
        ticket: Ticket,
        body: Option<&BodyRead>,
        ledger: &mut dyn Ledger,
        trace: &mut impl Trace,
        mut effects: Effects<'s>,
        headers_held: bool,
    ) -> Step<'s>
    where
        'a: 's,
    {
        let settings = self.settings;
        let route = settings.route_at(ticket.route);
        let Some((policy, parties)) = self.parties(&ticket) else {
            effects = self.internal_error(ticket.route, &ticket.request_id);
            return Step {
                effects,
                next: Next::Stop,
            };
        };
        let context = AdmitContext {
            policy,
            route,
            metering: &settings.metering,
            spend_cap_status: settings.spend_cap_status,
            shadow: self.shadow(),
        };
        match admit(&context, parties, body, ledger, trace) {
            Admit::Admitted(admitted) => {
                self.forward(ticket, parties, *admitted, effects, headers_held)
            }
            Admit::Refused(refusal) => self.refuse_late(&ticket, route, &refusal, effects),
            Admit::Failed { error, leaked } => self.ledger_failure(&ticket, error, leaked, effects),
        }
    }

    fn forward<'s>(
        &self,
        ticket: Ticket,
        parties: Parties<'a>,
        admitted: Admitted,
        mut effects: Effects<'s>,
        headers_held: bool,
    ) -> Step<'s>
    where
        'a: 's,
    {
        if let Some(refusal) = &admitted.shadow_refusal {
            let shadowed = self.shadow_pass(&ticket, refusal, headers_held, Effects::default());
            effects.edits.extend(shadowed.effects.edits);
            effects.logs.extend(shadowed.effects.logs);
            effects.counts.extend(shadowed.effects.counts);
        } else {
            effects.count(Count::Allowed);
        }
        if admitted.metering.is_some() && admitted.holds.reservation > 0 {
            effects.count(Count::Reservation);
        }
        if admitted.unpriced {
            effects.count(Count::Unpriced);
        }
        if admitted.past_soft_cap {
            effects.count(Count::SoftCapWarning);
        }
        if admitted.metering.is_none() {
            if self.reports_usage {
                effects.usage = Some(UsageRecord {
                    key_id: &parties.key.id,
                    project: parties.project.map(|project| project.id.as_str()),
                    usage: Usage {
                        requests: 1,
                        ..Usage::default()
                    },
                    windows: admitted.holds.windows.counted,
                    provider_key: ticket.provider_key,
                });
            }
            if admitted.response_headers.is_empty() {
                return done(effects);
            }
        }
        Step {
            effects,
            next: Next::Watch(Box::new(Watch::new(ticket, admitted))),
        }
    }

    /// A refusal decided after the headers, in enforce mode: the local reply.
    fn refuse_late<'s>(
        &self,
        ticket: &Ticket,
        route: &Route,
        refusal: &Refusal,
        mut effects: Effects<'s>,
    ) -> Step<'s> {
        effects.log(Level::Warn, self.late_log("deny", ticket, &refusal.denial));
        effects.count(Count::Denied(refusal.denial.code));
        effects.reply = Some(Reply::error(
            self.settings,
            &refusal.denial,
            route.error_format,
            &ticket.request_id,
            refusal.headers.clone(),
        ));
        Step {
            effects,
            next: Next::Stop,
        }
    }

    /// A refusal decided after the headers, in shadow mode: logged and counted, and the request
    /// goes on as if it had been refused early: without identity, with the shadow header (when
    /// its headers can still be edited: with `hold_headers: false` they have left already).
    fn shadow_pass<'s>(
        &self,
        ticket: &Ticket,
        refusal: &Refusal,
        headers_held: bool,
        mut effects: Effects<'s>,
    ) -> Step<'s>
    where
        'a: 's,
    {
        effects.log(
            Level::Warn,
            self.late_log("shadow_deny", ticket, &refusal.denial),
        );
        effects.count(Count::ShadowDenied);
        if headers_held {
            if ticket.identity_set {
                effects
                    .edits
                    .extend(self.settings.identity_headers.all().map(Edit::Remove));
            }
            effects.edits.push(Edit::Set(
                SHADOW_HEADER,
                Cow::Borrowed(refusal.denial.code.as_str()),
            ));
        }
        done(effects)
    }

    fn ledger_failure<'s>(
        &self,
        ticket: &Ticket,
        error: LedgerError,
        leaked: bool,
        mut effects: Effects<'s>,
    ) -> Step<'s> {
        let held = if leaked {
            "; a reservation stays held until this Envoy restarts"
        } else {
            ""
        };
        effects.log(
            Level::Error,
            format!(
                "keyward: admission failed ({}){held}; refusing the request",
                error.description()
            ),
        );
        if self.shadow() {
            return done(effects);
        }
        let failure = self.internal_error(ticket.route, &ticket.request_id);
        effects.counts.extend(failure.counts);
        effects.reply = failure.reply;
        Step {
            effects,
            next: Next::Stop,
        }
    }

    fn late_log(&self, event: &str, ticket: &Ticket, denial: &Denial) -> String {
        let parties = self.parties(ticket).map(|(_, parties)| parties);
        let key = parties.map(|parties| parties.key);
        DecisionLog {
            event,
            code: Some(denial.code.as_str()),
            status: Some(denial.status),
            key_id: key.map(|key| key.id.as_str()),
            key_label: key.and_then(|key| key.label.as_deref()),
            project: parties
                .and_then(|parties| parties.project)
                .map(|project| project.id.as_str()),
            route: &self.settings.route_at(ticket.route).name,
            request_id: &ticket.request_id,
            policy_version: self.policy.map_or(0, |policy| policy.version),
        }
        .to_line()
    }

    /// The key and project a ticket names, in this gate's policy.
    pub fn parties(&self, ticket: &Ticket) -> Option<(&'a Policy, Parties<'a>)> {
        let policy = self.policy?;
        let key = policy.key_at(ticket.key)?;
        let project: Option<&'a Project> = match ticket.project {
            Some(position) => Some(policy.project_at(position)?),
            None => None,
        };
        Some((policy, Parties { key, project }))
    }
}

fn done(effects: Effects<'_>) -> Step<'_> {
    Step {
        effects,
        next: Next::Done,
    }
}

/// Whether the request's `accept-encoding` lets the upstream compress: present, with any value
/// but `identity` (any copy of it, so that a repeated header cannot slip a coding past).
fn asks_for_encoding(request: &Request<'_>) -> bool {
    request.header_values("accept-encoding").any(|value| {
        !core::str::from_utf8(value)
            .is_ok_and(|value| value.trim().eq_ignore_ascii_case("identity"))
    })
}

/// Whether the key or its project has a cap, soft cap, budget window, quota or rate limit, own
/// or from a plan (rows 11, 11b and 12).
fn has_budget_or_limit(identity: &Identity<'_>) -> bool {
    identity.key.counted || identity.project.is_some_and(|project| project.counted)
}

/// One header write per identity header that is configured and has a value. Client copies are
/// already removed (`hygiene` runs first and guards every identity name in every spelling), so
/// each write is an append, and a skipped header is absent upstream, never forged.
fn add_identity<'s>(settings: &'s Settings, identity: &Identity<'s>, effects: &mut Effects<'s>) {
    let names = &settings.identity_headers;
    let project = identity.project.map(|project| project.id.as_str());
    let headers = [
        (Some(names.key_id.as_str()), Some(identity.key.id.as_str())),
        (names.org.as_deref(), Some(identity.org)),
        (names.environment.as_deref(), Some(identity.environment)),
        (Some(names.project.as_str()), project),
    ];
    for (name, value) in headers {
        if let (Some(name), Some(value)) = (name, value) {
            if !value.is_empty() {
                effects.edits.push(Edit::Add(name, Cow::Borrowed(value)));
            }
        }
    }
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "gate_budget_tests.rs"]
mod budget_tests;

#[cfg(test)]
#[cfg(not(target_arch = "wasm32"))]
#[path = "gate_provider_tests.rs"]
mod provider_tests;
