//! The snapshot endpoints the filter's policy sync polls: the signed envelope, and the chunked
//! layout (a signed manifest and content-addressed chunks). No token: they carry hashes only,
//! and the signature is what the filter trusts.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_engine::signed_snapshot::SigningKey;

use super::{not_found, with_store, Shared};
use crate::error::{Error, ErrorBody};
use crate::publish::{build_chunked, build_signed, ChunkedSnapshot, SignedSnapshot};
use crate::store::Store;
use crate::units::now;

/// Builds a snapshot at an issue time; returns it and its version.
type Builder<T> = fn(&mut Store, &SigningKey, u64) -> Result<(T, u64), Error>;

/// Issue agreements tried before serving what was read.
const MAX_ISSUE_ATTEMPTS: usize = 3;

/// The snapshot as served: built once per policy version (and re-issued for freshness).
pub(super) struct Published {
    version: u64,
    issued_at: u64,
    etag: String,
    body: Bytes,
}

impl From<SignedSnapshot> for Published {
    fn from(signed: SignedSnapshot) -> Published {
        Published {
            etag: signed.etag(),
            version: signed.version,
            issued_at: signed.issued_at,
            body: Bytes::from(signed.envelope),
        }
    }
}

/// The chunked layout: the current manifest and chunks, and the previous ones (a poller may
/// still be fetching their chunks when a newer manifest appears).
#[derive(Default)]
pub(super) struct ChunkedSlots {
    current: Option<Arc<ChunkedSnapshot>>,
    previous: Option<Arc<ChunkedSnapshot>>,
}

/// Builds a new snapshot with `build` when the issue the store records (see
/// [`Store::snapshot_issue`]) differs from `cached` (version, issued_at): the policy version
/// moved, or the issue is `reissue_seconds` old. `None` while the cached one holds. Built at
/// the recorded issue time, so every replica serving the store builds the same bytes.
async fn rebuild_if_stale<T: Send + 'static>(
    state: &Shared,
    cached: Option<(u64, u64)>,
    build: Builder<T>,
) -> Result<Option<T>, Error> {
    let reissue_seconds = state.reissue_seconds;
    let key = state.signing_key.clone();
    with_store(state, move |store| {
        let now = now();
        store.revoke_rotated_keys(now)?;
        // A change landing between the issue and the read makes a newer version than the
        // issue's: ask again (another replica will have agreed on that version's issue).
        for _ in 0..MAX_ISSUE_ATTEMPTS {
            let issue = store.snapshot_issue(now, reissue_seconds)?;
            if cached == Some(issue) {
                return Ok(None);
            }
            let (built, version) = build(store, &key, issue.1)?;
            if version == issue.0 {
                return Ok(Some(built));
            }
        }
        // The policy kept changing: serve what was read; the next poll agrees again.
        build(store, &key, now).map(|(built, _)| Some(built))
    })
    .await
}

/// The current signed snapshot: rebuilt when stale (see [`rebuild_if_stale`]), otherwise the
/// cached bytes, so every poller gets the same bytes and ETag until the next change.
async fn current_snapshot(state: &Shared) -> Result<Arc<Published>, Error> {
    let mut slot = state.published.lock().await;
    let cached = slot
        .as_ref()
        .map(|published| (published.version, published.issued_at));
    let build = |store: &mut Store, key: &SigningKey, issued_at: u64| {
        build_signed(store, key, issued_at).map(|signed| {
            let version = signed.version;
            (signed, version)
        })
    };
    if let Some(signed) = rebuild_if_stale(state, cached, build).await? {
        state
            .metrics
            .snapshot_built(signed.version, signed.envelope.len());
        *slot = Some(Arc::new(Published::from(signed)));
    }
    slot.clone()
        .ok_or_else(|| Error::internal("no snapshot could be built"))
}

/// The current chunked snapshot, rebuilt under the same rules as [`current_snapshot`].
async fn current_chunked(state: &Shared) -> Result<Arc<ChunkedSnapshot>, Error> {
    let mut slots = state.chunked.lock().await;
    let cached = slots
        .current
        .as_ref()
        .map(|published| (published.version, published.issued_at));
    let build = |store: &mut Store, key: &SigningKey, issued_at: u64| {
        build_chunked(store, key, issued_at, None).map(|built| {
            let version = built.version;
            (built, version)
        })
    };
    if let Some(built) = rebuild_if_stale(state, cached, build).await? {
        slots.previous = slots.current.take();
        slots.current = Some(Arc::new(built));
    }
    slots
        .current
        .clone()
        .ok_or_else(|| Error::internal("no snapshot could be built"))
}

fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == etag)
}

/// A JSON document with its ETag: 304 without a body when the poller already has it.
fn conditional(headers: &HeaderMap, etag: &str, body: Bytes) -> Result<Response, Error> {
    let not_modified = headers
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| etag_matches(value, etag));
    let etag = HeaderValue::from_str(etag)
        .map_err(|_| Error::internal("the snapshot ETag is not a header value"))?;
    let mut response = if not_modified {
        (StatusCode::NOT_MODIFIED, Body::empty()).into_response()
    } else {
        let mut response = (StatusCode::OK, body).into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    };
    let headers = response.headers_mut();
    headers.insert(ETAG, etag);
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// `GET /v1/snapshot`: the signed envelope, with ETag.
#[utoipa::path(operation_id = "snapshot", get, path = "/v1/snapshot", tag = "snapshot", summary = "The signed policy snapshot (no token: hashes only, and signed)", params(("if-none-match" = Option<String>, Header, description = "A previous ETag")), responses((status = 200, description = "The signed envelope", body = Object, content_type = "application/json"), (status = 304, description = "Unchanged since the ETag given")))]
pub(super) async fn snapshot(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let published = current_snapshot(&state).await?;
    conditional(&headers, &published.etag, published.body.clone())
}

/// `GET /v1/snapshot/manifest`: the signed manifest of the chunked layout, with ETag.
#[utoipa::path(operation_id = "snapshot_manifest", get, path = "/v1/snapshot/manifest", tag = "snapshot", summary = "The signed manifest of the chunked layout", params(("if-none-match" = Option<String>, Header, description = "A previous ETag")), responses((status = 200, description = "The signed manifest", body = Object, content_type = "application/json"), (status = 304, description = "Unchanged since the ETag given")))]
pub(super) async fn snapshot_manifest(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let published = current_chunked(&state).await?;
    conditional(
        &headers,
        &published.etag(),
        Bytes::from(published.manifest.clone()),
    )
}

/// `GET /v1/snapshot/chunks/{sha256}`: a chunk of the current or the previous manifest. Its
/// name is its hash, so it never changes: cacheable for good.
#[utoipa::path(operation_id = "snapshot_chunk", get, path = "/v1/snapshot/chunks/{sha256}", tag = "snapshot", summary = "A chunk of the current or previous manifest, by its SHA-256", params(("sha256" = String, Path, description = "The chunk's hex SHA-256")), responses((status = 200, description = "The chunk (NDJSON)", body = String, content_type = "application/x-ndjson"), (status = 404, description = "No such chunk", body = ErrorBody)))]
pub(super) async fn snapshot_chunk(
    State(state): State<Shared>,
    Path(sha256): Path<String>,
) -> Result<Response, Error> {
    let body = {
        let slots = state.chunked.lock().await;
        let found = [&slots.current, &slots.previous]
            .into_iter()
            .flatten()
            .find_map(|published| published.chunks.get(&sha256).cloned());
        found
    };
    let Some(body) = body else {
        return Err(not_found().await);
    };
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_match_lists_weak_tags_and_star() {
        assert!(etag_matches("\"3-10\"", "\"3-10\""));
        assert!(etag_matches("\"1-1\", W/\"3-10\"", "\"3-10\""));
        assert!(etag_matches("*", "\"3-10\""));
        assert!(!etag_matches("\"3-11\"", "\"3-10\""));
    }
}
