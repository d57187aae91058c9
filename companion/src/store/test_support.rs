//! Helpers shared by the store's unit tests.

use keyward_engine::snapshot::PriceRecord;
use keyward_engine::usage_report::UsageEntry;

use super::{KeySettings, NewKey, Owner, Store};
use crate::keygen::Format;

pub(super) fn store_with_project() -> Store {
    let mut store = Store::in_memory().unwrap();
    store
        .create_project("alice", 100, "proj_a", "org_1", Some(5_000_000), None)
        .unwrap();
    store
}

/// `store_with_project` (`proj_a` of `org_1`), plus `proj_b` of the same org and `proj_x` of
/// another (`org_2`).
pub(super) fn store_with_org_projects() -> Store {
    let mut store = store_with_project();
    for (id, org) in [("proj_b", "org_1"), ("proj_x", "org_2")] {
        store.create_project("a", 1, id, org, None, None).unwrap();
    }
    store
}

pub(super) fn new_key(owner: Owner, format: Format) -> NewKey {
    NewKey {
        owner,
        format,
        settings: KeySettings {
            scopes: vec!["chat:write".into()],
            ..KeySettings::default()
        },
    }
}

pub(super) fn entry(
    key_id: &str,
    project: Option<&str>,
    cost: u64,
    last_used_at: u64,
) -> UsageEntry {
    UsageEntry {
        key_id: key_id.to_owned(),
        project: project.map(str::to_owned),
        cost_microusd: cost,
        requests: 2,
        input_tokens: 100,
        output_tokens: 50,
        last_used_at: Some(last_used_at),
        key_windows: vec![],
        project_windows: vec![],
        provider_key: None,
    }
}

pub(super) fn key_in(store: &mut Store, owner: Owner) -> String {
    store
        .create_key("a", 1, &new_key(owner, Format::Ak))
        .unwrap()
        .key
        .id
}

pub(super) fn price(model: &str, input: u64, output: u64) -> PriceRecord {
    PriceRecord {
        model: model.to_owned(),
        input_microusd_per_mtok: input,
        output_microusd_per_mtok: output,
        cached_input_microusd_per_mtok: None,
        cache_write_microusd_per_mtok: None,
    }
}

/// The PostgreSQL server the tests use (`make test` starts one and sets this).
pub(super) fn postgres_url() -> String {
    std::env::var("KEYWARD_TEST_PG_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "KEYWARD_TEST_PG_URL is not set: the PostgreSQL tests need a server. `make test` \
             starts one (scripts/postgres.sh) and sets it"
            )
        })
}

/// A PostgreSQL location of its own (a new schema) on the test server: tests run in parallel.
pub(super) fn fresh_postgres_location() -> super::Location {
    let url = postgres_url();
    let schema = format!("kw_test_{}", hex::encode(rand::random::<[u8; 8]>()));
    let mut client = postgres::Client::connect(&url, postgres::NoTls)
        .unwrap_or_else(|error| panic!("cannot reach the test PostgreSQL at {url}: {error}"));
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
    let separator = if url.contains('?') { '&' } else { '?' };
    super::Location::Postgres(format!("{url}{separator}options=-csearch_path%3D{schema}"))
}

/// Whether this test run uses PostgreSQL for the store tests (`KEYWARD_TEST_STORE=postgres`).
pub(super) fn postgres_requested() -> bool {
    std::env::var("KEYWARD_TEST_STORE").is_ok_and(|backend| backend == "postgres")
}
