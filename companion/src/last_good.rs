//! The last-known-good snapshot file: a signed envelope kept on the data plane's disk so that an
//! Envoy started while the control plane is down enforces the last policy instead of refusing
//! every request.
//!
//! Proxy-wasm modules cannot read files, so Envoy serves the file to its own filter: `render
//! envoy --last-good-file` adds a loopback listener whose route answers with the file's bytes
//! (`direct_response`, read once when Envoy loads its configuration) only to a request bearing
//! the data-plane token (the same one the control plane asks for its snapshots), a cluster that
//! reaches it, and `sync.last_good` naming that cluster. The filter asks it only after a failed
//! poll while it has published nothing, and verifies the envelope exactly like a push from the
//! control plane. The native build uses the same path.
//!
//! Why not an internal listener (no socket at all): the poller runs on Envoy's main thread, and
//! Envoy's internal listeners are reachable from worker threads only (checked here: every call
//! from the sync singleton failed to connect).
//!
//! `keyward snapshot fetch` keeps the file: it fetches the control plane's envelope, verifies it,
//! never replaces a newer file with an older snapshot, and writes it atomically, 0600.

use std::fs;
use std::path::Path;

use keyward_engine::signature::PublicKey;
use keyward_engine::signed_snapshot::verify_snapshot;
use keyward_engine::snapshot::Policy;
use keyward_engine::sync::SnapshotStamp;
use serde_json::{json, Value};

use crate::client::ControlPlane;
use crate::error::Error;
use crate::secrets;

pub const LAST_GOOD_CLUSTER: &str = "keyward_last_good";
const LAST_GOOD_LISTENER: &str = "keyward_last_good";
/// The largest file Envoy is told to serve. Envoy refuses its whole configuration at start when
/// the file is larger, so `snapshot fetch` refuses to write one that is.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// The `sync.last_good` block of the filter's configuration.
pub fn sync_source() -> Value {
    json!({"cluster": LAST_GOOD_CLUSTER})
}

/// The loopback listener at `address` answering with the file's bytes a request that bears
/// `token` (any request when there is none), and 404 to anything else. Envoy refuses to start
/// when the file is missing: installations create it (empty is fine: "none yet").
pub fn listener(
    file: &str,
    address: Value,
    token: Option<&str>,
    connection_manager_type: &str,
) -> Value {
    let mut route_match = json!({"prefix": "/"});
    if let (Some(token), Some(fields)) = (token, route_match.as_object_mut()) {
        fields.insert(
            "headers".into(),
            json!([{
                "name": "authorization",
                "string_match": {"exact": format!("Bearer {token}")}
            }]),
        );
    }
    let served = json!({
        "match": route_match,
        "direct_response": {"status": 200, "body": {"filename": file}},
        "response_headers_to_add": [{
            "header": {"key": "content-type", "value": "application/json"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"
        }]
    });
    let refused = json!({"match": {"prefix": "/"}, "direct_response": {"status": 404}});
    json!({
        "name": LAST_GOOD_LISTENER,
        "address": address,
        "filter_chains": [{
            "filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": connection_manager_type,
                    "stat_prefix": "keyward_last_good",
                    "route_config": {
                        "name": "keyward_last_good",
                        "max_direct_response_body_size_bytes": MAX_FILE_BYTES,
                        "virtual_hosts": [{
                            "name": "last_good",
                            "domains": ["*"],
                            "routes": [served, refused]
                        }]
                    },
                    "http_filters": [{
                        "name": "envoy.filters.http.router",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                        }
                    }]
                }
            }]
        }]
    })
}

/// The cluster that reaches the listener at `address`.
pub fn cluster(address: Value) -> Value {
    json!({
        "name": LAST_GOOD_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": LAST_GOOD_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]
        }
    })
}

fn stamp(policy: &Policy) -> SnapshotStamp {
    SnapshotStamp {
        version: policy.version,
        issued_at: policy.issued_at,
    }
}

/// What [`fetch`] did.
pub struct Fetched {
    pub policy: Policy,
    /// False when the file already held this very snapshot.
    pub written: bool,
}

/// Fetches the control plane's signed envelope with the data-plane `token`, verifies it with
/// `keys` at `now` (Unix seconds), and writes it to `out` unless `out` holds a newer valid
/// snapshot already (a control plane restored from an old backup must not roll the file back).
pub fn fetch(
    control_plane: &ControlPlane,
    token: Option<&str>,
    keys: &[PublicKey],
    out: &Path,
    now: u64,
) -> Result<Fetched, Error> {
    let bytes = control_plane.get_bytes("/v1/snapshot", token)?;
    let policy = verify_snapshot(&bytes, keys, now).map_err(|rejected| {
        Error::invalid(
            "invalid_snapshot",
            format!(
                "the control plane's snapshot does not verify ({}): {rejected}; {} is left as it was",
                rejected.reason(),
                out.display()
            ),
        )
    })?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::invalid(
            "snapshot_too_large",
            format!(
                "the snapshot is {} bytes; Envoy serves at most {MAX_FILE_BYTES} from the \
                 last-known-good file (use the chunked layout's own resilience instead)",
                bytes.len()
            ),
        ));
    }
    // What the file holds now counts only if it still verifies: a tampered, foreign or expired
    // file is replaced.
    let current = fs::read(out)
        .ok()
        .and_then(|existing| verify_snapshot(&existing, keys, now).ok());
    if let Some(current) = current {
        if stamp(&current) == stamp(&policy) {
            return Ok(Fetched {
                policy,
                written: false,
            });
        }
        if !stamp(&policy).replaces(Some(stamp(&current))) {
            return Err(Error::invalid(
                "older_snapshot",
                format!(
                    "the control plane served version {} (issued at {}), older than the \
                     version {} (issued at {}) in {}; the file is kept. A control plane restored \
                     from an older backup? Remove the file to accept the older policy",
                    policy.version,
                    policy.issued_at,
                    current.version,
                    current.issued_at,
                    out.display()
                ),
            ));
        }
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::invalid(
            "invalid_snapshot",
            "the snapshot is not UTF-8 text".to_owned(),
        )
    })?;
    secrets::write_private_file_atomically(out, &text)?;
    Ok(Fetched {
        policy,
        written: true,
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use keyward_engine::signature::SigningKey;
    use keyward_engine::signed_snapshot::sign_snapshot;

    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_seed("ops-1", &[7; 32]).unwrap()
    }

    fn envelope(version: u64, issued_at: u64) -> String {
        let snapshot = format!(
            r#"{{"version": {version}, "issued_at": {issued_at}, "expires_at": {}, "projects": [], "keys": []}}"#,
            issued_at + 1000
        );
        sign_snapshot(&snapshot, &key()).unwrap()
    }

    /// A control plane that answers one request with `body`, recording the request.
    fn serve_once(body: String) -> (ControlPlane, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let thread = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = stream.read(&mut buffer).unwrap();
                if read == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..read]);
            }
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(answer.as_bytes()).unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        let plane = ControlPlane::new(&format!("http://127.0.0.1:{port}")).unwrap();
        (plane, thread)
    }

    fn fetch_served(body: String, out: &Path) -> Result<Fetched, Error> {
        let (plane, server) = serve_once(body);
        let fetched = fetch(&plane, Some("kwdp_t"), &[key().public_key()], out, 500);
        let request = server.join().unwrap();
        assert!(
            request.contains("authorization: Bearer kwdp_t"),
            "{request}"
        );
        assert!(request.starts_with("GET /v1/snapshot "), "{request}");
        fetched
    }

    #[test]
    fn fetch_verifies_never_rolls_back_and_writes_0600() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("last-good.json");
        let first = fetch_served(envelope(2, 100), &out).unwrap();
        assert!(first.written);
        assert_eq!(fs::read_to_string(&out).unwrap(), envelope(2, 100));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&out).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(!fetch_served(envelope(2, 100), &out).unwrap().written);
        // Older: refused, the file kept.
        let older = fetch_served(envelope(1, 400), &out).err().unwrap();
        assert_eq!(older.code, "older_snapshot");
        assert_eq!(fs::read_to_string(&out).unwrap(), envelope(2, 100));
        // A tampered answer: refused, the file kept.
        let tampered = envelope(3, 100).replace("\"version\": 3", "\"version\": 4");
        assert_ne!(tampered, envelope(3, 100));
        let refused = fetch_served(tampered, &out).err().unwrap();
        assert_eq!(refused.code, "invalid_snapshot");
        assert_eq!(fs::read_to_string(&out).unwrap(), envelope(2, 100));
        // Re-issued later, same version: replaces.
        assert!(fetch_served(envelope(2, 200), &out).unwrap().written);
        // A file that no longer verifies (tampered on disk) is replaced by any good snapshot.
        fs::write(
            &out,
            envelope(9, 100).replace("\"version\": 9", "\"version\": 8"),
        )
        .unwrap();
        assert!(fetch_served(envelope(3, 100), &out).unwrap().written);
        assert_eq!(fs::read_to_string(&out).unwrap(), envelope(3, 100));
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
