//! `keyward render`: ready Envoy and Istio configurations.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::shared::load_public_keys;
use crate::error::Error;
use crate::presets::{self, Preset};
use crate::render;
use crate::secrets;
use crate::upstream_tls::{self, Tls};

#[derive(Subcommand)]
pub enum RenderCommand {
    /// An Envoy bootstrap: listener with the keyward filter, the policy sync singleton, the
    /// control-plane and upstream clusters. JSON, which Envoy also reads as YAML.
    Envoy(RenderEnvoyArgs),
    /// Istio resources: a WasmPlugin (the filter, with a lease-mode policy sync) and a
    /// ServiceEntry for the control plane. JSON documents separated by `---` (YAML).
    Istio(RenderIstioArgs),
}

/// What the filters trust and present to the control plane.
#[derive(Args)]
pub struct TrustArgs {
    /// A public key the filters trust: ID=FILE, the `.pub` file `keyward secret signing-key`
    /// wrote (or a PEM public key). Repeat it while keys rotate: the filters accept snapshots
    /// signed with any of them. The private key is never needed here.
    #[arg(long = "public-key", value_name = "ID=FILE", required = true)]
    public_keys: Vec<String>,
    /// A file holding the data-plane token the filters send (`keyward dataplane token create`).
    /// keyward serve answers snapshot polls and usage reports only with one.
    #[arg(long)]
    dataplane_token_file: Option<PathBuf>,
    /// Speak TLS to the control plane (implied by an https:// --control-plane).
    #[arg(long)]
    control_plane_tls: bool,
    /// The CA bundle that verifies the control plane's certificate, as a path the proxy sees
    /// (default: the system bundle, /etc/ssl/certs/ca-certificates.crt).
    #[arg(long, value_name = "PATH")]
    control_plane_ca: Option<String>,
    /// TLS to the control plane WITHOUT checking its certificate: anyone on the path can pose
    /// as it. Flagged by `keyward audit --envoy-config`.
    #[arg(long)]
    control_plane_insecure_skip_verify: bool,
    /// Write the configuration to this file (created 0600: it holds the data-plane token)
    /// instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The parts of [`TrustArgs`] the renderers take.
struct Trust {
    public_keys: Vec<keyward_engine::signature::PublicKey>,
    dataplane_token: Option<String>,
    control_plane_tls: Tls,
    out: Option<PathBuf>,
}

impl TrustArgs {
    fn resolve(self, control_plane: &str) -> Result<Trust, Error> {
        let https = render::split_scheme(control_plane).1;
        let dataplane_token = self
            .dataplane_token_file
            .as_deref()
            .map(|path| secrets::read_token_file(path, "data-plane token"))
            .transpose()?;
        if dataplane_token.is_none() {
            eprintln!(
                "warning: no --dataplane-token-file: keyward serve will refuse the filters' \
                 snapshot polls and usage reports"
            );
        }
        Ok(Trust {
            public_keys: load_public_keys(&self.public_keys)?,
            dataplane_token,
            control_plane_tls: Tls::from_flags(
                "control-plane",
                self.control_plane_tls || https,
                self.control_plane_ca,
                self.control_plane_insecure_skip_verify,
            )?,
            out: self.out,
        })
    }
}

/// Prints the rendering, or writes it 0600 to `out`.
fn emit(out: Option<&Path>, text: &str) -> Result<(), Error> {
    match out {
        Some(path) => {
            secrets::write_private_file(path, text)?;
            eprintln!("wrote {} (mode 0600)", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// How the filter's policy sync polls the control plane.
#[derive(Args)]
pub struct SyncArgs {
    /// Milliseconds between polls.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Milliseconds before a poll is given up.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Sync with the chunked layout: a signed manifest and content-addressed chunks, for
    /// large key counts (docs/scale.md). Default: one signed envelope.
    #[arg(long)]
    chunked_sync: bool,
}

/// Which build of the filter `render envoy` configures.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HostBuild {
    /// The proxy-wasm module (sandboxed, portable; any Envoy with V8).
    Wasm,
    /// The Envoy dynamic module (Linux; the .so must match the Envoy build).
    Native,
}

#[derive(Args)]
pub struct RenderEnvoyArgs {
    /// Which build of the filter: wasm (needs --wasm) or native (an Envoy dynamic module that
    /// Envoy finds as lib<--native-module>.so in ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
    #[arg(long, value_enum, default_value = "wasm")]
    host: HostBuild,
    /// Path of keyward.wasm as Envoy will see it (with --host wasm).
    #[arg(long)]
    wasm: Option<String>,
    /// The dynamic module's name (with --host native): Envoy loads lib<NAME>.so.
    #[arg(long, default_value = render::NATIVE_MODULE_NAME)]
    native_module: String,
    /// Where `keyward serve` listens, as Envoy reaches it: HOST:PORT, or https://HOST:PORT.
    #[arg(long)]
    control_plane: String,
    #[command(flatten)]
    trust: TrustArgs,
    #[arg(long, default_value = "127.0.0.1:10000")]
    listen: String,
    #[arg(long, default_value = "127.0.0.1:9901")]
    admin: String,
    /// The provider (or any upstream) requests go to: HOST:PORT, or https://HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:10001")]
    upstream: String,
    /// Speak TLS to the upstream (SNI and Host set to its host name), verifying its certificate
    /// against --upstream-ca and its name against the host.
    #[arg(long)]
    upstream_tls: bool,
    /// The CA bundle that verifies the upstream's certificate, as a path Envoy sees (default:
    /// the system bundle, /etc/ssl/certs/ca-certificates.crt).
    #[arg(long, value_name = "PATH")]
    upstream_ca: Option<String>,
    /// TLS to the upstream WITHOUT checking its certificate: anyone on the path can pose as the
    /// provider and receive identity headers. Flagged by `keyward audit --envoy-config`.
    #[arg(long)]
    upstream_insecure_skip_verify: bool,
    #[command(flatten)]
    sync: SyncArgs,
    /// A named Envoy route, NAME=PATH_PREFIX (repeatable), placed before the catch-all
    /// `default` route; plugin routes match it with `match.route_name`.
    #[arg(long = "route", value_name = "NAME=PREFIX")]
    routes: Vec<String>,
    /// Switch the filter off on this Envoy route (repeatable): FilterConfig{disabled: true}.
    #[arg(long = "disable-on", value_name = "ROUTE")]
    disabled_on: Vec<String>,
    /// The rest of the plugin configuration (routes, mode, key formats...) as a JSON file;
    /// the sync block is added.
    #[arg(long)]
    plugin_config: Option<PathBuf>,
    /// The route table of a provider's API (scopes, models from the body, metering, /healthz
    /// exempt, unmatched paths refused), merged under --plugin-config.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// A last-known-good snapshot file (absolute, as Envoy sees it), kept by `keyward snapshot
    /// fetch`: an Envoy started while the control plane is down loads it (verified like any
    /// snapshot) instead of refusing every request. Envoy refuses to start when the file is
    /// missing; an empty file means "none yet". Envelope layout only.
    #[arg(long, value_name = "PATH")]
    last_good_file: Option<String>,
    /// The loopback address Envoy serves the last-known-good file to its own filter on (only
    /// to requests bearing the data-plane token).
    #[arg(long, default_value = "127.0.0.1:9902")]
    last_good_listen: String,
}

#[derive(Args)]
pub struct RenderIstioArgs {
    /// Where Istio fetches the module: oci://REGISTRY/REPO:TAG, file://PATH or https://URL.
    #[arg(long)]
    wasm_url: String,
    /// The module itself (target/keyward.wasm): its sha256, for file:// and http(s):// URLs;
    /// with oci://, checked against the layout's Wasm layer.
    #[arg(long)]
    wasm_file: Option<PathBuf>,
    /// The OCI image layout `make oci` wrote (target/oci), for oci:// URLs: Istio checks the
    /// image manifest's digest.
    #[arg(long)]
    oci_layout: Option<PathBuf>,
    /// Where `keyward serve` listens, as the proxies reach it: HOST:PORT or https://HOST:PORT
    /// (a host name). With TLS, a DestinationRule has the sidecar originate it and verify the
    /// control plane's certificate.
    #[arg(long)]
    control_plane: String,
    #[command(flatten)]
    trust: TrustArgs,
    /// The WasmPlugin's name (the ServiceEntry is NAME-control-plane).
    #[arg(long, default_value = "keyward")]
    name: String,
    #[arg(long)]
    namespace: Option<String>,
    /// Workloads to run on: LABEL=VALUE[,LABEL=VALUE]. Without it (and without a target ref),
    /// every workload of the namespace.
    #[arg(long, conflicts_with_all = ["target_ref_kind", "target_ref_name"])]
    selector: Option<String>,
    /// Attach to a resource instead, e.g. `Gateway` (group gateway.networking.k8s.io) or `Service`.
    #[arg(long, requires = "target_ref_name")]
    target_ref_kind: Option<String>,
    #[arg(long, requires = "target_ref_kind")]
    target_ref_name: Option<String>,
    /// `spec.match[].mode`: CLIENT, SERVER or CLIENT_AND_SERVER.
    #[arg(long)]
    match_mode: Option<String>,
    /// A keyward plugin configuration (JSON: routes, mode, …); `sync` is added to it.
    #[arg(long)]
    plugin_config: Option<PathBuf>,
    /// Leave out the ServiceEntry (the control plane is already a Service in the mesh).
    #[arg(long)]
    no_service_entry: bool,
    /// Leave out the EnvoyFilter that turns on Envoy's own path normalization and refuses
    /// escaped slashes and header names with underscores (keyward still refuses ambiguous
    /// requests itself; see docs/deploy-istio.md).
    #[arg(long)]
    no_hardening: bool,
    /// The route table of a provider's API, merged under --plugin-config (see render envoy).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    #[command(flatten)]
    sync: SyncArgs,
}

/// The `--plugin-config` file of the renderers: a JSON document, or an error naming the flag.
fn read_plugin_config(path: Option<&Path>) -> Result<Option<serde_json::Value>, Error> {
    let Some(path) = path else {
        return Ok(None);
    };
    let bytes = fs::read(path).map_err(|error| {
        Error::invalid(
            "unreadable_file",
            format!(
                "cannot read the plugin configuration {}: {error}",
                path.display()
            ),
        )
    })?;
    serde_json::from_slice(&bytes).map(Some).map_err(|error| {
        Error::invalid(
            "invalid_plugin_config",
            format!("--plugin-config: not JSON: {error}"),
        )
    })
}

fn render_istio(args: RenderIstioArgs) -> Result<(), Error> {
    let read = |path: &PathBuf, what: &str| {
        fs::read(path).map_err(|error| {
            Error::invalid(
                "unreadable_file",
                format!("cannot read the {what} {}: {error}", path.display()),
            )
        })
    };
    let base_config = presets::apply(
        args.preset,
        read_plugin_config(args.plugin_config.as_deref())?,
    )?;
    if let Some(warning) = presets::enforcement_warning(base_config.as_ref()) {
        eprintln!("{warning}");
    }
    let target = match (args.target_ref_kind, args.target_ref_name) {
        (Some(kind), Some(name)) => render::IstioTarget::TargetRef { kind, name },
        _ => render::IstioTarget::Selector(render::parse_selector(
            args.selector.as_deref().unwrap_or(""),
        )?),
    };
    let sha256 = render::wasm_plugin_sha256(
        &args.wasm_url,
        args.wasm_file
            .as_ref()
            .map(|path| read(path, "Wasm module"))
            .transpose()?
            .as_deref(),
        args.oci_layout.as_deref(),
    )?;
    let trust = args.trust.resolve(&args.control_plane)?;
    let host = render::split_scheme(&args.control_plane).0;
    if let Some(warning) = upstream_tls::warnings(
        "the control plane",
        host.rsplit_once(':').map_or(host, |(host, _)| host),
        &trust.control_plane_tls,
    ) {
        eprintln!("{warning}");
    }
    let options = render::IstioOptions {
        name: args.name,
        namespace: args.namespace,
        wasm_url: args.wasm_url,
        sha256,
        control_plane: args.control_plane,
        control_plane_tls: trust.control_plane_tls,
        public_keys: trust.public_keys,
        dataplane_token: trust.dataplane_token,
        target,
        match_mode: args.match_mode,
        base_config,
        service_entry: !args.no_service_entry,
        hardening: !args.no_hardening,
        interval_ms: args.sync.interval_ms,
        timeout_ms: args.sync.timeout_ms,
        chunked: args.sync.chunked_sync,
    };
    let text = render::yaml_stream(&render::istio_resources(&options)?)?;
    emit(trust.out.as_deref(), &text)?;
    if options.dataplane_token.is_some() {
        eprintln!(
            "note: the WasmPlugin's pluginConfig carries the data-plane token (it reads \
             snapshots and reports usage, it cannot sign); who can read WasmPlugins in that \
             namespace can read it"
        );
    }
    Ok(())
}

pub fn run(command: RenderCommand) -> Result<ExitCode, Error> {
    match command {
        RenderCommand::Envoy(args) => render_envoy(args)?,
        RenderCommand::Istio(args) => render_istio(args)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn render_envoy(args: RenderEnvoyArgs) -> Result<(), Error> {
    let RenderEnvoyArgs {
        host,
        wasm,
        native_module,
        control_plane,
        trust,
        listen,
        admin,
        upstream,
        upstream_tls,
        upstream_ca,
        upstream_insecure_skip_verify,
        sync,
        routes,
        disabled_on,
        plugin_config,
        preset,
        last_good_file,
        last_good_listen,
    } = args;
    let routes = routes
        .iter()
        .map(|spec| match spec.split_once('=') {
            Some((name, prefix)) => Ok((name.to_owned(), prefix.to_owned())),
            None => Err(Error::invalid(
                "invalid_route",
                format!("--route {spec}: expected NAME=PREFIX"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let plugin_config = presets::apply(preset, read_plugin_config(plugin_config.as_deref())?)?;
    if let Some(warning) = presets::enforcement_warning(plugin_config.as_ref()) {
        eprintln!("{warning}");
    }
    let trust = trust.resolve(&control_plane)?;
    let (upstream_address, upstream_https) = render::split_scheme(&upstream);
    let upstream_tls = Tls::from_flags(
        "upstream",
        upstream_tls || upstream_https,
        upstream_ca,
        upstream_insecure_skip_verify,
    )?;
    for (what, address, tls) in [
        (
            "the control plane",
            render::split_scheme(&control_plane).0,
            &trust.control_plane_tls,
        ),
        ("the upstream", upstream_address, &upstream_tls),
    ] {
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        if let Some(warning) = upstream_tls::warnings(what, host.trim_matches(['[', ']']), tls) {
            eprintln!("{warning}");
        }
    }
    let build = match (host, wasm) {
        (HostBuild::Wasm, Some(wasm)) => render::FilterBuild::Wasm(wasm),
        (HostBuild::Wasm, None) => {
            return Err(Error::invalid(
                "missing_wasm",
                "--wasm PATH is needed with --host wasm (the default)",
            ))
        }
        (HostBuild::Native, None) => render::FilterBuild::Native(native_module.clone()),
        (HostBuild::Native, Some(_)) => {
            return Err(Error::invalid(
                "invalid_host",
                "--wasm goes with --host wasm; the native build is found by --native-module",
            ))
        }
    };
    let options = render::EnvoyOptions {
        build,
        control_plane,
        control_plane_tls: trust.control_plane_tls,
        public_keys: trust.public_keys,
        dataplane_token: trust.dataplane_token,
        listen,
        admin,
        upstream,
        upstream_tls,
        interval_ms: sync.interval_ms,
        timeout_ms: sync.timeout_ms,
        chunked: sync.chunked_sync,
        routes,
        disabled_on,
        plugin_config,
        last_good_file,
        last_good_listen,
    };
    let mut text = serde_json::to_string_pretty(&render::envoy_bootstrap(&options)?)?;
    text.push('\n');
    emit(trust.out.as_deref(), &text)?;
    if options.dataplane_token.is_some() {
        eprintln!(
            "note: this configuration carries the data-plane token (it reads snapshots and \
             reports usage, it cannot sign): keep it 0600 (--out writes it so)"
        );
    }
    if host == HostBuild::Native {
        eprintln!(
            "note: start Envoy with ENVOY_DYNAMIC_MODULES_SEARCH_PATH set to the directory holding \
             lib{native_module}.so (target/keyward.so, copied under that name); it must be built \
             for this Envoy's version (docs/deploy-envoy.md)"
        );
    }
    Ok(())
}
