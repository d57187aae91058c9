//! The policy sync's pure parts: its configuration, which snapshot replaces which, the lease
//! that elects one poller among the filter VMs, and the names of the shared-data entries.

use serde::Deserialize;

use crate::field_error::FieldError;
use crate::signature::PublicKey;

/// Shared-data entry holding the last verified signed envelope (all VMs with the same vm_id).
pub const SNAPSHOT_ENTRY: &str = "keyward/snapshot";
/// Small entry that changes whenever the snapshot does: `<version>:<issued_at>`.
pub const SNAPSHOT_STAMP_ENTRY: &str = "keyward/snapshot-stamp";
/// The verified signed manifest of a chunked snapshot; its chunks are in `keyward/chunk/<sha256>`
/// entries (see [`crate::chunked`]).
pub const MANIFEST_ENTRY: &str = "keyward/manifest";
/// The poller lease: `<holder>:<expires_at_ms>`.
pub const LEASE_ENTRY: &str = "keyward/sync-lease";
/// A counter that hands every VM sharing the vm_id its own number (lease holder ids).
pub const INSTANCE_COUNTER_ENTRY: &str = "keyward/instance-counter";

/// Who polls the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Poller {
    /// An Envoy bootstrap singleton (`envoy.bootstrap.wasm`, same vm_id) polls; filters read.
    SyncService,
    /// The filter VMs elect one poller at a time through a lease in shared data (Istio, where
    /// only HTTP filters can be installed).
    Lease,
}

/// How the control plane serves snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// One signed envelope (`/v1/snapshot`): simple, for up to some 100k keys.
    #[default]
    Envelope,
    /// A signed manifest plus content-addressed chunks (`/v1/snapshot/manifest`): millions of
    /// keys, loaded a slice per tick, and only changed chunks fetched again.
    Chunked,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicKeyDoc {
    id: String,
    public_key_base64: String,
}

/// Where the last-known-good signed envelope is fetched from when the control plane cannot be
/// reached before this Envoy published any policy: a cluster of Envoy's own, normally an internal
/// listener that answers with the file `keyward snapshot fetch` keeps (see `keyward render envoy
/// --last-good-file`). Proxy-wasm modules cannot read files; Envoy can serve one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LastGoodDoc {
    cluster: String,
    #[serde(default = "default_last_good_authority")]
    authority: String,
    #[serde(default = "default_last_good_path")]
    path: String,
}

fn default_last_good_authority() -> String {
    "keyward-last-good".to_owned()
}
fn default_last_good_path() -> String {
    "/last-good.json".to_owned()
}

/// The source of the last-known-good snapshot. What it serves is verified exactly like a
/// control plane's answer (signature, expiry, never older than what is published).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastGoodSource {
    pub cluster: String,
    pub authority: String,
    pub path: String,
}

/// The longest data-plane token accepted (keyward's are 49 characters).
const MAX_TOKEN_BYTES: usize = 512;

fn default_authority() -> String {
    "keyward-control-plane".to_owned()
}
fn default_chunk_path() -> String {
    "/v1/snapshot/chunks/".to_owned()
}
fn default_interval_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    2000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SyncDoc {
    cluster: String,
    #[serde(default = "default_authority")]
    authority: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    layout: Layout,
    #[serde(default = "default_chunk_path")]
    chunk_path: String,
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
    #[serde(default)]
    jitter_ms: u64,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    #[serde(default)]
    public_keys: Vec<PublicKeyDoc>,
    /// Refused with its own message: it held shared HMAC secrets, which could sign.
    #[serde(default)]
    signing_keys: Option<serde_json::Value>,
    /// The data-plane token sent to the control plane (`authorization: Bearer`).
    #[serde(default)]
    token: Option<String>,
    /// Fallback for a start while the control plane is down.
    #[serde(default)]
    last_good: Option<LastGoodDoc>,
    poller: Poller,
}

/// A validated sync configuration.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub cluster: String,
    pub authority: String,
    /// The envelope, or with `Layout::Chunked` the manifest.
    pub path: String,
    pub layout: Layout,
    /// Chunks are fetched at `<chunk_path><sha256>`.
    pub chunk_path: String,
    pub interval_ms: u64,
    pub jitter_ms: u64,
    pub timeout_ms: u64,
    /// The control plane's Ed25519 public keys, by id: several while keys rotate.
    pub public_keys: Vec<PublicKey>,
    /// The data-plane token: sent with every snapshot fetch and usage report. It can read
    /// snapshots and report usage, nothing else; it cannot sign.
    pub token: Option<String>,
    /// Where a last-known-good envelope is fetched when the control plane cannot be reached and
    /// nothing is published yet.
    pub last_good: Option<LastGoodSource>,
    pub poller: Poller,
}

impl SyncSettings {
    pub(crate) fn compile(doc: SyncDoc) -> Result<SyncSettings, FieldError> {
        if doc.cluster.is_empty() {
            return Err(FieldError::new("cluster", "must name an Envoy cluster"));
        }
        if doc.authority.is_empty() || doc.authority.contains(char::is_whitespace) {
            return Err(FieldError::new("authority", "must be a host name"));
        }
        let path = doc.path.unwrap_or_else(|| {
            match doc.layout {
                Layout::Envelope => "/v1/snapshot",
                Layout::Chunked => "/v1/snapshot/manifest",
            }
            .to_owned()
        });
        if !path.starts_with('/') {
            return Err(FieldError::new("path", "must start with /"));
        }
        if !doc.chunk_path.starts_with('/') || doc.chunk_path.contains(['?', '#']) {
            return Err(FieldError::new(
                "chunk_path",
                "must start with / and hold no query",
            ));
        }
        if !(100..=3_600_000).contains(&doc.interval_ms) {
            return Err(FieldError::new(
                "interval_ms",
                "must be from 100 to 3600000",
            ));
        }
        if doc.jitter_ms > doc.interval_ms {
            return Err(FieldError::new("jitter_ms", "must not exceed interval_ms"));
        }
        if !(100..=60_000).contains(&doc.timeout_ms) {
            return Err(FieldError::new("timeout_ms", "must be from 100 to 60000"));
        }
        if doc.signing_keys.is_some() {
            return Err(FieldError::new(
                "signing_keys",
                "shared (HMAC) signing secrets are no longer accepted: anyone who could read \
                 this configuration could sign policies. List the control plane's Ed25519 public \
                 keys in public_keys (`keyward secret signing-key` writes a key pair)",
            ));
        }
        if doc.public_keys.is_empty() {
            return Err(FieldError::new(
                "public_keys",
                "needs at least one key: unsigned snapshots are never accepted",
            ));
        }
        let mut public_keys: Vec<PublicKey> = Vec::with_capacity(doc.public_keys.len());
        for (position, key) in doc.public_keys.iter().enumerate() {
            let path = format!("public_keys[{position}]");
            let compiled = PublicKey::from_base64(&key.id, &key.public_key_base64)
                .map_err(|message| FieldError::new(path.clone(), message))?;
            if public_keys.iter().any(|k| k.id == compiled.id) {
                return Err(FieldError::new(
                    format!("{path}.id"),
                    "duplicate public key id",
                ));
            }
            public_keys.push(compiled);
        }
        if let Some(token) = &doc.token {
            let printable = token.bytes().all(|b| b.is_ascii_graphic());
            if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !printable {
                return Err(FieldError::new(
                    "token",
                    format!("must be 1 to {MAX_TOKEN_BYTES} printable characters, no spaces"),
                ));
            }
        }
        let last_good = doc
            .last_good
            .map(|last_good| compile_last_good(last_good, doc.layout))
            .transpose()?;
        Ok(SyncSettings {
            cluster: doc.cluster,
            authority: doc.authority,
            path,
            layout: doc.layout,
            chunk_path: doc.chunk_path,
            interval_ms: doc.interval_ms,
            jitter_ms: doc.jitter_ms,
            timeout_ms: doc.timeout_ms,
            public_keys,
            token: doc.token,
            last_good,
            poller: doc.poller,
        })
    }

    /// How long a lease lasts without renewal: three poll intervals, at least three seconds, so
    /// a slow tick does not hand the lease over while its holder is alive.
    pub fn lease_ttl_ms(&self) -> u64 {
        (self.interval_ms * 3).max(3000)
    }

    /// Delay until the next poll: the interval plus a spread from `entropy` within the jitter.
    pub fn next_poll_delay_ms(&self, entropy: u64) -> u64 {
        self.interval_ms + entropy.checked_rem(self.jitter_ms + 1).unwrap_or(0)
    }
}

fn compile_last_good(doc: LastGoodDoc, layout: Layout) -> Result<LastGoodSource, FieldError> {
    if layout == Layout::Chunked {
        // A manifest names its chunks by hash; one file cannot answer for all of them.
        return Err(FieldError::new(
            "last_good",
            "works with the envelope layout only: the chunked layout's manifest and chunks are \
             not one file",
        ));
    }
    if doc.cluster.is_empty() {
        return Err(FieldError::new(
            "last_good.cluster",
            "must name an Envoy cluster",
        ));
    }
    if doc.authority.is_empty() || doc.authority.contains(char::is_whitespace) {
        return Err(FieldError::new(
            "last_good.authority",
            "must be a host name",
        ));
    }
    if !doc.path.starts_with('/') {
        return Err(FieldError::new("last_good.path", "must start with /"));
    }
    Ok(LastGoodSource {
        cluster: doc.cluster,
        authority: doc.authority,
        path: doc.path,
    })
}

/// Identifies one snapshot for ordering: a higher version wins; the same version re-issued
/// later (a max-age refresh) wins too; anything else is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotStamp {
    pub version: u64,
    pub issued_at: u64,
}

impl SnapshotStamp {
    pub fn encode(self) -> String {
        format!("{}:{}", self.version, self.issued_at)
    }

    pub fn decode(bytes: &[u8]) -> Option<SnapshotStamp> {
        let text = core::str::from_utf8(bytes).ok()?;
        let (version, issued_at) = text.split_once(':')?;
        Some(SnapshotStamp {
            version: version.parse().ok()?,
            issued_at: issued_at.parse().ok()?,
        })
    }

    /// Whether `self` may replace `current`.
    pub fn replaces(self, current: Option<SnapshotStamp>) -> bool {
        current.is_none_or(|current| self > current)
    }
}

/// What the stamp entry says: which snapshot is published, and in which layout. Encoded
/// `<version>:<issued_at>` for an envelope, `<version>:<issued_at>:chunked` for a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedStamp {
    pub stamp: SnapshotStamp,
    pub layout: Layout,
}

impl PublishedStamp {
    pub fn encode(self) -> String {
        match self.layout {
            Layout::Envelope => self.stamp.encode(),
            Layout::Chunked => format!("{}:chunked", self.stamp.encode()),
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<PublishedStamp> {
        match bytes.strip_suffix(b":chunked") {
            Some(stamp) => Some(PublishedStamp {
                stamp: SnapshotStamp::decode(stamp)?,
                layout: Layout::Chunked,
            }),
            None => Some(PublishedStamp {
                stamp: SnapshotStamp::decode(bytes)?,
                layout: Layout::Envelope,
            }),
        }
    }
}

/// A parsed lease entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub expires_at_ms: u64,
}

impl Lease {
    pub fn encode(&self) -> String {
        format!("{}:{}", self.holder, self.expires_at_ms)
    }

    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        let text = core::str::from_utf8(bytes).ok()?;
        let (holder, expires) = text.rsplit_once(':')?;
        Some(Lease {
            holder: holder.to_owned(),
            expires_at_ms: expires.parse().ok()?,
        })
    }
}

/// What a VM should write to the lease entry this tick, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStep {
    /// Someone else holds a live lease.
    Wait,
    /// Write this lease (create, renew or take over); the write must use the entry's CAS.
    Write(Lease),
}

/// Decides the lease step for VM `me` at `now_ms`. A lease that cannot be parsed is treated
/// as expired: a corrupt entry must not stop policy sync for good.
pub fn lease_step(current: Option<&[u8]>, me: &str, now_ms: u64, ttl_ms: u64) -> LeaseStep {
    let mine = Lease {
        holder: me.to_owned(),
        expires_at_ms: now_ms + ttl_ms,
    };
    match current.and_then(Lease::decode) {
        Some(lease) if lease.holder != me && lease.expires_at_ms > now_ms => LeaseStep::Wait,
        _ => LeaseStep::Write(mine),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn stamps_order_by_version_then_issue_time() {
        let v1 = SnapshotStamp {
            version: 1,
            issued_at: 100,
        };
        let v1_later = SnapshotStamp {
            version: 1,
            issued_at: 200,
        };
        let v2_older_clock = SnapshotStamp {
            version: 2,
            issued_at: 50,
        };
        assert!(v1.replaces(None));
        assert!(v1_later.replaces(Some(v1)));
        assert!(!v1.replaces(Some(v1)));
        assert!(!v1.replaces(Some(v1_later)));
        assert!(v2_older_clock.replaces(Some(v1_later)));
        assert!(!v1_later.replaces(Some(v2_older_clock)));
        assert_eq!(
            SnapshotStamp::decode(v1_later.encode().as_bytes()),
            Some(v1_later)
        );
        assert_eq!(SnapshotStamp::decode(b"x:1"), None);
        let chunked = PublishedStamp {
            stamp: v1_later,
            layout: Layout::Chunked,
        };
        assert_eq!(chunked.encode(), "1:200:chunked");
        assert_eq!(PublishedStamp::decode(b"1:200:chunked"), Some(chunked));
        assert_eq!(
            PublishedStamp::decode(b"1:200").map(|p| p.layout),
            Some(Layout::Envelope)
        );
        assert_eq!(PublishedStamp::decode(b"1:x:chunked"), None);
    }

    #[test]
    fn lease_is_created_renewed_respected_and_taken_over() {
        assert_eq!(
            lease_step(None, "a", 1000, 3000),
            LeaseStep::Write(Lease {
                holder: "a".into(),
                expires_at_ms: 4000
            })
        );
        let held_by_b = Lease {
            holder: "b".into(),
            expires_at_ms: 4000,
        }
        .encode();
        assert_eq!(
            lease_step(Some(held_by_b.as_bytes()), "a", 3999, 3000),
            LeaseStep::Wait
        );
        assert_eq!(
            lease_step(Some(held_by_b.as_bytes()), "b", 3999, 3000),
            LeaseStep::Write(Lease {
                holder: "b".into(),
                expires_at_ms: 6999
            })
        );
        assert_eq!(
            lease_step(Some(held_by_b.as_bytes()), "a", 4000, 3000),
            LeaseStep::Write(Lease {
                holder: "a".into(),
                expires_at_ms: 7000
            })
        );
        assert!(matches!(
            lease_step(Some(b"garbage"), "a", 1, 3000),
            LeaseStep::Write(_)
        ));
    }

    fn compile(sync: &str) -> Result<SyncSettings, FieldError> {
        SyncSettings::compile(crate::field_error::from_json(sync.as_bytes())?)
    }

    #[test]
    fn public_keys_a_token_and_no_shared_secrets() {
        let public = crate::signature::tests::test_key("ops-1")
            .public_key()
            .to_base64();
        let settings = compile(&format!(
            r#"{{"cluster": "cp", "poller": "lease", "token": "kwdp_abc",
                "public_keys": [{{"id": "ops-1", "public_key_base64": "{public}"}},
                                {{"id": "ops-2", "public_key_base64": "{public}"}}]}}"#
        ))
        .expect("valid");
        assert_eq!(settings.public_keys.len(), 2);
        assert_eq!(settings.token.as_deref(), Some("kwdp_abc"));
        let legacy = compile(
            r#"{"cluster": "cp", "poller": "lease",
                "signing_keys": [{"id": "ops-1", "secret_base64": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="}]}"#,
        )
        .expect_err("refused");
        assert_eq!(legacy.path, "signing_keys");
        assert!(legacy.message.contains("no longer accepted"), "{legacy}");
        let none = compile(r#"{"cluster": "cp", "poller": "lease"}"#).expect_err("refused");
        assert_eq!(none.path, "public_keys");
        let twice = compile(&format!(
            r#"{{"cluster": "cp", "poller": "lease",
                "public_keys": [{{"id": "a", "public_key_base64": "{public}"}},
                                {{"id": "a", "public_key_base64": "{public}"}}]}}"#
        ))
        .expect_err("refused");
        assert_eq!(twice.path, "public_keys[1].id");
        for token in ["", "two words", "tab\\there"] {
            let bad = compile(&format!(
                r#"{{"cluster": "cp", "poller": "lease", "token": "{token}",
                    "public_keys": [{{"id": "a", "public_key_base64": "{public}"}}]}}"#
            ))
            .expect_err("refused");
            assert_eq!(bad.path, "token");
        }
        let secret_as_public = compile(
            r#"{"cluster": "cp", "poller": "lease",
                "public_keys": [{"id": "a", "secret_base64": "QUJD"}]}"#,
        );
        assert!(secret_as_public.is_err());
    }

    #[test]
    fn a_last_good_source_is_checked_and_envelope_only() {
        let public = crate::signature::tests::test_key("ops-1")
            .public_key()
            .to_base64();
        let with = |layout: &str, last_good: &str| {
            compile(&format!(
                r#"{{"cluster": "cp", "poller": "sync_service", "layout": "{layout}",
                    "last_good": {last_good},
                    "public_keys": [{{"id": "ops-1", "public_key_base64": "{public}"}}]}}"#
            ))
        };
        let settings = with("envelope", r#"{"cluster": "keyward_last_good"}"#).expect("valid");
        assert_eq!(
            settings.last_good,
            Some(LastGoodSource {
                cluster: "keyward_last_good".into(),
                authority: "keyward-last-good".into(),
                path: "/last-good.json".into(),
            })
        );
        for (layout, last_good, path) in [
            ("chunked", r#"{"cluster": "lg"}"#, "last_good"),
            ("envelope", r#"{"cluster": ""}"#, "last_good.cluster"),
            (
                "envelope",
                r#"{"cluster": "lg", "path": "x"}"#,
                "last_good.path",
            ),
            (
                "envelope",
                r#"{"cluster": "lg", "authority": "a b"}"#,
                "last_good.authority",
            ),
        ] {
            let error = with(layout, last_good).expect_err("refused");
            assert_eq!(error.path, path, "{error}");
        }
        assert!(with("envelope", r#"{"cluster": "lg", "filename": "/x"}"#).is_err());
    }

    #[test]
    fn poll_delay_stays_within_the_jitter() {
        let settings = SyncSettings {
            cluster: "c".into(),
            authority: "a".into(),
            path: "/".into(),
            layout: Layout::Envelope,
            chunk_path: "/c/".into(),
            interval_ms: 1000,
            jitter_ms: 250,
            timeout_ms: 1000,
            public_keys: vec![],
            token: None,
            last_good: None,
            poller: Poller::Lease,
        };
        for entropy in [0, 1, 249, 250, 251, u64::MAX] {
            let delay = settings.next_poll_delay_ms(entropy);
            assert!((1000..=1250).contains(&delay), "{delay}");
        }
        assert_eq!(settings.lease_ttl_ms(), 3000);
    }
}
