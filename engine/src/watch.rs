//! An admitted request on its way back: the headers its response gets, the response watched as
//! it passes, and, when the stream is over however it ended, settlement: the reservation
//! released, the cost charged, the token bucket corrected.

use crate::admission::{settle_holds, Admitted};
use crate::effects::{Count, Effects, Level, UsageRecord};
use crate::gate::{Gate, Ticket};
use crate::ledger::Ledger;
use crate::rate_limit::{rate_entry, RateState};
use crate::request::Header;
use crate::settlement::{bill, ChargeReason, ResponseMeter};

#[derive(Debug)]
pub struct Watch {
    pub ticket: Ticket,
    pub admitted: Admitted,
    /// Set from the response headers (metered requests only).
    response: Option<ResponseMeter>,
    settled: bool,
}

impl Watch {
    pub fn new(ticket: Ticket, admitted: Admitted) -> Watch {
        Watch {
            ticket,
            admitted,
            response: None,
            settled: false,
        }
    }

    /// Headers to set on the response (rate-limit state, soft-cap warning).
    pub fn response_headers(&self) -> &[(String, String)] {
        &self.admitted.response_headers
    }

    /// Whether the response headers must be read (metered requests).
    pub fn reads_response_headers(&self) -> bool {
        self.admitted.metering.is_some()
    }

    /// The response headers arrived: the status and how to read usage.
    pub fn on_response_headers(&mut self, headers: &[Header]) {
        if self.admitted.metering.is_none() {
            return;
        }
        let header = |wanted: &str| {
            headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
                .map(|(_, value)| value.as_slice())
        };
        let status = header(":status").and_then(|value| core::str::from_utf8(value).ok());
        self.response = Some(ResponseMeter::new(
            status,
            header("content-type"),
            header("content-encoding"),
        ));
    }

    /// Whether response body chunks must be handed over (otherwise only their size counts).
    pub fn reads_response_body(&self) -> bool {
        self.response
            .as_ref()
            .is_some_and(ResponseMeter::reads_body)
    }

    /// A response body chunk of `size` bytes passed (`bytes` when
    /// [`Watch::reads_response_body`]); `end` when it was the last.
    pub fn on_response_body(&mut self, size: usize, bytes: Option<&[u8]>, end: bool) {
        if let Some(response) = self.response.as_mut() {
            response.chunk(size, bytes);
            if end {
                response.end();
            }
        }
    }

    /// The stream is over (completed, cut off, or abandoned by the client): the reservation is
    /// released and the cost charged. Runs once; later calls do nothing.
    pub fn settle<'a>(&mut self, gate: &Gate<'a>, ledger: &mut dyn Ledger) -> Effects<'a> {
        let mut effects = Effects::default();
        let Some(metering) = self.admitted.metering else {
            return effects;
        };
        if self.settled {
            return effects;
        }
        self.settled = true;
        let Some((_, parties)) = gate.parties(&self.ticket) else {
            return effects;
        };
        let charge = bill(&gate.settings.metering, &metering, self.response.as_ref());
        match charge.reason {
            ChargeReason::MissingUsage => effects.count(Count::UsageMissing),
            ChargeReason::InvalidUsage => effects.count(Count::UsageInvalid),
            ChargeReason::Unreadable => effects.count(Count::UsageUnreadable),
            ChargeReason::Reported | ChargeReason::UpstreamFailed | ChargeReason::NoContent => {}
        }
        if !self.response.as_ref().is_some_and(|r| r.complete) {
            effects.count(Count::Incomplete);
        }
        let holds = self.admitted.holds;
        let mut settled = settle_holds(
            ledger,
            parties,
            &holds,
            charge.cost_microusd,
            charge.used_tokens(),
        );
        if let (Ok(()), Some(limits)) = (settled, parties.key.rate_limits) {
            if limits.tokens_per_minute.is_some() && holds.rate_taken {
                let used = charge.used_tokens();
                settled = ledger.update_rate(
                    &rate_entry(&parties.key.id),
                    &mut |state: &mut RateState| {
                        state.settle_tokens(&limits, holds.tokens_taken, used);
                        true
                    },
                );
            }
        }
        if let Err(error) = settled {
            effects.count(Count::SettleFailure);
            effects.log(
                Level::Error,
                format!(
                    "keyward metering: cannot settle a request ({}); its reservation stays held",
                    error.description()
                ),
            );
        }
        effects.count(Count::SettledMicrousd(charge.cost_microusd));
        if gate.reports_usage {
            effects.usage = Some(UsageRecord {
                key_id: &parties.key.id,
                project: parties.project.map(|project| project.id.as_str()),
                usage: charge.usage(),
                windows: holds.windows.counted,
                provider_key: self.ticket.provider_key,
            });
        }
        effects
    }
}
