//! `keyward explain`: the filter's decision for one key on one route, step by step through the
//! decision table (README "Decision table"). The steps are read from the engine's compiled
//! policy and route; the final decision is the engine's own (`decide`), and the two are checked
//! against each other. Never prints a hash or a secret.

use std::process::ExitCode;

use clap::Args;
use keyward_engine::config::PolicyUnavailable;
use keyward_engine::denial::DenyCode;
use keyward_engine::route::{ModelSource, ProjectSource, Route};
use keyward_engine::snapshot::{KeyScope, KeyStatus, ProjectStatus};
use serde::Serialize;

use crate::audit::{self, Loaded, RequestShape, SnapshotSource};
use crate::error::Error;

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
    /// The model the request names (on routes that read it from a header).
    #[arg(long)]
    pub model: Option<String>,
    /// The request comes from a browser (carries `Origin`).
    #[arg(long)]
    pub origin: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Step {
    step: &'static str,
    check: &'static str,
    /// `pass`, `fail` or `skip` (not relevant for this key or route, or not decidable offline:
    /// rate limits).
    result: &'static str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
}

struct Walk {
    steps: Vec<Step>,
    failed: bool,
}

impl Walk {
    fn push(
        &mut self,
        step: &'static str,
        check: &'static str,
        passed: bool,
        detail: String,
        code: &'static str,
    ) -> bool {
        let result = if self.failed {
            "skip"
        } else if passed {
            "pass"
        } else {
            "fail"
        };
        let first_failure = !self.failed && !passed;
        self.steps.push(Step {
            step,
            check,
            result,
            detail,
            code: first_failure.then_some(code),
        });
        self.failed |= !passed;
        first_failure
    }

    fn skip(&mut self, step: &'static str, check: &'static str, detail: &str) {
        self.steps.push(Step {
            step,
            check,
            result: "skip",
            detail: detail.to_owned(),
            code: None,
        });
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(",")
    }
}

fn walk(loaded: &Loaded, route: &Route, key_id: &str, shape: &RequestShape) -> Walk {
    let settings = &loaded.config.settings;
    let policy = &loaded.policy;
    let now = loaded.now;
    let mut walk = Walk {
        steps: Vec::new(),
        failed: false,
    };
    if route.exempt {
        walk.steps.push(Step {
            step: "0",
            check: "route is exempt",
            result: "pass",
            detail: "exempt route: no authentication".to_owned(),
            code: None,
        });
        return walk;
    }
    walk.push(
        "0",
        "route is exempt",
        true,
        "not exempt: authentication required".to_owned(),
        "",
    );
    let fresh = policy.is_fresh(now, settings.max_policy_age_seconds);
    let fail_open = settings.policy_unavailable == PolicyUnavailable::FailOpen;
    walk.push(
        "1",
        "usable policy",
        fresh,
        if fresh {
            format!("snapshot version {} is usable", policy.version)
        } else if fail_open {
            "the snapshot is expired or too old; fail_open lets the request pass".to_owned()
        } else {
            "the snapshot is expired or older than max_policy_age_seconds".to_owned()
        },
        "policy_unavailable",
    );
    if !fresh {
        return walk;
    }
    walk.push(
        "2-3",
        "one well-formed credential",
        true,
        "assumed: the request carries this key in a configured format".to_owned(),
        "",
    );
    let key = policy.keys().iter().find(|key| key.id == key_id);
    walk.push(
        "4",
        "known key, right secret",
        key.is_some(),
        if key.is_some() {
            "the key is in the snapshot (the secret is assumed right)".to_owned()
        } else {
            "no key with this id in the snapshot".to_owned()
        },
        "invalid_api_key",
    );
    let Some(key) = key else {
        return walk;
    };
    let key_project = match &key.scope {
        KeyScope::Project(_) => key_project(loaded, key_id),
        KeyScope::Org(_) => None,
    };
    walk.push(
        "5",
        "key not revoked",
        key.status != KeyStatus::Revoked,
        format!("status {:?}", key.status).to_lowercase(),
        "key_revoked",
    );
    let expired = key.expires_at.is_some_and(|at| now >= at);
    walk.push(
        "5",
        "key not expired",
        !expired,
        match key.expires_at {
            Some(at) => format!("expires at {}", crate::units::format_time(at)),
            None => "no expiry".to_owned(),
        },
        "key_expired",
    );
    walk.push(
        "6",
        "key not paused",
        key.status != KeyStatus::Paused,
        format!("status {:?}", key.status).to_lowercase(),
        "key_paused",
    );
    match &key_project {
        Some(project) => {
            walk.push(
                "7",
                "key's project active",
                project.status == ProjectStatus::Active,
                format!("project {} is {:?}", project.id, project.status).to_lowercase(),
                "project_archived",
            );
        }
        None => walk.skip("7", "key's project active", "org key: no own project"),
    }
    let environment_ok =
        route.environments.is_empty() || route.environments.contains(&key.environment);
    walk.push(
        "8",
        "environment allowed",
        environment_ok,
        format!(
            "key environment {}; route allows {}",
            key.environment,
            if route.environments.is_empty() {
                "any".to_owned()
            } else {
                list(&route.environments)
            }
        ),
        "environment_mismatch",
    );
    let named = if route.project.is_some() {
        shape.project.as_deref()
    } else {
        None
    };
    let mut acting_project = key_project.clone();
    match (&key.scope, named) {
        (KeyScope::Project(_), None) => {
            walk.push(
                "9",
                "project scope",
                true,
                "the request names no project: the key's own applies".to_owned(),
                "",
            );
        }
        (KeyScope::Project(_), Some(named)) => {
            let own = key_project
                .as_ref()
                .is_some_and(|project| project.id == named);
            walk.push(
                "9",
                "project scope",
                own,
                if own {
                    "the request names the key's own project".to_owned()
                } else {
                    "the request names another project".to_owned()
                },
                "project_mismatch",
            );
        }
        (KeyScope::Org(org), Some(named)) => {
            let project = policy.project(named).filter(|project| &project.org == org);
            walk.push(
                "9",
                "project scope",
                project.is_some(),
                if project.is_some() {
                    format!("org key names {named}, a project of org {org}")
                } else {
                    "org key names a project that is unknown or of another org".to_owned()
                },
                "project_mismatch",
            );
            if let Some(project) = project {
                walk.push(
                    "9a",
                    "named project active",
                    project.status == ProjectStatus::Active,
                    format!("project {} is {:?}", project.id, project.status).to_lowercase(),
                    "project_archived",
                );
                acting_project = Some(project.clone());
            }
        }
        (KeyScope::Org(org), None) => {
            walk.push(
                "9",
                "project scope",
                true,
                format!("org key of {org}, no project named"),
                "",
            );
            walk.push(
                "9b",
                "project named when required",
                !route.require_project,
                if route.require_project {
                    "the route requires an org key to name a project".to_owned()
                } else {
                    "the route does not require a project".to_owned()
                },
                "project_required",
            );
        }
    }
    walk.push(
        "9c",
        "browser use",
        !(route.deny_browser_requests && shape.origin),
        format!(
            "route {} browser requests; request {}",
            if route.deny_browser_requests {
                "denies"
            } else {
                "allows"
            },
            if shape.origin {
                "has Origin"
            } else {
                "has no Origin"
            }
        ),
        "browser_request_denied",
    );
    let missing: Vec<String> = route
        .scopes
        .iter()
        .filter(|scope| !key.has_scope(scope))
        .cloned()
        .collect();
    walk.push(
        "10",
        "scopes",
        missing.is_empty(),
        format!(
            "route requires {}; key has {}{}",
            list(&route.scopes),
            list(&key.scopes),
            if missing.is_empty() {
                String::new()
            } else {
                format!("; missing {}", missing.join(","))
            }
        ),
        "insufficient_scope",
    );
    match (&route.model, &key.models) {
        (Some(source), Some(_)) => {
            let model = match source {
                ModelSource::Fixed(model) => Some(model.as_str()),
                ModelSource::Header(_) | ModelSource::Body => shape.model.as_deref(),
            };
            let allowed = model.is_some_and(|model| key.allows_model(model));
            walk.push(
                "10",
                "model allowed",
                allowed,
                match model {
                    Some(model) if allowed => format!("model {model} is on the key's allow-list"),
                    Some(model) => format!("model {model} is not on the key's allow-list"),
                    None => {
                        "the key has a model allow-list and the request names no model".to_owned()
                    }
                },
                "model_not_allowed",
            );
        }
        (None, _) => walk.skip("10", "model allowed", "the route does not check models"),
        (_, None) => walk.skip("10", "model allowed", "the key allows every model"),
    }
    let over = |cap: Option<u64>, spent: u64| cap.is_some_and(|cap| spent >= cap);
    let money = |cap: Option<u64>, soft: Option<u64>, spent: u64| {
        let mut text = match cap {
            Some(cap) => format!(
                "spent {} of {} USD",
                crate::units::format_usd(spent),
                crate::units::format_usd(cap)
            ),
            None => "no cap".to_owned(),
        };
        if let Some(soft) = soft {
            text.push_str(&format!(
                "; soft cap {} USD{}",
                crate::units::format_usd(soft),
                if spent >= soft {
                    " reached: answers carry the soft-cap header"
                } else {
                    ""
                }
            ));
        }
        text
    };
    walk.push(
        "11",
        "key spend cap",
        !over(key.spend_cap_microusd, key.spent_microusd),
        money(
            key.spend_cap_microusd,
            key.spend_soft_cap_microusd,
            key.spent_microusd,
        ),
        "spend_cap_exceeded",
    );
    match &acting_project {
        Some(project) => {
            walk.push(
                "11",
                "project spend cap",
                !over(project.spend_cap_microusd, project.spent_microusd),
                format!(
                    "project {}: {}",
                    project.id,
                    money(
                        project.spend_cap_microusd,
                        project.spend_soft_cap_microusd,
                        project.spent_microusd
                    )
                ),
                "spend_cap_exceeded",
            );
        }
        None => walk.skip("11", "project spend cap", "no project to charge"),
    }
    // The counters live in each Envoy instance: the limits are shown, never decided here.
    let limits: Vec<String> = key
        .rate_limits
        .map(|limits| {
            [
                limits
                    .requests_per_minute
                    .map(|rpm| format!("{rpm} requests/min")),
                limits
                    .tokens_per_minute
                    .map(|tpm| format!("{tpm} tokens/min")),
            ]
            .into_iter()
            .flatten()
            .collect()
        })
        .unwrap_or_default();
    walk.skip(
        "12",
        "rate limits",
        &if limits.is_empty() {
            "no rate limits".to_owned()
        } else {
            format!(
                "{} per Envoy instance; counted by the filter, not checked here",
                limits.join(", ")
            )
        },
    );
    walk
}

fn key_project(loaded: &Loaded, key_id: &str) -> Option<keyward_engine::snapshot::Project> {
    let record = loaded.snapshot.keys.iter().find(|key| key.id == key_id)?;
    loaded.policy.project(record.project.as_deref()?).cloned()
}

pub fn run(args: &ExplainArgs) -> Result<ExitCode, Error> {
    let loaded = audit::load(&args.source)?;
    let settings = &loaded.config.settings;
    let route = audit::routes(settings)
        .into_iter()
        .find(|(_, label)| label == &args.route)
        .map(|(route, _)| route)
        .ok_or_else(|| {
            let names: Vec<String> = audit::routes(settings)
                .into_iter()
                .map(|(_, label)| label)
                .collect();
            Error::invalid(
                "unknown_route",
                format!("no route {:?}; routes: {}", args.route, names.join(", ")),
            )
        })?;
    let shape = RequestShape {
        project: args.project.clone(),
        model: args.model.clone(),
        origin: args.origin,
    };
    let walk = walk(&loaded, route, &args.key_id, &shape);
    let walked_code = walk.steps.iter().find_map(|step| step.code);
    let record = loaded
        .snapshot
        .keys
        .iter()
        .find(|key| key.id == args.key_id);
    let engine =
        record.map(|record| audit::engine_decision(&loaded, route, &args.route, record, &shape));
    // Decision: the engine's when it could be asked; otherwise the walk's (unknown key).
    let (decision, code, status) = match &engine {
        Some(decision) if decision.decision != "unknown" => {
            (decision.decision, decision.code, decision.status)
        }
        _ => match walked_code {
            Some(code) => (
                "deny",
                Some(code),
                DenyCode::ALL
                    .iter()
                    .find(|candidate| candidate.as_str() == code)
                    .map(|candidate| candidate.status(settings.spend_cap_status)),
            ),
            None => ("allow", None, None),
        },
    };
    let fail_open = !loaded
        .policy
        .is_fresh(loaded.now, settings.max_policy_age_seconds)
        && settings.policy_unavailable == PolicyUnavailable::FailOpen;
    let consistent =
        decision == "exempt" || (fail_open && decision == "fail_open") || walked_code == code;
    let shadow = settings.mode == keyward_engine::config::Mode::Shadow;
    if args.json {
        let body = serde_json::json!({
            "key_id": args.key_id,
            "route": args.route,
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
            "steps": walk.steps,
            "decision": decision,
            "code": code,
            "status": status,
            "shadow_mode": shadow,
            "consistent_with_engine": consistent,
        });
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        println!(
            "key {} on route {} (snapshot version {})",
            args.key_id, args.route, loaded.snapshot.version
        );
        for step in &walk.steps {
            println!(
                "  {:<4} {:<6} {:<28} {}",
                step.step,
                step.result.to_uppercase(),
                step.check,
                step.detail
            );
        }
        match (decision, code, status) {
            ("deny", Some(code), Some(status)) => {
                println!("decision: deny {status} {code}");
            }
            ("allow", _, _) => {
                println!("decision: allow (forwarded upstream with identity headers)")
            }
            ("exempt", _, _) => println!("decision: exempt (passes without authentication)"),
            ("fail_open", _, _) => println!("decision: fail_open (passes: no usable policy)"),
            (other, _, _) => println!("decision: {other}"),
        }
        if shadow && decision == "deny" {
            println!("note: shadow mode is on: the filter would log this denial and let the request through");
        }
        if !consistent {
            println!(
                "warning: the step walk and the engine disagree; the engine's decision is shown"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
