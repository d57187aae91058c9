//! `keyward explain`: the filter's decision for one key on one route, step by step through the
//! decision table (README "Decision table"). The steps and the decision are the engine's own
//! trace of its request core (`keyward_engine::explain`), run on a representative request: the
//! same code the filter runs, so the two cannot disagree. Never prints a hash or a secret.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use keyward_engine::config::Mode;
use keyward_engine::explain::Verdict;
use keyward_engine::route::ProjectSource;
use keyward_engine::trace::StepResult;

use crate::audit::{self, SnapshotSource};
use crate::error::Error;
use crate::synthetic::{self, RequestShape};

#[derive(Args, Debug, Clone)]
pub struct ExplainArgs {
    /// The key to explain (its id, as `keyward key list` shows it).
    #[arg(long)]
    pub key_id: String,
    /// A route name from the configuration, or `(fallback)` for unmatched requests.
    #[arg(long)]
    pub route: String,
    #[command(flatten)]
    pub source: SnapshotSource,
    /// The project the request names (header or path, as the route reads it).
    #[arg(long)]
    pub project: Option<String>,
    /// The model the request names (header, or the JSON body on routes that read it).
    #[arg(long)]
    pub model: Option<String>,
    /// The whole JSON request body, for routes that read the body (default: `{"model": …}`).
    #[arg(long)]
    pub body: Option<PathBuf>,
    /// The request comes from a browser (carries `Origin`).
    #[arg(long)]
    pub origin: bool,
    #[arg(long)]
    pub json: bool,
}

fn result_name(result: StepResult) -> &'static str {
    match result {
        StepResult::Pass => "PASS",
        StepResult::Fail => "FAIL",
        StepResult::Skip => "SKIP",
    }
}

pub fn run(args: &ExplainArgs) -> Result<ExitCode, Error> {
    let loaded = audit::load(&args.source)?;
    let settings = &loaded.config.settings;
    let routes = audit::routes(settings);
    let Some((route, _)) = routes.iter().find(|(_, label)| label == &args.route) else {
        let names: Vec<&str> = routes.iter().map(|(_, label)| label.as_str()).collect();
        return Err(Error::invalid(
            "unknown_route",
            format!("no route {:?}; routes: {}", args.route, names.join(", ")),
        ));
    };
    let record = loaded
        .snapshot
        .keys
        .iter()
        .find(|key| key.id == args.key_id)
        .ok_or_else(|| {
            Error::invalid(
                "unknown_key",
                format!(
                    "no key {:?} in snapshot version {}: the filter answers 401 invalid_api_key for it",
                    args.key_id, loaded.snapshot.version
                ),
            )
        })?;
    let body = match &args.body {
        Some(path) => Some(std::fs::read(path).map_err(|error| {
            Error::invalid(
                "unreadable_file",
                format!("cannot read the body {}: {error}", path.display()),
            )
        })?),
        None => None,
    };
    let shape = RequestShape {
        project: args.project.clone(),
        model: args.model.clone(),
        origin: args.origin,
        body,
    };
    let request = synthetic::build(&loaded, route, record, &shape).ok_or_else(|| {
        Error::invalid(
            "no_key_format",
            format!(
                "no configured key format can carry key {:?} (its environment?)",
                args.key_id
            ),
        )
    })?;
    let reachable = synthetic::reaches(settings, route, &request);
    let explanation = synthetic::decide(&loaded, &request);
    let shadow = settings.mode == Mode::Shadow;
    if args.json {
        let body = serde_json::json!({
            "key_id": args.key_id,
            "route": args.route,
            "route_reachable": reachable,
            "request": {
                "project": shape.project,
                "model": shape.model,
                "origin": shape.origin,
                "project_source": match &route.project {
                    Some(ProjectSource::Header(name)) => format!("header {name}"),
                    Some(ProjectSource::PathPattern(pattern)) => format!("path {pattern}"),
                    None => "none".to_owned(),
                },
            },
            "shadow_mode": shadow,
        });
        // The engine's explanation, flattened: decision (and status, code, message or identity
        // headers) and the steps.
        let mut body = body;
        if let (Some(fields), serde_json::Value::Object(explained)) =
            (body.as_object_mut(), serde_json::to_value(&explanation)?)
        {
            fields.extend(explained);
        }
        println!("{}", serde_json::to_string_pretty(&body)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "key {} on route {} (snapshot version {})",
        args.key_id, args.route, loaded.snapshot.version
    );
    if !reachable {
        println!("note: an earlier route takes every request this route would match; shown is what happens to them");
    }
    for step in &explanation.steps {
        println!(
            "  {:<4} {:<6} {:<28} {}",
            step.row,
            result_name(step.result),
            step.check,
            step.detail
        );
    }
    println!("note: rate limits and live spend are per Envoy; this is a fresh Envoy's answer with the snapshot's spend");
    match &explanation.verdict {
        Verdict::Deny { status, code, .. } => println!("decision: deny {status} {code}"),
        Verdict::Allow {
            headers,
            shadow_denied,
        } => {
            let identity: Vec<String> = headers
                .iter()
                .map(|(name, value)| format!("{name}: {value}"))
                .collect();
            match shadow_denied {
                Some(code) => println!(
                    "decision: allow (shadow mode: would deny {code}; logged, let through)"
                ),
                None => println!("decision: allow, forwarded with {}", identity.join(", ")),
            }
        }
        Verdict::Exempt => println!("decision: exempt (passes without authentication)"),
        Verdict::FailOpen => println!("decision: fail_open (passes: no usable policy)"),
    }
    Ok(ExitCode::SUCCESS)
}
