//! Budget alerts to a webhook: every second, the alerts due are posted (Slack-compatible JSON:
//! `text`, plus the alert under `keyward`), each signed so the receiver can check it came from
//! this control plane: `x-keyward-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">` with the webhook secret. A failed delivery is retried with a growing pause;
//! each alert is delivered once per window and level (the store records it before posting).

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{with_store, Shared};
use crate::store::AlertView;
use crate::units::now;

pub const SIGNATURE_HEADER: &str = "x-keyward-signature";
const TIMEOUT: Duration = Duration::from_secs(10);
/// Alerts posted per round, so one round never runs long.
const PER_ROUND: u64 = 50;

/// Where alerts go, and the secret their signatures are made with.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, not even in a debug dump.
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The signature header's value for `body` sent at `timestamp`: the hex HMAC-SHA256 of
/// `"<timestamp>.<body>"`, as Stripe-style receivers check it.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail; an empty MAC would never verify.
    let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).map(|mut mac| {
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        hex::encode(mac.finalize().into_bytes())
    });
    format!("t={timestamp},v1={}", mac.unwrap_or_default())
}

/// Posts one alert; `Err` says why it was not accepted (kept for the next attempt).
fn post(agent: &ureq::Agent, target: &WebhookTarget, alert: &AlertView) -> Result<(), String> {
    let body = serde_json::to_vec(&alert.payload).map_err(|error| error.to_string())?;
    let timestamp = now();
    let response = agent
        .post(&target.url)
        .header("content-type", "application/json")
        .header(
            SIGNATURE_HEADER,
            &signature(&target.secret, timestamp, &body),
        )
        .header(
            "x-keyward-event-id",
            &format!(
                "{}:{}:{}:{}",
                alert.owner.kind(),
                alert.owner.id(),
                alert.window,
                alert.level
            ),
        )
        .send(&body[..]);
    match response {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("the webhook answered {}", response.status())),
        Err(error) => Err(format!("cannot reach the webhook: {error}")),
    }
}

/// Delivers due alerts, once a second, for as long as the server runs.
pub(super) async fn deliver_alerts(state: Shared, target: WebhookTarget) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    let target = Arc::new(target);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticker.tick().await;
        let due = match with_store(&state, |store| store.alerts_due(now(), PER_ROUND)).await {
            Ok(due) => due,
            Err(error) => {
                eprintln!("keyward: reading budget alerts failed: {error}");
                continue;
            }
        };
        for alert in due {
            let (agent, target, sent) = (agent.clone(), Arc::clone(&target), alert.clone());
            let outcome = tokio::task::spawn_blocking(move || post(&agent, &target, &sent))
                .await
                .unwrap_or_else(|error| Err(format!("delivery task failed: {error}")));
            if let Err(error) = &outcome {
                eprintln!(
                    "keyward: budget alert for {} {} not delivered ({error}); will retry",
                    alert.owner.describe(),
                    alert.window
                );
            }
            let recorded = with_store(&state, move |store| {
                store.alert_attempted(&alert, now(), outcome.err().as_deref())
            })
            .await;
            if let Err(error) = recorded {
                eprintln!("keyward: recording a budget alert delivery failed: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_time_and_the_body() {
        let key = b"0123456789abcdef0123456789abcdef";
        let one = signature(key, 100, b"{}");
        assert_eq!(one, signature(key, 100, b"{}"));
        assert_ne!(one, signature(key, 101, b"{}"));
        assert_ne!(one, signature(key, 100, b"{ }"));
        assert_ne!(
            one,
            signature(b"0123456789abcdef0123456789abcdeF", 100, b"{}")
        );
        // What a receiver computes, e.g. Python's
        // hmac.new(key, b"100.{}", "sha256").hexdigest():
        assert_eq!(
            one,
            "t=100,v1=c19c39d5c40b514d5279715ef6082e36146d060b02dd8277390dc7dfca13ae72"
        );
    }
}
