//! `keyward serve`: the admin API, the snapshot endpoints and the usage endpoint.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::shared::SigningKeyArgs;
use super::StoreArg;
use crate::error::Error;
use crate::secrets;
use crate::server;
use crate::units::parse_duration_seconds;

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Allow a listen address other than loopback (put TLS and a firewall in front).
    #[arg(long)]
    allow_non_loopback: bool,
    /// File of admin tokens: `NAME:TOKEN` a line (`keyward secret admin-token`).
    #[arg(long, env = "KEYWARD_ADMIN_TOKEN_FILE")]
    admin_token_file: PathBuf,
    #[command(flatten)]
    signing: SigningKeyArgs,
    /// Re-issue an unchanged snapshot (new issued_at) this often, for filters with a max age.
    #[arg(long, default_value_t = 300)]
    reissue_seconds: u64,
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
    /// The webhook signing secret (base64, at least 32 bytes; `keyward secret signing-key`
    /// makes one), mode 0600.
    #[arg(long, env = "KEYWARD_WEBHOOK_SECRET_FILE", requires = "webhook_url")]
    webhook_secret_file: Option<PathBuf>,
}

pub fn run(db: &StoreArg, args: ServeArgs) -> Result<ExitCode, Error> {
    // Check the address before touching any file, so a refused address changes nothing.
    server::resolve_listen(&args.listen, args.allow_non_loopback)?;
    let token_text = secrets::read_secret_file(&args.admin_token_file, "admin token")?;
    let options = server::ServeOptions {
        db: db.location.clone(),
        listen: args.listen,
        allow_non_loopback: args.allow_non_loopback,
        tokens: secrets::AdminTokens::parse(&token_text)?,
        signing_key: secrets::load_signing_key(
            &args.signing.signing_key_id,
            &args.signing.signing_key_file,
        )?,
        reissue_seconds: args.reissue_seconds,
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
                    key: secrets::load_signing_key("webhook", &file)?,
                })
            }
            _ => None,
        },
    };
    server::serve(options)?;
    Ok(ExitCode::SUCCESS)
}
