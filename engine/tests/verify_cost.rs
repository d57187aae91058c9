//! What verifying a signed policy costs, natively and in wasm32 under node (V8, as in Envoy).
//! A measurement, not a check: ignored by default, and it asserts nothing about time.
//!
//!   cargo test -p keyward-engine --release --test verify_cost -- --ignored --nocapture
//!   CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=.tools/wasm-bindgen/bin/wasm-bindgen-test-runner \
//!     cargo test -p keyward-engine --release --target wasm32-unknown-unknown --test verify_cost -- --include-ignored
//!
//! The chunked layout signs only the manifest: at a million keys (128 chunks of about 8k keys)
//! that is one Ed25519 verification over a manifest of about 13 KB, once per version and VM; the
//! chunks are checked by their SHA-256 as before. The envelope layout signs the whole snapshot:
//! its check hashes every byte (SHA-256) and verifies one signature.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyward_engine::chunked::{sign_manifest, verify_manifest, ChunkRef, Manifest};
use keyward_engine::hash::sha256;
use keyward_engine::signature::SigningKey;
use keyward_engine::snapshot::{ProjectRecord, ProjectStatus};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

#[cfg(not(target_arch = "wasm32"))]
fn now_ms() -> f64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0
}

#[cfg(target_arch = "wasm32")]
fn now_ms() -> f64 {
    js_sys::Date::now()
}

fn report(line: &str) {
    #[cfg(target_arch = "wasm32")]
    wasm_bindgen_test::console_log!("{line}");
    #[cfg(not(target_arch = "wasm32"))]
    println!("{line}");
}

/// Milliseconds per run of `work`, over enough runs to fill about half a second.
fn per_run(mut work: impl FnMut()) -> f64 {
    let start = now_ms();
    let mut runs = 0u32;
    while runs < 3 || now_ms() - start < 500.0 {
        work();
        runs += 1;
    }
    (now_ms() - start) / f64::from(runs)
}

fn million_key_manifest() -> Manifest {
    let chunks: Vec<ChunkRef> = (0..128u32)
        .map(|i| ChunkRef {
            sha256: hex::encode(sha256(&i.to_le_bytes())),
            keys: 7812 + u64::from(i < 64),
            bytes: 1_080_000,
        })
        .collect();
    Manifest {
        version: 7,
        issued_at: 1_800_000_000,
        expires_at: Some(1_800_086_400),
        projects: (0..50)
            .map(|i| ProjectRecord {
                id: format!("proj_{i}"),
                org: "org_a".into(),
                status: ProjectStatus::Active,
                spend_cap_microusd: Some(100_000_000),
                spent_microusd: 0,
                spend_soft_cap_microusd: None,
                limits: None,
            })
            .collect(),
        prices: vec![],
        price_catalog: None,
        plans: vec![],
        provider_keys: None,
        keys: chunks.iter().map(|c| c.keys).sum(),
        chunks,
    }
}

#[test]
#[ignore = "a measurement: run it on purpose (see the module documentation)"]
fn measure_the_cost_of_verifying_signed_policies() {
    let key = SigningKey::from_seed("ops-1", &[1; 32]).unwrap();
    let public = [key.public_key()];
    let manifest = million_key_manifest();
    assert_eq!(manifest.keys, 1_000_000);
    let json = serde_json::to_string(&manifest).unwrap();
    let envelope = sign_manifest(&json, &key).unwrap();
    let manifest_ms = per_run(|| {
        verify_manifest(envelope.as_bytes(), &public, 1_800_000_001).unwrap();
    });
    report(&format!(
        "1M keys, chunked: manifest of {} bytes ({} chunks) verified and parsed in {manifest_ms:.3} ms",
        envelope.len(),
        manifest.chunks.len()
    ));

    // One Ed25519 verification alone (over a short document), and the SHA-256 of the envelope
    // layout's 100k keys (about 13.5 MB signed as one document), which the check adds.
    let short = b"{}";
    let short_signature = key.sign("keyward.signed-snapshot.v2", short);
    let ed25519_ms = per_run(|| {
        assert!(public[0].verifies("keyward.signed-snapshot.v2", short, &short_signature));
    });
    let payload = vec![b'x'; 13_500_000];
    let signature = key.sign("keyward.signed-snapshot.v2", &payload);
    let envelope_ms = per_run(|| {
        assert!(public[0].verifies("keyward.signed-snapshot.v2", &payload, &signature));
    });
    report(&format!(
        "one Ed25519 verification: {ed25519_ms:.3} ms; 100k keys, envelope: 13.5 MB checked in \
         {envelope_ms:.2} ms (mostly its SHA-256)"
    ));
}
