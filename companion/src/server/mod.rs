//! `keyward serve`: the admin API (bearer admin token), the snapshot endpoints the filter's
//! policy sync polls and the usage endpoint the data plane reports spend to (both with a bearer
//! data-plane token, which can do nothing else). Snapshots are signed with the control plane's
//! Ed25519 key, which never leaves this process, and expire.

mod budgets;
mod dataplane;
mod keys;
mod observe;
mod openapi;
mod prices;
mod projects;
mod provider_keys;
mod routes;
mod snapshot;
mod tls;
mod usage;
mod webhooks;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_engine::signature::SigningKey;

use crate::error::Error;
use crate::secrets::AdminTokens;
use crate::store::{Location, Store, UsageLimits};
use crate::units::now;
use observe::Metrics;
pub use routes::not_found;
use snapshot::{ChunkedSlots, Published};
pub use webhooks::WebhookTarget;

/// How often the server records revocations whose rotation grace has ended.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_GRACE: &str = "24h";

pub struct ServeOptions {
    pub db: Location,
    pub listen: String,
    pub allow_non_loopback: bool,
    pub tokens: AdminTokens,
    pub signing_key: SigningKey,
    pub reissue_seconds: u64,
    /// How long a served snapshot is valid (its `expires_at` is its `issued_at` plus this).
    pub snapshot_ttl_seconds: u64,
    /// What a usage report may claim.
    pub usage_limits: UsageLimits,
    /// How often reported spend becomes a new snapshot version; 0: with every usage batch.
    pub spend_publish_ms: u64,
    /// Serve HTTPS with this certificate chain and private key (PEM files).
    pub tls: Option<TlsFiles>,
    /// One JSON line per request on stderr.
    pub access_log: bool,
    /// How long in-flight requests may finish after SIGTERM.
    pub drain: Duration,
    /// Post budget alerts (soft cap and cap reached) to this webhook, signed.
    pub webhook: Option<WebhookTarget>,
    /// Seals the store's provider keys into snapshots (`--provider-kek-file` and
    /// `--fleet-public-key-file`).
    pub provider_sealing: Option<Arc<crate::provider_secrets::ProviderSealing>>,
    /// `--provider-kek-file` without `--fleet-public-key-file`: provider keys cannot be stored
    /// (they could not be sealed for the fleet).
    pub provider_kek_only: bool,
}

pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub(super) struct AppState {
    store: Arc<Mutex<Store>>,
    tokens: AdminTokens,
    signing_key: SigningKey,
    reissue_seconds: u64,
    snapshot_ttl_seconds: u64,
    usage_limits: UsageLimits,
    spend_publish_ms: u64,
    /// Held while a snapshot is built, so concurrent polls wait for one build and share it.
    published: tokio::sync::Mutex<Option<Arc<Published>>>,
    chunked: tokio::sync::Mutex<ChunkedSlots>,
    metrics: Metrics,
    access_log: bool,
    /// Set on SIGTERM: `/readyz` answers 503 while in-flight requests finish.
    draining: AtomicBool,
    /// What the provider-key endpoints encrypt with (see `ServeOptions`).
    provider_sealing: Option<Arc<crate::provider_secrets::ProviderSealing>>,
    provider_kek_only: bool,
}

type Shared = Arc<AppState>;

/// The authenticated admin token's name: the actor of every change made with it.
#[derive(Clone)]
pub(super) struct Actor(String);

/// Runs `work` on the store off the async threads (SQLite and PostgreSQL calls block); counts
/// store failures for `/metrics`.
async fn with_store<T, F>(state: &AppState, work: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(&mut Store) -> Result<T, Error> + Send + 'static,
{
    let store = Arc::clone(&state.store);
    let result = tokio::task::spawn_blocking(move || {
        let mut guard = store
            .lock()
            .map_err(|_| Error::internal("the store lock is poisoned"))?;
        work(&mut guard)
    })
    .await
    .map_err(|error| Error::internal(format!("a store task failed: {error}")))?;
    if result.as_ref().is_err_and(|error| error.status >= 500) {
        state.metrics.store_error();
    }
    result
}

/// How often an unchanged snapshot is issued again: as asked, but at least twice per lifetime,
/// so a filter always holds a snapshot with half its lifetime left while the control plane
/// answers.
pub fn reissue_interval(reissue_seconds: u64, ttl_seconds: u64) -> u64 {
    reissue_seconds.min(ttl_seconds / 2).max(1)
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

/// Serves until SIGINT or SIGTERM, then lets in-flight requests finish (up to `drain`).
pub fn serve(options: ServeOptions) -> Result<(), Error> {
    let address = resolve_listen(&options.listen, options.allow_non_loopback)?;
    let tls = options.tls.as_ref().map(tls::server_config).transpose()?;
    let mut store = Store::open_location(&options.db)?;
    store.set_provider_sealing(options.provider_sealing.clone());
    let listener = std::net::TcpListener::bind(address)
        .map_err(|error| Error::internal(format!("cannot listen on {address}: {error}")))?;
    let bound = listener
        .local_addr()
        .map_err(|error| Error::internal(error.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Error::internal(format!("cannot start the runtime: {error}")))?;
    runtime.block_on(async move {
        let state = Arc::new(AppState {
            store: Arc::new(Mutex::new(store)),
            tokens: options.tokens,
            signing_key: options.signing_key,
            reissue_seconds: reissue_interval(
                options.reissue_seconds,
                options.snapshot_ttl_seconds,
            ),
            snapshot_ttl_seconds: options.snapshot_ttl_seconds.max(1),
            usage_limits: options.usage_limits,
            spend_publish_ms: options.spend_publish_ms,
            published: tokio::sync::Mutex::new(None),
            chunked: tokio::sync::Mutex::new(ChunkedSlots::default()),
            metrics: Metrics::new(),
            access_log: options.access_log,
            draining: AtomicBool::new(false),
            provider_sealing: options.provider_sealing,
            provider_kek_only: options.provider_kek_only,
        });
        tokio::spawn(sweep_rotations(Arc::clone(&state)));
        if let Some(target) = options.webhook {
            tokio::spawn(webhooks::deliver_alerts(Arc::clone(&state), target));
        }
        if options.spend_publish_ms > 0 {
            tokio::spawn(publish_spend(
                Arc::clone(&state),
                Duration::from_millis(options.spend_publish_ms),
            ));
        }
        let handle = axum_server::Handle::new();
        tokio::spawn(drain_on_signal(
            handle.clone(),
            Arc::clone(&state),
            options.drain,
        ));
        let scheme = if tls.is_some() { "https" } else { "http" };
        // Tests and scripts read the bound address (with --listen 127.0.0.1:0) from this line.
        println!("keyward: listening on {scheme}://{bound}");
        let app = routes::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let served = match tls {
            Some(config) => match axum_server::from_tcp_rustls(listener, config) {
                Ok(server) => server.handle(handle).serve(app).await,
                Err(error) => Err(error),
            },
            None => match axum_server::from_tcp(listener) {
                Ok(server) => server.handle(handle).serve(app).await,
                Err(error) => Err(error),
            },
        };
        served.map_err(|error| Error::internal(format!("server error: {error}")))
    })
}

/// On SIGINT or SIGTERM: readiness fails (load balancers stop sending), the listener closes,
/// and requests in flight get `drain` to finish.
async fn drain_on_signal(handle: axum_server::Handle<SocketAddr>, state: Shared, drain: Duration) {
    shutdown_signal().await;
    state.draining.store(true, Ordering::SeqCst);
    eprintln!("keyward: shutting down, draining requests for up to {drain:?}");
    handle.graceful_shutdown(Some(drain));
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

/// Reported spend waits in the store until a new version carries it: at most one version per
/// interval from usage, however many Envoys report, since every data plane recompiles its
/// policy for each version.
async fn publish_spend(state: Shared, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        if let Err(error) = with_store(&state, |store| store.publish_pending_spend()).await {
            eprintln!("keyward: publishing reported spend failed: {error}");
        }
    }
}

/// Revokes keys whose rotation grace has ended, once a second, so the next snapshot carries
/// the revocation under a new version even when nobody changes anything.
async fn sweep_rotations(state: Shared) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        ticker.tick().await;
        let result = with_store(&state, |store| store.revoke_rotated_keys(now())).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_reissued_at_least_twice_per_lifetime() {
        assert_eq!(reissue_interval(300, 86_400), 300);
        assert_eq!(reissue_interval(300, 240), 120);
        assert_eq!(reissue_interval(300, 1), 1);
    }

    #[test]
    fn only_loopback_is_accepted_by_default() {
        assert!(resolve_listen("127.0.0.1:7070", false).is_ok());
        assert!(resolve_listen("[::1]:7070", false).is_ok());
        let error = resolve_listen("0.0.0.0:7070", false).unwrap_err();
        assert_eq!(error.code, "non_loopback_listen");
        assert!(resolve_listen("0.0.0.0:7070", true).is_ok());
        assert!(resolve_listen("not an address", false).is_err());
    }
}
