//! `keyward serve`: the admin API (bearer admin token), the snapshot endpoint the filter's
//! policy sync polls (no token: it carries hashes only and is signed), and the usage endpoint the
//! data plane reports spend to (no token: each report is signed with the snapshot signing key).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::header::{
    AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use keyward_engine::signed_snapshot::SigningKey;
use keyward_engine::snapshot::{PriceRecord, RateLimits};
use keyward_engine::usage_report::{verify_report, ReportRejected, SIGNATURE_HEADER};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::Error;
use crate::keygen::{Environment, Format};
use crate::publish::{build_chunked, build_signed, ChunkedSnapshot, SignedSnapshot};
use crate::secrets::AdminTokens;
use crate::store::{
    KeySettings, KeyUpdate, KeyView, NewKey, Owner, ProjectUpdate, StatusChange, Store,
};
use crate::units::{now, parse_duration_seconds, parse_usd};

/// Request bodies are small JSON documents.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// A usage report holds up to `MAX_ENTRIES_PER_REPORT` (2000) entries: allow it room.
pub const MAX_USAGE_REPORT_BYTES: usize = 4 * 1024 * 1024;
/// `GET /v1/usage/batches` without `limit`.
const DEFAULT_BATCH_LIMIT: u64 = 100;
/// Warnings logged per usage report (unknown keys...), so one bad batch cannot flood the log.
const MAX_LOGGED_WARNINGS: usize = 10;
/// How often the server records revocations whose rotation grace has ended.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_GRACE: &str = "24h";

pub struct ServeOptions {
    pub db: PathBuf,
    pub listen: String,
    pub allow_non_loopback: bool,
    pub tokens: AdminTokens,
    pub signing_key: SigningKey,
    pub reissue_seconds: u64,
    /// How often reported spend becomes a new snapshot version; 0: with every usage batch.
    pub spend_publish_ms: u64,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // The usage endpoint authenticates with a signature, not a bearer token.
        if status == StatusCode::UNAUTHORIZED && self.code != "invalid_signature" {
            headers.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyward-admin\""),
            );
        }
        response
    }
}

/// The snapshot as served: built once per policy version (and re-issued for freshness).
struct Published {
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

struct AppState {
    store: Arc<Mutex<Store>>,
    tokens: AdminTokens,
    signing_key: SigningKey,
    reissue_seconds: u64,
    spend_publish_ms: u64,
    /// Held while a snapshot is built, so concurrent polls wait for one build and share it.
    published: tokio::sync::Mutex<Option<Arc<Published>>>,
    /// The chunked layout: the current manifest and chunks, and the previous ones (a poller may
    /// still be fetching their chunks when a newer manifest appears).
    chunked: tokio::sync::Mutex<ChunkedSlots>,
}

#[derive(Default)]
struct ChunkedSlots {
    current: Option<Arc<ChunkedSnapshot>>,
    previous: Option<Arc<ChunkedSnapshot>>,
}

type Shared = Arc<AppState>;

/// The authenticated admin token's name: the actor of every change made with it.
#[derive(Clone)]
struct Actor(String);

/// Runs `work` on the store off the async threads (SQLite calls block).
async fn with_store<T, F>(store: &Arc<Mutex<Store>>, work: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(&mut Store) -> Result<T, Error> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || {
        let mut guard = store
            .lock()
            .map_err(|_| Error::internal("the store lock is poisoned"))?;
        work(&mut guard)
    })
    .await
    .map_err(|error| Error::internal(format!("a store task failed: {error}")))?
}

/// Resolves `listen` and refuses anything but loopback unless allowed.
pub fn resolve_listen(listen: &str, allow_non_loopback: bool) -> Result<SocketAddr, Error> {
    let addresses: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|error| {
            Error::invalid(
                "invalid_listen_address",
                format!("cannot resolve the listen address {listen:?}: {error}"),
            )
        })?
        .collect();
    let address = addresses.first().copied().ok_or_else(|| {
        Error::invalid(
            "invalid_listen_address",
            format!("{listen:?} resolves to no address"),
        )
    })?;
    if !allow_non_loopback && !addresses.iter().all(|a| a.ip().is_loopback()) {
        return Err(Error::invalid(
            "non_loopback_listen",
            format!(
                "refusing to listen on {address}: it is not a loopback address. The admin API \
                 manages every key; expose it only behind TLS and a firewall, with \
                 --allow-non-loopback"
            ),
        ));
    }
    Ok(address)
}

/// Serves until SIGINT or SIGTERM.
pub fn serve(options: ServeOptions) -> Result<(), Error> {
    let address = resolve_listen(&options.listen, options.allow_non_loopback)?;
    let store = Store::open(&options.db)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::internal(format!("cannot start the runtime: {error}")))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|error| Error::internal(format!("cannot listen on {address}: {error}")))?;
        let bound = listener
            .local_addr()
            .map_err(|error| Error::internal(error.to_string()))?;
        let state = Arc::new(AppState {
            store: Arc::new(Mutex::new(store)),
            tokens: options.tokens,
            signing_key: options.signing_key,
            reissue_seconds: options.reissue_seconds.max(1),
            spend_publish_ms: options.spend_publish_ms,
            published: tokio::sync::Mutex::new(None),
            chunked: tokio::sync::Mutex::new(ChunkedSlots::default()),
        });
        tokio::spawn(sweep_rotations(Arc::clone(&state.store)));
        if options.spend_publish_ms > 0 {
            tokio::spawn(publish_spend(
                Arc::clone(&state.store),
                Duration::from_millis(options.spend_publish_ms),
            ));
        }
        // Tests and scripts read the bound address (with --listen 127.0.0.1:0) from this line.
        println!("keyward: listening on http://{bound}");
        axum::serve(listener, router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|error| Error::internal(format!("server error: {error}")))
    })
}

async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
}

/// Revokes keys whose rotation grace has ended, once a second, so the next snapshot carries
/// the revocation under a new version even when nobody changes anything.
/// Reported spend waits in the store until a new version carries it: at most one version per
/// interval from usage, however many Envoys report, since every data plane recompiles its
/// policy for each version.
async fn publish_spend(store: Arc<Mutex<Store>>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        if let Err(error) = with_store(&store, |store| store.publish_pending_spend()).await {
            eprintln!("keyward: publishing reported spend failed: {error}");
        }
    }
}

async fn sweep_rotations(store: Arc<Mutex<Store>>) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        ticker.tick().await;
        let result = with_store(&store, |store| store.revoke_rotated_keys(now())).await;
        match result {
            Ok(revoked) if !revoked.is_empty() => {
                eprintln!(
                    "keyward: rotation grace ended, revoked {}",
                    revoked.join(", ")
                );
            }
            Ok(_) => {}
            Err(error) => eprintln!("keyward: revoking rotated keys failed: {error}"),
        }
    }
}

fn router(state: Shared) -> Router {
    let admin = Router::new()
        .route("/v1/projects", get(list_projects).post(create_project))
        .route("/v1/projects/{id}", get(get_project).patch(update_project))
        .route("/v1/projects/{id}/archive", post(archive_project))
        .route("/v1/keys", get(list_keys).post(create_key))
        .route("/v1/keys/{id}", get(get_key).patch(update_key))
        .route("/v1/keys/{id}/revoke", post(revoke_key))
        .route("/v1/keys/{id}/pause", post(pause_key))
        .route("/v1/keys/{id}/resume", post(resume_key))
        .route("/v1/keys/{id}/rotate", post(rotate_key))
        .route("/v1/audit", get(audit))
        .route("/v1/prices", get(list_prices))
        .route(
            "/v1/prices/{model}",
            put(set_price).get(get_price).delete(remove_price),
        )
        .route("/v1/usage/batches", get(usage_batches))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_admin,
        ));
    Router::new()
        .route("/v1/snapshot", get(snapshot))
        .route("/v1/snapshot/manifest", get(snapshot_manifest))
        .route("/v1/snapshot/chunks/{sha256}", get(snapshot_chunk))
        .route(
            "/v1/usage",
            post(usage_report).layer(DefaultBodyLimit::max(MAX_USAGE_REPORT_BYTES)),
        )
        .route("/healthz", get(health))
        .merge(admin)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|token| !token.is_empty())
}

async fn require_admin(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    let Some(presented) = bearer_token(request.headers()) else {
        return Error::new(
            401,
            "missing_admin_token",
            "Send the admin token as Authorization: Bearer <token>.",
        )
        .into_response();
    };
    match state.tokens.authenticate(presented) {
        Some(name) => {
            let actor = Actor(name.to_owned());
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        None => Error::unauthenticated("Invalid admin token.").into_response(),
    }
}

async fn not_found() -> Error {
    Error::not_found("not_found", "No such endpoint.")
}

async fn method_not_allowed() -> Error {
    Error::new(
        405,
        "method_not_allowed",
        "This endpoint does not take this method.",
    )
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Parses a JSON body into `T`; an empty body reads as `{}`.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, Error> {
    let bytes: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(bytes)
        .map_err(|error| Error::invalid("invalid_json", format!("Invalid request body: {error}")))
}

/// `Some(None)` for an explicit `null`, so PATCH can clear a field; absent stays `None`.
fn explicit_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, Error> {
    query
        .map(|Query(value)| value)
        .map_err(|error| Error::invalid("invalid_query", error.body_text()))
}

// ---- projects --------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateProjectBody {
    id: String,
    org: String,
    #[serde(default)]
    spend_cap_microusd: Option<u64>,
    #[serde(default)]
    spend_soft_cap_microusd: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateProjectBody {
    #[serde(default, deserialize_with = "explicit_null")]
    spend_cap_microusd: Option<Option<u64>>,
    #[serde(default, deserialize_with = "explicit_null")]
    spend_soft_cap_microusd: Option<Option<u64>>,
}

#[derive(Serialize)]
struct List<T> {
    data: Vec<T>,
}

async fn create_project(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: CreateProjectBody = parse_body(&body)?;
    let project = with_store(&state.store, move |store| {
        store.create_project(
            &actor,
            now(),
            &request.id,
            &request.org,
            request.spend_cap_microusd,
            request.spend_soft_cap_microusd,
        )
    })
    .await?;
    Ok((StatusCode::CREATED, Json(project)).into_response())
}

async fn get_project(
    State(state): State<Shared>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let project = with_store(&state.store, move |store| store.project(&id)).await?;
    Ok(Json(project).into_response())
}

async fn update_project(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: UpdateProjectBody = parse_body(&body)?;
    let update = ProjectUpdate {
        spend_cap_microusd: request.spend_cap_microusd,
        spend_soft_cap_microusd: request.spend_soft_cap_microusd,
    };
    let project = with_store(&state.store, move |store| {
        store.update_project(&actor, now(), &id, &update)
    })
    .await?;
    Ok(Json(project).into_response())
}

async fn archive_project(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let project = with_store(&state.store, move |store| {
        store.archive_project(&actor, now(), &id)
    })
    .await?;
    Ok(Json(project).into_response())
}

async fn list_projects(State(state): State<Shared>) -> Result<Response, Error> {
    let projects = with_store(&state.store, |store| store.projects()).await?;
    Ok(Json(List { data: projects }).into_response())
}

// ---- keys ------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    #[serde(default)]
    project: Option<String>,
    #[serde(default)]
    org: Option<String>,
    #[serde(default)]
    format: Format,
    #[serde(default)]
    environment: Environment,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    models: Option<Vec<String>>,
    #[serde(default)]
    expires_at: Option<u64>,
    /// A duration from now, like `30d`; instead of `expires_at`.
    #[serde(default)]
    expires_in: Option<String>,
    #[serde(default)]
    spend_cap_microusd: Option<u64>,
    #[serde(default)]
    spend_soft_cap_microusd: Option<u64>,
    #[serde(default)]
    rate_limits: Option<RateLimits>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    note: Option<String>,
}

/// A PATCH of the rate limits: a named limit is set (or removed with `null`), the other kept.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitsPatch {
    #[serde(default, deserialize_with = "explicit_null")]
    requests_per_minute: Option<Option<u32>>,
    #[serde(default, deserialize_with = "explicit_null")]
    tokens_per_minute: Option<Option<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateKeyBody {
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "explicit_null")]
    models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "explicit_null")]
    expires_at: Option<Option<u64>>,
    #[serde(default)]
    expires_in: Option<String>,
    #[serde(default, deserialize_with = "explicit_null")]
    spend_cap_microusd: Option<Option<u64>>,
    #[serde(default, deserialize_with = "explicit_null")]
    spend_soft_cap_microusd: Option<Option<u64>>,
    /// `null` removes both limits.
    #[serde(default, deserialize_with = "explicit_null")]
    rate_limits: Option<Option<RateLimitsPatch>>,
    #[serde(default, deserialize_with = "explicit_null")]
    label: Option<Option<String>>,
    #[serde(default, deserialize_with = "explicit_null")]
    note: Option<Option<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateKeyBody {
    /// How long the old key keeps working, like `24h` (default) or `0s`.
    #[serde(default)]
    grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListKeysQuery {
    #[serde(default)]
    project: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    limit: Option<u64>,
}

/// A new key's response: the plaintext (this once) next to the stored view.
#[derive(Serialize)]
struct CreatedKeyBody<'a> {
    key: &'a str,
    warning: &'static str,
    #[serde(flatten)]
    view: &'a KeyView,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<&'a KeyView>,
}

const SHOWN_ONCE: &str =
    "Store this key now: keyward keeps only its SHA-256 hash and will not show it again.";

fn created_key_response(plaintext: &str, view: &KeyView, previous: Option<&KeyView>) -> Response {
    let body = CreatedKeyBody {
        key: plaintext,
        warning: SHOWN_ONCE,
        view,
        previous,
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn expiry(expires_at: Option<u64>, expires_in: Option<&str>) -> Result<Option<u64>, Error> {
    match (expires_at, expires_in) {
        (Some(_), Some(_)) => Err(Error::invalid(
            "invalid_field",
            "Give expires_at or expires_in, not both.",
        )),
        (Some(at), None) => Ok(Some(at)),
        (None, Some(text)) => Ok(Some(now().saturating_add(parse_duration_seconds(text)?))),
        (None, None) => Ok(None),
    }
}

async fn create_key(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: CreateKeyBody = parse_body(&body)?;
    let owner = match (request.project, request.org) {
        (Some(project), None) => Owner::Project(project),
        (None, Some(org)) => Owner::Org(org),
        _ => {
            return Err(Error::invalid(
                "invalid_field",
                "Give exactly one of project and org.",
            ))
        }
    };
    let new = NewKey {
        owner,
        format: request.format,
        settings: KeySettings {
            environment: request.environment,
            scopes: request.scopes,
            models: request.models,
            expires_at: expiry(request.expires_at, request.expires_in.as_deref())?,
            spend_cap_microusd: request.spend_cap_microusd,
            spend_soft_cap_microusd: request.spend_soft_cap_microusd,
            rate_limits: request.rate_limits,
            label: request.label,
            note: request.note,
        },
    };
    let created = with_store(&state.store, move |store| {
        store.create_key(&actor, now(), &new)
    })
    .await?;
    Ok(created_key_response(
        created.plaintext.expose(),
        &created.key,
        None,
    ))
}

async fn list_keys(
    State(state): State<Shared>,
    params: Result<Query<ListKeysQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let params = query(params)?;
    let keys = with_store(&state.store, move |store| {
        store.keys(params.project.as_deref())
    })
    .await?;
    Ok(Json(List { data: keys }).into_response())
}

async fn get_key(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, Error> {
    let key = with_store(&state.store, move |store| store.key(&id)).await?;
    Ok(Json(key).into_response())
}

async fn update_key(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: UpdateKeyBody = parse_body(&body)?;
    let expires_at = match (request.expires_at, request.expires_in.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "invalid_field",
                "Give expires_at or expires_in, not both.",
            ))
        }
        (None, Some(text)) => Some(Some(now().saturating_add(parse_duration_seconds(text)?))),
        (at, None) => at,
    };
    let (requests_per_minute, tokens_per_minute) = match request.rate_limits {
        None => (None, None),
        Some(None) => (Some(None), Some(None)),
        Some(Some(patch)) => (patch.requests_per_minute, patch.tokens_per_minute),
    };
    let update = KeyUpdate {
        scopes: request.scopes,
        models: request.models,
        expires_at,
        spend_cap_microusd: request.spend_cap_microusd,
        spend_soft_cap_microusd: request.spend_soft_cap_microusd,
        requests_per_minute,
        tokens_per_minute,
        label: request.label,
        note: request.note,
    };
    let key = with_store(&state.store, move |store| {
        store.update_key(&actor, now(), &id, &update)
    })
    .await?;
    Ok(Json(key).into_response())
}

async fn change_status(
    state: &Shared,
    actor: String,
    id: String,
    change: StatusChange,
) -> Result<Response, Error> {
    let key = with_store(&state.store, move |store| {
        store.change_status(&actor, now(), &id, change)
    })
    .await?;
    Ok(Json(key).into_response())
}

async fn revoke_key(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    change_status(&state, actor, id, StatusChange::Revoke).await
}

async fn pause_key(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    change_status(&state, actor, id, StatusChange::Pause).await
}

async fn resume_key(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    change_status(&state, actor, id, StatusChange::Resume).await
}

async fn rotate_key(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: RotateKeyBody = parse_body(&body)?;
    let grace = parse_duration_seconds(request.grace.as_deref().unwrap_or(DEFAULT_GRACE))?;
    let rotation = with_store(&state.store, move |store| {
        store.rotate_key(&actor, now(), &id, grace)
    })
    .await?;
    Ok(created_key_response(
        rotation.new.plaintext.expose(),
        &rotation.new.key,
        Some(&rotation.old),
    ))
}

async fn audit(
    State(state): State<Shared>,
    params: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let params = query(params)?;
    let events = with_store(&state.store, move |store| store.audit_events(params.limit)).await?;
    Ok(Json(List { data: events }).into_response())
}

// ---- prices ----------------------------------------------------------------------------------

/// A money amount in a request: a USD decimal string (`"2.50"`, as the CLI takes it) or a JSON
/// number (`2.5`), converted to micro-USD exactly (at most 6 decimals), never through a float sum.
#[derive(Deserialize)]
#[serde(untagged)]
enum Usd {
    Text(String),
    Number(serde_json::Number),
}

impl Usd {
    fn microusd(&self, field: &str) -> Result<u64, Error> {
        let text = match self {
            Usd::Text(text) => text.clone(),
            // serde_json prints a float in its shortest round-trip form (0.075 -> "0.075"), so
            // the decimal the client wrote is what gets parsed.
            Usd::Number(number) => number.to_string(),
        };
        parse_usd(&text).map_err(|error| {
            Error::invalid("invalid_amount", format!("{field}: {}", error.message))
        })
    }
}

/// `PUT /v1/prices/{model}`: each price in USD per 1M tokens (`*_usd_per_mtok`) or in integer
/// micro-USD per 1M tokens (`*_microusd_per_mtok`, as `GET` shows them); not both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceBody {
    #[serde(default)]
    input_usd_per_mtok: Option<Usd>,
    #[serde(default)]
    input_microusd_per_mtok: Option<u64>,
    #[serde(default)]
    output_usd_per_mtok: Option<Usd>,
    #[serde(default)]
    output_microusd_per_mtok: Option<u64>,
    #[serde(default)]
    cached_input_usd_per_mtok: Option<Usd>,
    #[serde(default)]
    cached_input_microusd_per_mtok: Option<u64>,
    #[serde(default)]
    cache_write_usd_per_mtok: Option<Usd>,
    #[serde(default)]
    cache_write_microusd_per_mtok: Option<u64>,
}

fn price_field(usd: Option<&Usd>, micros: Option<u64>, kind: &str) -> Result<Option<u64>, Error> {
    match (usd, micros) {
        (Some(_), Some(_)) => Err(Error::invalid(
            "invalid_field",
            format!("Give {kind}_usd_per_mtok or {kind}_microusd_per_mtok, not both."),
        )),
        (Some(usd), None) => usd.microusd(&format!("{kind}_usd_per_mtok")).map(Some),
        (None, micros) => Ok(micros),
    }
}

fn required_price(value: Option<u64>, kind: &str) -> Result<u64, Error> {
    value.ok_or_else(|| {
        Error::invalid(
            "invalid_field",
            format!("{kind}_usd_per_mtok (or {kind}_microusd_per_mtok) is required."),
        )
    })
}

impl PriceBody {
    fn record(&self, model: String) -> Result<PriceRecord, Error> {
        let input = price_field(
            self.input_usd_per_mtok.as_ref(),
            self.input_microusd_per_mtok,
            "input",
        )?;
        let output = price_field(
            self.output_usd_per_mtok.as_ref(),
            self.output_microusd_per_mtok,
            "output",
        )?;
        Ok(PriceRecord {
            model,
            input_microusd_per_mtok: required_price(input, "input")?,
            output_microusd_per_mtok: required_price(output, "output")?,
            cached_input_microusd_per_mtok: price_field(
                self.cached_input_usd_per_mtok.as_ref(),
                self.cached_input_microusd_per_mtok,
                "cached_input",
            )?,
            cache_write_microusd_per_mtok: price_field(
                self.cache_write_usd_per_mtok.as_ref(),
                self.cache_write_microusd_per_mtok,
                "cache_write",
            )?,
        })
    }
}

async fn list_prices(State(state): State<Shared>) -> Result<Response, Error> {
    let prices = with_store(&state.store, |store| store.prices()).await?;
    Ok(Json(List { data: prices }).into_response())
}

async fn get_price(
    State(state): State<Shared>,
    Path(model): Path<String>,
) -> Result<Response, Error> {
    let price = with_store(&state.store, move |store| store.price(&model)).await?;
    Ok(Json(price).into_response())
}

async fn set_price(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(model): Path<String>,
    body: Bytes,
) -> Result<Response, Error> {
    let request: PriceBody = parse_body(&body)?;
    let record = request.record(model)?;
    let price = with_store(&state.store, move |store| {
        store.set_price(&actor, now(), &record)
    })
    .await?;
    Ok(Json(price).into_response())
}

async fn remove_price(
    State(state): State<Shared>,
    Extension(Actor(actor)): Extension<Actor>,
    Path(model): Path<String>,
) -> Result<Response, Error> {
    let removed = with_store(&state.store, move |store| {
        store.remove_price(&actor, now(), &model)
    })
    .await?;
    Ok(Json(removed).into_response())
}

// ---- usage reports -----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchesQuery {
    #[serde(default)]
    limit: Option<u64>,
}

/// `POST /v1/usage`: a signed usage report from the data plane. The signature (HMAC-SHA256 of
/// the exact body with the snapshot signing key) is checked before the body is parsed.
async fn usage_report(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::new(
                413,
                "report_too_large",
                format!("A usage report is at most {MAX_USAGE_REPORT_BYTES} bytes."),
            )
        } else {
            Error::invalid("invalid_body", rejection.body_text())
        }
    })?;
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|value| value.to_str().ok());
    let report = verify_report(&body, signature, std::slice::from_ref(&state.signing_key))
        .map_err(|rejected| match rejected {
            ReportRejected::Signature => Error::new(
                401,
                "invalid_signature",
                format!(
                    "The {SIGNATURE_HEADER} header is missing, names an unknown key, or does not \
                     verify over this body."
                ),
            ),
            ReportRejected::Invalid(error) => {
                Error::invalid("invalid_report", format!("Invalid usage report: {error}"))
            }
        })?;
    let publish_now = state.spend_publish_ms == 0;
    let applied = with_store(&state.store, move |store| {
        store.apply_usage_report(&report, now(), publish_now)
    })
    .await?;
    for warning in applied.warnings.iter().take(MAX_LOGGED_WARNINGS) {
        eprintln!("keyward: warning: {warning}");
    }
    if applied.warnings.len() > MAX_LOGGED_WARNINGS {
        eprintln!(
            "keyward: warning: ... and {} more for this usage batch",
            applied.warnings.len() - MAX_LOGGED_WARNINGS
        );
    }
    let mut response = Json(applied.ack).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn usage_batches(
    State(state): State<Shared>,
    params: Result<Query<BatchesQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let limit = query(params)?.limit.unwrap_or(DEFAULT_BATCH_LIMIT);
    let batches = with_store(&state.store, move |store| store.usage_batches(limit)).await?;
    Ok(Json(List { data: batches }).into_response())
}

// ---- snapshot --------------------------------------------------------------------------------

/// The current signed snapshot: rebuilt when the policy version moved or the last one is
/// `reissue_seconds` old (same version, new `issued_at`), otherwise the cached bytes.
async fn current_snapshot(state: &Shared) -> Result<Arc<Published>, Error> {
    let mut slot = state.published.lock().await;
    let cached = slot
        .as_ref()
        .map(|published| (published.version, published.issued_at));
    let reissue_seconds = state.reissue_seconds;
    let key = state.signing_key.clone();
    let rebuilt = with_store(&state.store, move |store| {
        let now = now();
        store.revoke_rotated_keys(now)?;
        let version = store.policy_version()?;
        let still_good = cached.is_some_and(|(cached_version, issued_at)| {
            cached_version == version && now < issued_at.saturating_add(reissue_seconds)
        });
        if still_good {
            return Ok(None);
        }
        build_signed(store, &key, now).map(Some)
    })
    .await?;
    if let Some(signed) = rebuilt {
        *slot = Some(Arc::new(Published::from(signed)));
    }
    slot.clone()
        .ok_or_else(|| Error::internal("no snapshot could be built"))
}

fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == etag)
}

async fn snapshot(State(state): State<Shared>, headers: HeaderMap) -> Result<Response, Error> {
    let published = current_snapshot(&state).await?;
    let not_modified = headers
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| etag_matches(value, &published.etag));
    let etag = HeaderValue::from_str(&published.etag)
        .map_err(|_| Error::internal("the snapshot ETag is not a header value"))?;
    let mut response = if not_modified {
        (StatusCode::NOT_MODIFIED, Body::empty()).into_response()
    } else {
        let mut response = (StatusCode::OK, published.body.clone()).into_response();
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

/// The current chunked snapshot, rebuilt under the same rules as [`current_snapshot`].
async fn current_chunked(state: &Shared) -> Result<Arc<ChunkedSnapshot>, Error> {
    let mut slots = state.chunked.lock().await;
    let cached = slots
        .current
        .as_ref()
        .map(|published| (published.version, published.issued_at));
    let reissue_seconds = state.reissue_seconds;
    let key = state.signing_key.clone();
    let rebuilt = with_store(&state.store, move |store| {
        let now = now();
        store.revoke_rotated_keys(now)?;
        let version = store.policy_version()?;
        let still_good = cached.is_some_and(|(cached_version, issued_at)| {
            cached_version == version && now < issued_at.saturating_add(reissue_seconds)
        });
        if still_good {
            return Ok(None);
        }
        build_chunked(store, &key, now, None).map(Some)
    })
    .await?;
    if let Some(built) = rebuilt {
        slots.previous = slots.current.take();
        slots.current = Some(Arc::new(built));
    }
    slots
        .current
        .clone()
        .ok_or_else(|| Error::internal("no snapshot could be built"))
}

/// `GET /v1/snapshot/manifest`: the signed manifest of the chunked layout, with ETag.
async fn snapshot_manifest(
    State(state): State<Shared>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let published = current_chunked(&state).await?;
    let tag = published.etag();
    let not_modified = headers
        .get(IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| etag_matches(value, &tag));
    let etag = HeaderValue::from_str(&tag)
        .map_err(|_| Error::internal("the manifest ETag is not a header value"))?;
    let mut response = if not_modified {
        (StatusCode::NOT_MODIFIED, Body::empty()).into_response()
    } else {
        let mut response = (StatusCode::OK, published.manifest.clone()).into_response();
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

/// `GET /v1/snapshot/chunks/{sha256}`: a chunk of the current or the previous manifest. Its
/// name is its hash, so it never changes: cacheable for good.
async fn snapshot_chunk(
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
    fn only_loopback_is_accepted_by_default() {
        assert!(resolve_listen("127.0.0.1:7070", false).is_ok());
        assert!(resolve_listen("[::1]:7070", false).is_ok());
        let error = resolve_listen("0.0.0.0:7070", false).unwrap_err();
        assert_eq!(error.code, "non_loopback_listen");
        assert!(resolve_listen("0.0.0.0:7070", true).is_ok());
        assert!(resolve_listen("not an address", false).is_err());
    }

    #[test]
    fn etags_match_lists_weak_tags_and_star() {
        assert!(etag_matches("\"3-10\"", "\"3-10\""));
        assert!(etag_matches("\"1-1\", W/\"3-10\"", "\"3-10\""));
        assert!(etag_matches("*", "\"3-10\""));
        assert!(!etag_matches("\"3-11\"", "\"3-10\""));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer_token(&headers), None);
    }
}
