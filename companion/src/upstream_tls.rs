//! How the configurations `keyward render` writes reach what they call across a network: the
//! control plane (policy sync, usage reports) and the provider. TLS is verified by default:
//! the peer's certificate must chain to a trusted CA (the system bundle unless told otherwise)
//! and name the host that was asked for (SAN match). Skipping verification takes an explicit
//! flag, is warned about when rendering, and is flagged by `keyward audit --envoy-config`.

use serde_json::{json, Value};

use crate::error::Error;

/// Where Debian, Ubuntu and the Envoy and Istio proxy images keep the system's trusted CAs.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
const UPSTREAM_TLS_CONTEXT: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";

/// The TLS of one rendered hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// Plain HTTP: for loopback, or inside a mesh that encrypts the hop itself.
    Plaintext,
    /// TLS; the peer's certificate chains to `ca_file` (a path as Envoy sees it) and names the
    /// host.
    Verified { ca_file: String },
    /// TLS without any check of the peer: anyone on the path can pose as it.
    InsecureSkipVerify,
}

impl Tls {
    /// The TLS that `--<flag>-tls`, `--<flag>-ca` and `--<flag>-insecure-skip-verify` ask for.
    pub fn from_flags(
        flag: &str,
        tls: bool,
        ca_file: Option<String>,
        insecure: bool,
    ) -> Result<Tls, Error> {
        match (tls, ca_file, insecure) {
            (false, None, false) => Ok(Tls::Plaintext),
            (false, _, _) => Err(Error::invalid(
                "invalid_tls",
                format!(
                    "--{flag}-ca and --{flag}-insecure-skip-verify go with TLS (--{flag}-tls or \
                     an https:// address)"
                ),
            )),
            (true, Some(_), true) => Err(Error::invalid(
                "invalid_tls",
                format!("--{flag}-ca and --{flag}-insecure-skip-verify exclude each other"),
            )),
            (true, None, true) => Ok(Tls::InsecureSkipVerify),
            (true, ca_file, false) => Ok(Tls::Verified {
                ca_file: ca_file.unwrap_or_else(|| SYSTEM_CA_BUNDLE.to_owned()),
            }),
        }
    }

    pub fn is_tls(&self) -> bool {
        !matches!(self, Tls::Plaintext)
    }

    /// The Envoy cluster's `transport_socket` for a peer reached as `host`; `None` in plain text.
    pub fn envoy_transport_socket(&self, host: &str) -> Option<Value> {
        let is_ip = host.parse::<std::net::IpAddr>().is_ok();
        let mut context = serde_json::Map::new();
        context.insert("@type".into(), json!(UPSTREAM_TLS_CONTEXT));
        if !is_ip {
            // SNI names a host; an IP address is no server name (RFC 6066).
            context.insert("sni".into(), json!(host));
        }
        match self {
            Tls::Plaintext => return None,
            Tls::Verified { ca_file } => {
                context.insert(
                    "common_tls_context".into(),
                    json!({"validation_context": {
                        "trusted_ca": {"filename": ca_file},
                        "match_typed_subject_alt_names": [{
                            "san_type": if is_ip { "IP_ADDRESS" } else { "DNS" },
                            "matcher": {"exact": host}
                        }]
                    }}),
                );
            }
            // No validation_context: Envoy then accepts any certificate.
            Tls::InsecureSkipVerify => {}
        }
        Some(json!({"name": "envoy.transport_sockets.tls", "typed_config": context}))
    }

    /// An Istio `DestinationRule` `trafficPolicy.tls` originating this TLS to `host`.
    pub fn istio_client_tls(&self, host: &str) -> Option<Value> {
        match self {
            Tls::Plaintext => None,
            Tls::Verified { ca_file } => Some(json!({
                "mode": "SIMPLE",
                "sni": host,
                "caCertificates": ca_file,
                "subjectAltNames": [host]
            })),
            Tls::InsecureSkipVerify => Some(json!({
                "mode": "SIMPLE",
                "sni": host,
                "insecureSkipVerify": true
            })),
        }
    }
}

/// Whether `host` (a name or an IP address, without brackets or port) is this machine: a hop to
/// it never crosses a network.
pub fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The stderr warnings a rendering deserves for the TLS of `what` (the control plane, the
/// provider) at `host`.
pub fn warnings(what: &str, host: &str, tls: &Tls) -> Option<String> {
    let loopback = is_loopback_host(host);
    match tls {
        Tls::InsecureSkipVerify => Some(format!(
            "warning: TLS to {what} ({host}) is NOT verified (--*-insecure-skip-verify): whoever \
             can reach the network path can pose as it; keyward audit --envoy-config flags this"
        )),
        Tls::Plaintext if !loopback => Some(format!(
            "warning: {what} ({host}) is reached over plain HTTP: use TLS (https:// or --*-tls) \
             unless a mesh encrypts this hop"
        )),
        _ => None,
    }
}

/// An Envoy bootstrap's findings about its clusters' TLS: `(code, message)` per cluster that
/// speaks TLS without verifying its peer (`tls_not_verified`), or speaks plain text to a host
/// that is not loopback (`plaintext_cluster`).
pub fn bootstrap_findings(bootstrap: &Value) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    let clusters = bootstrap
        .pointer("/static_resources/clusters")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for cluster in &clusters {
        let name = cluster.get("name").and_then(Value::as_str).unwrap_or("?");
        let socket = cluster.pointer("/transport_socket/typed_config");
        let hosts: Vec<&str> = cluster
            .pointer("/load_assignment/endpoints")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|group| group.get("lb_endpoints").and_then(Value::as_array))
            .flatten()
            .filter_map(|endpoint| {
                endpoint
                    .pointer("/endpoint/address/socket_address/address")
                    .and_then(Value::as_str)
            })
            .collect();
        match socket {
            Some(context) => {
                let validation = context.pointer("/common_tls_context/validation_context");
                let verifies = validation.is_some_and(|validation| {
                    validation.get("trusted_ca").is_some()
                        && validation.get("trust_chain_verification")
                            != Some(&json!("ACCEPT_UNTRUSTED"))
                });
                if !verifies {
                    found.push((
                        "tls_not_verified",
                        format!(
                            "cluster {name}: TLS without a trusted CA (validation_context.\
                             trusted_ca): any certificate is accepted, so anyone on the path can \
                             pose as {}",
                            hosts.join(", ")
                        ),
                    ));
                }
            }
            None => {
                let remote: Vec<&str> = hosts
                    .iter()
                    .copied()
                    .filter(|host| warnings("", host, &Tls::Plaintext).is_some())
                    .collect();
                if !remote.is_empty() {
                    found.push((
                        "plaintext_cluster",
                        format!(
                            "cluster {name}: plain HTTP to {} (not loopback): tokens and \
                             reports travel in the clear unless a mesh encrypts this hop",
                            remote.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_verified_tls_by_default_and_insecure_only_on_request() {
        assert_eq!(
            Tls::from_flags("upstream", false, None, false).unwrap(),
            Tls::Plaintext
        );
        assert_eq!(
            Tls::from_flags("upstream", true, None, false).unwrap(),
            Tls::Verified {
                ca_file: SYSTEM_CA_BUNDLE.into()
            }
        );
        assert_eq!(
            Tls::from_flags("upstream", true, Some("/ca.pem".into()), false).unwrap(),
            Tls::Verified {
                ca_file: "/ca.pem".into()
            }
        );
        assert_eq!(
            Tls::from_flags("upstream", true, None, true).unwrap(),
            Tls::InsecureSkipVerify
        );
        assert!(Tls::from_flags("upstream", true, Some("/ca.pem".into()), true).is_err());
        assert!(Tls::from_flags("upstream", false, None, true).is_err());
    }

    #[test]
    fn verified_tls_checks_the_ca_and_the_san_and_audit_sees_the_difference() {
        let verified = Tls::Verified {
            ca_file: SYSTEM_CA_BUNDLE.into(),
        };
        let socket = verified.envoy_transport_socket("api.example.com").unwrap();
        let context = &socket["typed_config"];
        assert_eq!(context["sni"], "api.example.com");
        let validation = &context["common_tls_context"]["validation_context"];
        assert_eq!(validation["trusted_ca"]["filename"], SYSTEM_CA_BUNDLE);
        assert_eq!(
            validation["match_typed_subject_alt_names"][0],
            json!({"san_type": "DNS", "matcher": {"exact": "api.example.com"}})
        );
        let by_ip = verified.envoy_transport_socket("10.0.0.7").unwrap();
        assert!(by_ip["typed_config"].get("sni").is_none());
        assert_eq!(
            by_ip["typed_config"]["common_tls_context"]["validation_context"]
                ["match_typed_subject_alt_names"][0]["san_type"],
            "IP_ADDRESS"
        );
        let insecure = Tls::InsecureSkipVerify
            .envoy_transport_socket("api.example.com")
            .unwrap();
        assert!(insecure["typed_config"].get("common_tls_context").is_none());

        let cluster = |name: &str, host: &str, socket: Option<Value>| {
            let mut cluster = json!({"name": name, "load_assignment": {"endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": host, "port_value": 443}}}}]}]}});
            if let Some(socket) = socket {
                cluster["transport_socket"] = socket;
            }
            cluster
        };
        let bootstrap = json!({"static_resources": {"clusters": [
            cluster("good", "api.example.com", Some(socket.clone())),
            cluster("bad", "api.example.com", Some(insecure)),
            cluster("plain", "api.example.com", None),
            cluster("local", "127.0.0.1", None),
        ]}});
        let found = bootstrap_findings(&bootstrap);
        let codes: Vec<&str> = found.iter().map(|(code, _)| *code).collect();
        assert_eq!(codes, ["tls_not_verified", "plaintext_cluster"]);
        assert!(found[0].1.contains("cluster bad"));
        assert!(found[1].1.contains("cluster plain"));
    }

    #[test]
    fn istio_originates_verified_tls_with_a_destination_rule() {
        let tls = Tls::Verified {
            ca_file: SYSTEM_CA_BUNDLE.into(),
        }
        .istio_client_tls("cp.example.com")
        .unwrap();
        assert_eq!(tls["mode"], "SIMPLE");
        assert_eq!(tls["subjectAltNames"], json!(["cp.example.com"]));
        assert_eq!(tls["caCertificates"], SYSTEM_CA_BUNDLE);
        assert!(Tls::Plaintext.istio_client_tls("x").is_none());
        assert_eq!(
            Tls::InsecureSkipVerify.istio_client_tls("x").unwrap()["insecureSkipVerify"],
            true
        );
        assert!(warnings("the provider", "api.example.com", &Tls::Plaintext).is_some());
        assert!(warnings("the provider", "127.0.0.1", &Tls::Plaintext).is_none());
    }
}
