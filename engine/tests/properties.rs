//! Property tests of the engine's invariants (native only: proptest needs std facilities that
//! wasm32-unknown-unknown under node does not have).
#![cfg(not(target_arch = "wasm32"))]

use keyward_engine::budget::{BudgetRecord, LimitsRecord, PlanRecord, QuotaRecord};
use keyward_engine::calendar::Period;
use keyward_engine::hash::{digests_equal, sha256};
use keyward_engine::key_format::{parse_key, KeyFormat, ParsedKey};
use keyward_engine::signature::SigningKey;
use keyward_engine::signed_snapshot::{sign_snapshot, verify_snapshot};
use keyward_engine::snapshot::{
    KeyRecord, KeyStatus, Policy, PriceRecord, ProjectRecord, ProjectStatus, RateLimits, Snapshot,
};
use proptest::prelude::*;

fn identifier() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:-]{1,24}"
}

fn project() -> impl Strategy<Value = ProjectRecord> {
    (
        identifier(),
        identifier(),
        prop_oneof![
            Just(ProjectStatus::Active),
            Just(ProjectStatus::Archived),
            Just(ProjectStatus::Suspended)
        ],
        proptest::option::of(0u64..10_000_000_000),
        0u64..10_000_000_000,
    )
        .prop_map(|(id, org, status, cap, spent)| ProjectRecord {
            id,
            org,
            status,
            spend_cap_microusd: cap,
            spent_microusd: spent,
            spend_soft_cap_microusd: None,
            limits: None,
        })
}

fn snapshot() -> impl Strategy<Value = Snapshot> {
    (
        1u64..u64::MAX / 2,
        0u64..4_000_000_000,
        proptest::collection::vec(project(), 1..5),
    )
        .prop_flat_map(|(version, issued_at, projects)| {
            let mut unique = projects;
            unique.sort_by(|a, b| a.id.cmp(&b.id));
            unique.dedup_by(|a, b| a.id == b.id);
            let ids: Vec<String> = unique.iter().map(|p| p.id.clone()).collect();
            let key = (
                proptest::sample::select(ids),
                prop_oneof![
                    Just(KeyStatus::Active),
                    Just(KeyStatus::Paused),
                    Just(KeyStatus::Revoked)
                ],
                proptest::collection::vec("[a-z:*]{1,12}", 0..4),
                proptest::option::of(proptest::collection::vec("[a-z0-9.*-]{1,12}", 0..3)),
                proptest::option::of(0u64..4_000_000_000),
                any::<[u8; 32]>(),
                proptest::option::of(".{0,20}"),
            );
            (
                Just(version),
                Just(issued_at),
                Just(unique),
                proptest::collection::vec(key, 0..8),
            )
        })
        .prop_map(|(version, issued_at, projects, keys)| Snapshot {
            version,
            issued_at,
            expires_at: None,
            projects,
            prices: vec![PriceRecord {
                model: "gpt-4o*".to_owned(),
                input_microusd_per_mtok: 2_500_000,
                output_microusd_per_mtok: 10_000_000,
                cached_input_microusd_per_mtok: Some(1_250_000),
                cache_write_microusd_per_mtok: None,
            }],
            price_catalog: None,
            plans: vec![PlanRecord {
                id: "free".to_owned(),
                label: None,
                budgets: vec![BudgetRecord {
                    period: Period::Month,
                    cap_microusd: Some(5_000_000),
                    soft_cap_microusd: None,
                }],
                quotas: vec![QuotaRecord {
                    period: Period::Day,
                    requests: Some(50),
                    tokens: None,
                }],
                models: Some(vec!["gpt-4o*".to_owned()]),
                rate_limits: None,
            }],
            keys: keys
                .into_iter()
                .enumerate()
                .map(
                    |(n, (project, status, scopes, models, expires_at, secret, label))| KeyRecord {
                        id: format!("key{n}"),
                        secret_sha256: Some(hex::encode(sha256(&secret))),
                        key_sha256: None,
                        project: Some(project),
                        org: None,
                        status,
                        environment: "live".to_owned(),
                        scopes,
                        models,
                        expires_at,
                        spend_cap_microusd: None,
                        spent_microusd: 0,
                        label,
                        spend_soft_cap_microusd: None,
                        rate_limits: (n % 2 == 0).then_some(RateLimits {
                            requests_per_minute: Some(60),
                            tokens_per_minute: None,
                        }),
                        created_at: Some(issued_at),
                        last_used_at: None,
                        limits: (n % 3 == 0).then(|| LimitsRecord {
                            plan: Some("free".to_owned()),
                            ..LimitsRecord::default()
                        }),
                    },
                )
                .collect(),
            provider_keys: None,
        })
}

proptest! {
    #[test]
    fn digest_comparison_agrees_with_equality(a in any::<[u8; 32]>(), b in any::<[u8; 32]>(), flip in 0usize..32) {
        prop_assert_eq!(digests_equal(&a, &b), a == b);
        let mut c = a;
        c[flip] ^= 0x80;
        prop_assert!(!digests_equal(&a, &c));
        prop_assert!(digests_equal(&a, &a));
    }

    #[test]
    fn snapshots_round_trip_through_json(snapshot in snapshot()) {
        let json = serde_json::to_string(&snapshot).expect("serializes");
        let reparsed: Snapshot = serde_json::from_str(&json).expect("parses");
        prop_assert_eq!(&reparsed, &snapshot);
        let direct = Policy::compile(snapshot.clone()).expect("valid by construction");
        let via_json = Policy::from_json(json.as_bytes()).expect("valid by construction");
        prop_assert_eq!(direct, via_json);
    }

    #[test]
    fn signed_snapshots_verify_and_any_flipped_byte_does_not(mut snapshot in snapshot(), position in any::<prop::sample::Index>()) {
        let key = SigningKey::from_seed("k", &[3; 32]).expect("key");
        let public = [key.public_key()];
        let now = snapshot.issued_at;
        snapshot.expires_at = Some(now + 3600);
        let json = serde_json::to_string(&snapshot).expect("serializes");
        let envelope = sign_snapshot(&json, &key).expect("signs");
        prop_assert!(verify_snapshot(envelope.as_bytes(), &public, now).is_ok());
        let start = envelope.find("\"snapshot\":").expect("field") + 11;
        let mut tampered = envelope.clone().into_bytes();
        let at = start + position.index(tampered.len() - start - 1);
        tampered[at] ^= 0x01;
        prop_assert!(verify_snapshot(&tampered, &public, now).is_err());
    }

    #[test]
    fn generated_ak_keys_parse_back(id in "[A-Za-z0-9]{4,32}", secret in "[A-Za-z0-9]{16,128}") {
        let formats = KeyFormat::defaults();
        let key = format!("ak_{id}.{secret}");
        let parsed = parse_key(&formats, key.as_bytes());
        prop_assert_eq!(parsed, Ok(ParsedKey::KeyIdSecret { key_id: &id, secret: secret.as_bytes() }));
    }

    #[test]
    fn any_headers_decide_without_panicking_or_echoing(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        keyward_engine::fuzzing::credential_and_decision(&data);
    }
}

/// Path-like strings: the characters that matter to canonicalization, often.
fn path_like() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("/".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2E".to_owned()),
            Just("%61".to_owned()),
            Just("%41".to_owned()),
            Just("%2f".to_owned()),
            Just("%25".to_owned()),
            Just("%c3%a9".to_owned()),
            Just(";".to_owned()),
            Just("\\".to_owned()),
            "[a-zA-Z0-9_~-]{1,4}",
        ],
        0..12,
    )
    .prop_map(|parts| format!("/{}", parts.concat()))
}

proptest! {
    #[test]
    fn canonical_paths_are_a_fixed_point_and_keep_no_dot_segment(path in path_like()) {
        use keyward_engine::canonical::canonical_path;
        if let Ok(once) = canonical_path(&path) {
            let twice = canonical_path(&once);
            prop_assert_eq!(twice.as_deref(), Ok(once.as_ref()));
            prop_assert!(!once.contains("//"), "{}", once);
            for segment in once.split('/') {
                prop_assert!(segment != "." && segment != "..", "{}", once);
            }
            // What a server that decodes unreserved escapes sees is what keyward decided on.
            prop_assert!(!once.to_ascii_lowercase().contains("%2e"), "{}", once);
        }
    }
}
