//! `keyward serve --tls-cert F --tls-key F`: HTTPS with rustls (ring), TLS 1.2 and 1.3, HTTP/1.1.

use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsFiles;
use crate::error::Error;
use crate::secrets;

fn invalid(message: String) -> Error {
    Error::invalid("invalid_tls", message)
}

/// Reads the certificate chain and the private key, and checks that they belong together.
pub fn server_config(files: &TlsFiles) -> Result<RustlsConfig, Error> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certificates| certificates.collect())
        .map_err(|error| {
            invalid(format!(
                "--tls-cert {}: not a PEM certificate chain: {error}",
                files.cert.display()
            ))
        })?;
    if chain.is_empty() {
        return Err(invalid(format!(
            "--tls-cert {}: no certificate in it",
            files.cert.display()
        )));
    }
    // The private key is a secret: warn when others can read its file.
    let key_pem = secrets::read_secret_file(&files.key, "TLS private key")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|error| {
        invalid(format!(
            "--tls-key {}: not a PEM private key: {error}",
            files.key.display()
        ))
    })?;
    // ring rather than aws-lc-rs (rustls's default, with post-quantum key exchange): ring builds
    // with a plain C compiler, also for the static musl binary of the container image.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid(format!("TLS configuration: {error}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| {
            invalid(format!(
                "--tls-cert and --tls-key do not make a usable pair: {error}"
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matching_pair_loads_and_a_mismatched_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let one = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let two = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let files = TlsFiles {
            cert: write("one.pem", &one.cert.pem()),
            key: write("one.key", &one.signing_key.serialize_pem()),
        };
        assert!(server_config(&files).is_ok());
        let mismatched = TlsFiles {
            cert: write("one.pem", &one.cert.pem()),
            key: write("two.key", &two.signing_key.serialize_pem()),
        };
        let error = server_config(&mismatched).err().unwrap();
        assert_eq!(error.code, "invalid_tls");
        let garbage = TlsFiles {
            cert: write("garbage.pem", "not a certificate"),
            key: write("one.key", &one.signing_key.serialize_pem()),
        };
        assert!(server_config(&garbage).is_err());
    }
}
