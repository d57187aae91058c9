//! `keyward serve`: the admin API, the snapshot endpoints and the usage endpoint.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::shared::SigningKeyArgs;
use super::StoreArg;
use crate::error::Error;
use crate::publish::DEFAULT_SNAPSHOT_TTL;
use crate::secrets;
use crate::server;
use crate::store::UsageLimits;
use crate::units::{parse_duration_seconds, parse_usd};

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    #[command(flatten)]
    provider_sealing: super::provider_key::ProviderSealingArgs,
    /// Allow a listen address other than loopback (put TLS and a firewall in front).
    #[arg(long)]
    allow_non_loopback: bool,
    /// File of admin tokens: `NAME:TOKEN` a line (`keyward secret admin-token`).
    #[arg(long, env = "KEYWARD_ADMIN_TOKEN_FILE")]
    admin_token_file: PathBuf,
    #[command(flatten)]
    signing: SigningKeyArgs,
    /// Re-issue an unchanged snapshot (new issued_at and expires_at) this often; at least twice
    /// per --snapshot-ttl whatever this says.
    #[arg(long, default_value_t = 300)]
    reissue_seconds: u64,
    /// How long a snapshot is valid: filters refuse it afterwards (a captured snapshot cannot be
    /// replayed longer), and a data plane cut off from the control plane that long fails closed.
    #[arg(long, default_value = DEFAULT_SNAPSHOT_TTL)]
    snapshot_ttl: String,
    /// Usage reports: the most one request may be charged without usage, in USD. Keep it at or
    /// above the filters' metering.reservation_ceiling_microusd (default $1).
    #[arg(long, default_value = "1")]
    max_request_charge_usd: String,
    /// Usage reports: input plus output tokens one request may report.
    #[arg(long, default_value_t = 2_000_000)]
    max_request_tokens: u64,
    /// Usage reports: the most one batch (one data plane, one report interval) may add up to,
    /// in USD. A batch over it is refused and kept for audit.
    #[arg(long, default_value = "1000")]
    max_report_usd: String,
    /// Fold reported spend into a new snapshot version at most this often (milliseconds; 0:
    /// with every usage batch). Every version makes every Envoy recompile its policy: with a
    /// million keys, set it above the time they take to apply one (see docs/scale.md).
    #[arg(long, default_value_t = 1000)]
    spend_publish_ms: u64,
    /// Serve HTTPS with this certificate chain (PEM); with --tls-key.
    #[arg(long, env = "KEYWARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM; keep it mode 0600).
    #[arg(long, env = "KEYWARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Log one JSON line per request on stderr (no token, key, body, query or raw path).
    #[arg(long, env = "KEYWARD_ACCESS_LOG")]
    access_log: bool,
    /// After SIGTERM, how long requests in flight may finish (readiness fails meanwhile).
    #[arg(long, default_value = "20s")]
    drain: String,
    /// Post budget alerts (a soft cap or cap reached, once per window) to this URL as
    /// Slack-compatible JSON, signed with --webhook-secret-file.
    #[arg(long, env = "KEYWARD_WEBHOOK_URL", requires = "webhook_secret_file")]
    webhook_url: Option<String>,
    /// The webhook signing secret (base64, at least 32 bytes; `keyward secret webhook-secret`
    /// makes one), mode 0600.
    #[arg(long, env = "KEYWARD_WEBHOOK_SECRET_FILE", requires = "webhook_url")]
    webhook_secret_file: Option<PathBuf>,
}

/// `--snapshot-ttl`: at least 2 s, so that a snapshot can be re-issued within its lifetime.
pub fn snapshot_ttl_seconds(text: &str) -> Result<u64, Error> {
    let seconds = parse_duration_seconds(text)?;
    if seconds < 2 {
        return Err(Error::invalid(
            "invalid_snapshot_ttl",
            "--snapshot-ttl must be at least 2s",
        ));
    }
    Ok(seconds)
}

pub fn run(db: &StoreArg, args: ServeArgs) -> Result<ExitCode, Error> {
    // Check the address before touching any file, so a refused address changes nothing.
    server::resolve_listen(&args.listen, args.allow_non_loopback)?;
    let token_text = secrets::read_secret_file(&args.admin_token_file, "admin token")?;
    let options = server::ServeOptions {
        provider_sealing: args.provider_sealing.load()?,
        provider_kek_only: args.provider_sealing.kek_only(),
        db: db.location.clone(),
        listen: args.listen,
        allow_non_loopback: args.allow_non_loopback,
        tokens: secrets::AdminTokens::parse(&token_text)?,
        signing_key: secrets::load_signing_key(
            &args.signing.signing_key_id,
            &args.signing.signing_key_file,
        )?,
        reissue_seconds: args.reissue_seconds,
        snapshot_ttl_seconds: snapshot_ttl_seconds(&args.snapshot_ttl)?,
        usage_limits: UsageLimits {
            max_request_charge_microusd: parse_usd(&args.max_request_charge_usd)?,
            max_tokens_per_request: args.max_request_tokens,
            max_batch_cost_microusd: parse_usd(&args.max_report_usd)?,
            ..UsageLimits::default()
        },
        spend_publish_ms: args.spend_publish_ms,
        tls: match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(server::TlsFiles { cert, key }),
            _ => None,
        },
        access_log: args.access_log,
        drain: Duration::from_secs(parse_duration_seconds(&args.drain)?),
        webhook: match (args.webhook_url, args.webhook_secret_file) {
            (Some(url), Some(file)) => {
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    return Err(Error::invalid(
                        "invalid_webhook_url",
                        "--webhook-url must be an http:// or https:// URL",
                    ));
                }
                Some(server::WebhookTarget {
                    url,
                    secret: secrets::load_webhook_secret(&file)?,
                })
            }
            _ => None,
        },
    };
    server::serve(options)?;
    Ok(ExitCode::SUCCESS)
}
