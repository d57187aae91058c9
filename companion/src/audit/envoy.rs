//! `keyward audit --envoy-config FILE`: the risks of an Envoy bootstrap around keyward (what
//! `keyward render envoy` writes, edited or not): TLS that does not verify its peer, plain HTTP
//! across a network, and a shared signing secret where only public keys belong.

use std::process::ExitCode;

use serde_json::{json, Value};

use super::Severity;
use crate::error::Error;
use crate::upstream_tls::bootstrap_findings;

/// One finding: severity, code, message.
pub type EnvoyFinding = (Severity, &'static str, String);

/// The findings of a bootstrap document.
pub fn findings(bootstrap: &Value) -> Vec<EnvoyFinding> {
    let mut found: Vec<EnvoyFinding> = bootstrap_findings(bootstrap)
        .into_iter()
        .map(|(code, message)| {
            let severity = if code == "tls_not_verified" {
                Severity::High
            } else {
                Severity::Medium
            };
            (severity, code, message)
        })
        .collect();
    // The Wasm plugins' configurations are strings inside the bootstrap: look at the text.
    let text = bootstrap.to_string();
    if text.contains("secret_base64") || text.contains("signing_keys") {
        found.push((
            Severity::High,
            "shared_signing_secret",
            "a plugin configuration carries a shared signing secret (sync.signing_keys): \
             whoever reads this configuration or Envoy's /config_dump could sign policies; use \
             the control plane's public keys (sync.public_keys)"
                .to_owned(),
        ));
    }
    found
}

/// Reads, audits and prints; exit 2 when a finding reaches `fail_on`.
pub fn run(path: &std::path::Path, fail_on: Severity, json: bool) -> Result<ExitCode, Error> {
    let bytes = std::fs::read(path).map_err(|error| {
        Error::invalid(
            "unreadable_file",
            format!(
                "cannot read the Envoy configuration {}: {error}",
                path.display()
            ),
        )
    })?;
    let bootstrap: Value = serde_json::from_slice(&bytes).map_err(|error| {
        Error::invalid(
            "invalid_envoy_config",
            format!(
                "{}: not JSON ({error}); `keyward render envoy` writes JSON",
                path.display()
            ),
        )
    })?;
    let found = findings(&bootstrap);
    if json {
        let list: Vec<Value> = found
            .iter()
            .map(|(severity, code, message)| {
                json!({"severity": severity, "code": code, "subject": "envoy", "message": message})
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"envoy_findings": list}))?
        );
    } else if found.is_empty() {
        println!("envoy configuration {}: no findings", path.display());
    } else {
        for (severity, code, message) in &found {
            println!(
                "{:<6}  {code}  {message}",
                format!("{severity:?}").to_lowercase()
            );
        }
    }
    let failing = found
        .iter()
        .filter(|(severity, ..)| *severity >= fail_on)
        .count();
    Ok(if failing > 0 {
        eprintln!("keyward: {failing} Envoy finding(s) at or above {fail_on:?}");
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unverified_upstream_and_a_shared_secret_are_high() {
        let bootstrap = json!({"static_resources": {"clusters": [{
            "name": "upstream",
            "load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {"address":
                {"socket_address": {"address": "api.example.com", "port_value": 443}}}}]}]},
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": {"sni": "api.example.com"}}
        }]}, "x": "{\"sync\":{\"signing_keys\":[{\"id\":\"a\",\"secret_base64\":\"QUJD\"}]}}"});
        let found = findings(&bootstrap);
        let codes: Vec<&str> = found.iter().map(|(_, code, _)| *code).collect();
        assert_eq!(codes, ["tls_not_verified", "shared_signing_secret"]);
        assert!(found
            .iter()
            .all(|(severity, ..)| *severity == Severity::High));
        assert!(findings(&json!({"static_resources": {"clusters": []}})).is_empty());
    }
}
