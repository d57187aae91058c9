//! What provider keys cost, natively: opening a snapshot's sealed keys (once per snapshot
//! version and VM), and per request the decision on a provider route against the same route
//! without `provider` (the lookup and one more header edit). A measurement, not a check: ignored
//! by default, and it asserts nothing about time.
//!
//!   cargo test -p keyward-engine --release --test provider_key_cost -- --ignored --nocapture
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use getrandom::rand_core::UnwrapErr;
use getrandom::SysRng;
use keyward_engine::config::PluginConfig;
use keyward_engine::gate::{Gate, HeaderFacts};
use keyward_engine::hash::sha256;
use keyward_engine::ledger::MemoryLedger;
use keyward_engine::provider::{KeyOwnerKind, Provider};
use keyward_engine::provider_keys::{seal_provider_keys, FleetPrivateKey};
use keyward_engine::trace::NoTrace;

const SECRET: &str = "s3cr3tS3cr3tS3cr3tXY";

fn config(projects: usize) -> (PluginConfig, FleetPrivateKey) {
    let (private, public) = FleetPrivateKey::derive_pair(&[3u8; 32]);
    let ids: Vec<String> = (0..projects).map(|i| format!("proj_{i}")).collect();
    let secrets: Vec<String> = (0..projects)
        .map(|i| format!("sk-proj-{i:06}-abcdefghijklmnopqrstuvwxyz0123456789"))
        .collect();
    let entries: Vec<_> = ids
        .iter()
        .zip(&secrets)
        .map(|(id, key)| {
            (
                Provider::Openai,
                KeyOwnerKind::Project,
                id.as_str(),
                key.as_str(),
            )
        })
        .collect();
    let sealed =
        seal_provider_keys(&public, 4, &[5u8; 32], &entries, &mut UnwrapErr(SysRng)).unwrap();
    let project_list: Vec<String> = ids
        .iter()
        .map(|id| format!(r#"{{"id": "{id}", "org": "org_1", "status": "active"}}"#))
        .collect();
    let json = format!(
        r#"{{"routes": [
            {{"name": "provider", "match": {{"path_prefix": "/p"}}, "provider": "openai"}},
            {{"name": "plain", "match": {{"path_prefix": "/q"}}}}],
          "policy": {{"version": 4, "issued_at": 1799999999, "projects": [{}],
            "keys": [{{"id": "good1", "secret_sha256": "{}", "project": "proj_0", "status": "active"}}],
            "provider_keys": {}}}}}"#,
        project_list.join(","),
        hex::encode(sha256(SECRET.as_bytes())),
        serde_json::to_string(&sealed).unwrap()
    );
    let config = PluginConfig::from_json(json.as_bytes()).unwrap();
    (config, FleetPrivateKey::from_base64(&private).unwrap())
}

fn per_request_ns(config: &PluginConfig, path: &str) -> f64 {
    let headers = vec![
        (":method".to_owned(), b"POST".to_vec()),
        (":path".to_owned(), path.as_bytes().to_vec()),
        (":authority".to_owned(), b"api.local".to_vec()),
        (
            "authorization".to_owned(),
            format!("Bearer ak_good1.{SECRET}").into_bytes(),
        ),
        ("x-request-id".to_owned(), b"req-1".to_vec()),
    ];
    let gate = Gate {
        settings: &config.settings,
        policy: config.policy.as_ref(),
        reports_usage: false,
    };
    let facts = HeaderFacts {
        headers: &headers,
        route_name: None,
        now_s: 1_800_000_000,
        end_of_stream: true,
    };
    let mut ledger = MemoryLedger::default();
    let rounds = 200_000;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for _ in 0..rounds {
            let step = gate.on_headers(&facts, &mut ledger, &mut NoTrace);
            std::hint::black_box(&step);
        }
        best = best.min(start.elapsed().as_nanos() as f64 / rounds as f64);
    }
    best
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn provider_key_cost() {
    for projects in [1_000, 10_000] {
        let (mut config, fleet) = config(projects);
        let policy = config.policy.as_mut().unwrap();
        let start = Instant::now();
        let line = policy.open_provider_keys(Some(&fleet)).unwrap();
        let open_ms = start.elapsed().as_secs_f64() * 1000.0;
        println!("{projects} provider keys: opened in {open_ms:.2} ms ({line})");
        let with = per_request_ns(&config, "/p/v1/chat/completions");
        let without = per_request_ns(&config, "/q/v1/chat/completions");
        println!(
            "  headers step: provider route {with:.0} ns, same route without provider {without:.0} ns, difference {:.0} ns",
            with - without
        );
    }
}
