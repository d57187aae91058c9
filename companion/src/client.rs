//! The CLI's HTTP client for a running control plane (`--control-plane URL`), on ureq: http and
//! https (rustls), with timeouts and a size bound on what it reads.

use std::time::Duration;

use crate::error::Error;

/// A whole snapshot of a million keys is a few hundred megabytes; nothing larger is read.
const MAX_BODY_BYTES: u64 = 1 << 30;
const TIMEOUT: Duration = Duration::from_secs(30);

/// A control plane at a base URL (`http://127.0.0.1:7070`, `https://keyward.example`).
pub struct ControlPlane {
    agent: ureq::Agent,
    base: String,
}

fn unreachable(message: String) -> Error {
    Error::invalid("unreachable_control_plane", message)
}

impl ControlPlane {
    pub fn new(base: &str) -> Result<ControlPlane, Error> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::invalid(
                "invalid_url",
                format!("{base:?}: the control plane's URL starts with http:// or https://"),
            ));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            // Statuses are answers to report, not transport errors.
            .http_status_as_error(false)
            .build()
            .new_agent();
        Ok(ControlPlane {
            agent,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// `GET path`; the body of a 200 answer, any other status is an error.
    pub fn get_bytes(&self, path: &str) -> Result<Vec<u8>, Error> {
        let url = format!("{}{path}", self.base);
        let mut response = self
            .agent
            .get(&url)
            .header("accept", "application/json")
            .call()
            .map_err(|error| unreachable(format!("GET {url}: {error}")))?;
        let status = response.status();
        if status != 200 {
            return Err(unreachable(format!(
                "GET {url} answered {status}, expected 200"
            )));
        }
        response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_vec()
            .map_err(|error| unreachable(format!("GET {url}: cannot read the answer: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_are_taken() {
        assert_eq!(
            ControlPlane::new("ftp://x").err().map(|e| e.code),
            Some("invalid_url")
        );
        assert_eq!(
            ControlPlane::new("127.0.0.1:7070").err().map(|e| e.code),
            Some("invalid_url")
        );
        let plane = ControlPlane::new("http://127.0.0.1:9/").unwrap();
        assert_eq!(plane.base, "http://127.0.0.1:9");
        // Port 9 (discard) has no listener here: a clear error, not a panic.
        assert_eq!(
            plane.get_bytes("/v1/snapshot").unwrap_err().code,
            "unreachable_control_plane"
        );
    }
}
