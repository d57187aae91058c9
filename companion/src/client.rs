//! The CLI's HTTP client for a running control plane (`--server URL`, `--control-plane URL`), on
//! ureq: http and https (rustls; the web PKI roots, or the CA certificates of `--ca-file` /
//! `KEYWARD_CA_FILE`), with timeouts and a size bound on what it reads.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

use crate::error::{Error, ErrorBody};
use crate::upstream_tls::is_loopback_host;

/// A whole snapshot of a million keys is a few hundred megabytes; nothing larger is read.
const MAX_BODY_BYTES: u64 = 1 << 30;
const TIMEOUT: Duration = Duration::from_secs(30);

/// A control plane at a base URL (`http://127.0.0.1:7070`, `https://keyward.example`).
pub struct ControlPlane {
    agent: ureq::Agent,
    base: String,
}

/// Whether a bearer token (and what a call carries: a provider key, a minted API key in the
/// answer) may travel to `base`: over https, or over plain http only to this machine. Anything
/// else would hand the token to whoever sits on the network path.
fn carries_secrets_safely(base: &str) -> bool {
    let Some(rest) = base.strip_prefix("http://") else {
        return base.starts_with("https://");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    // userinfo@host:port; an IPv6 host sits in brackets.
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    is_loopback_host(host)
}

fn insecure(base: &str) -> Error {
    Error::invalid(
        "insecure_control_plane_url",
        format!(
            "{base}: a token is sent only over https:// (plain http:// only to 127.0.0.1, ::1 or \
             localhost); give the control plane's https URL (and --ca-file for a private CA)"
        ),
    )
}

fn unreachable(message: String) -> Error {
    Error::invalid("unreachable_control_plane", message)
}

/// The CA certificates in a PEM file, for a control plane whose certificate a private CA signed.
fn roots(ca_file: &Path) -> Result<RootCerts, Error> {
    let pem = std::fs::read(ca_file).map_err(|error| {
        Error::invalid(
            "unreadable_file",
            format!("cannot read the CA file {}: {error}", ca_file.display()),
        )
    })?;
    let certificates = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(certificate)) => Some(Ok(certificate)),
            Ok(_) => None,
            Err(error) => Some(Err(error)),
        })
        .collect::<Result<Vec<Certificate<'static>>, _>>()
        .map_err(|error| {
            Error::invalid(
                "invalid_ca_file",
                format!("{}: not PEM certificates: {error}", ca_file.display()),
            )
        })?;
    if certificates.is_empty() {
        return Err(Error::invalid(
            "invalid_ca_file",
            format!("{}: no certificate in it", ca_file.display()),
        ));
    }
    Ok(RootCerts::new_with_certs(&certificates))
}

impl ControlPlane {
    /// A control plane at `base`; https is verified against `KEYWARD_CA_FILE` when set.
    pub fn new(base: &str) -> Result<ControlPlane, Error> {
        let ca_file = std::env::var_os("KEYWARD_CA_FILE").map(std::path::PathBuf::from);
        ControlPlane::with_ca(base, ca_file.as_deref())
    }

    /// A control plane at `base`, its https certificate verified against `ca_file` (PEM) when
    /// given, else against the web PKI.
    pub fn with_ca(base: &str, ca_file: Option<&Path>) -> Result<ControlPlane, Error> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::invalid(
                "invalid_url",
                format!("{base:?}: the control plane's URL starts with http:// or https://"),
            ));
        }
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            // Statuses are answers to report, not transport errors.
            .http_status_as_error(false);
        if let Some(ca_file) = ca_file {
            config = config.tls_config(TlsConfig::builder().root_certs(roots(ca_file)?).build());
        }
        let agent = config.build().new_agent();
        Ok(ControlPlane {
            agent,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    /// `GET path`, with the bearer `token` when given; the body of a 200 answer, any other
    /// status is an error.
    pub fn get_bytes(&self, path: &str, token: Option<&str>) -> Result<Vec<u8>, Error> {
        if token.is_some() && !carries_secrets_safely(&self.base) {
            return Err(insecure(&self.base));
        }
        let url = format!("{}{path}", self.base);
        let mut request = self.agent.get(&url).header("accept", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let mut response = request
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

impl ControlPlane {
    /// One admin API call: `method path` with the bearer `token` and an optional JSON body. A
    /// 2xx answer is parsed as `T`; an error answer becomes an error with the server's status,
    /// code and message.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Error> {
        if !carries_secrets_safely(&self.base) {
            return Err(insecure(&self.base));
        }
        let url = format!("{}{path}", self.base);
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json");
        let sent = match body {
            Some(body) => {
                // Wiped once sent: a body may carry a secret (a provider key).
                let json = zeroize::Zeroizing::new(serde_json::to_vec(body)?);
                let request = request
                    .header("content-type", "application/json")
                    .body(json.as_slice())
                    .map_err(|error| Error::internal(format!("{method} {url}: {error}")))?;
                self.agent.run(request)
            }
            None => {
                let request = request
                    .body(())
                    .map_err(|error| Error::internal(format!("{method} {url}: {error}")))?;
                self.agent.run(request)
            }
        };
        let mut response = sent.map_err(|error| unreachable(format!("{method} {url}: {error}")))?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_vec()
            .map_err(|error| {
                unreachable(format!("{method} {url}: cannot read the answer: {error}"))
            })?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|error| {
                Error::internal(format!(
                    "{method} {url}: an answer keyward cannot read: {error}"
                ))
            });
        }
        let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(ErrorBody { error }) => format!("{} ({})", error.message, error.code),
            Err(_) => format!("{method} {url} answered {status}"),
        };
        Err(Error::new(status, "control_plane_error", message))
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
            plane.get_bytes("/v1/snapshot", None).unwrap_err().code,
            "unreachable_control_plane"
        );
    }

    #[test]
    fn tokens_go_over_https_or_to_this_machine_only() {
        for base in [
            "https://keyward.example",
            "https://10.0.0.5:7070",
            "http://127.0.0.1:7070",
            "http://127.9.9.9",
            "http://localhost:7070",
            "http://LOCALHOST",
            "http://[::1]:7070",
            "http://user@127.0.0.1:7070/x",
        ] {
            assert!(carries_secrets_safely(base), "{base}");
        }
        for base in [
            "http://keyward.example",
            "http://10.0.0.5:7070",
            "http://[2001:db8::1]:7070",
            "http://127.0.0.1.evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1@evil.example",
            "http://evil.example/127.0.0.1",
            "http://",
        ] {
            assert!(!carries_secrets_safely(base), "{base}");
        }
        // Refused before anything is sent (there is no such host), with a clear code.
        let plane = ControlPlane::new("http://keyward.invalid:9").unwrap();
        assert_eq!(
            plane.get_bytes("/v1/snapshot", Some("t")).unwrap_err().code,
            "insecure_control_plane_url"
        );
        let call = plane.call::<serde_json::Value>("GET", "/v1/keys", "t", None::<&()>);
        assert_eq!(call.unwrap_err().code, "insecure_control_plane_url");
    }
}
