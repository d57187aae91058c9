//! `keyward plan`, `keyward limits`, the `keyward spend` operations (windows, adjust, reset,
//! raise, alerts) and `keyward price import`: budgets that reset, quotas and plans.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use keyward_engine::budget::{BudgetRecord, PlanRecord, QuotaRecord};
use keyward_engine::calendar::{format_offset, parse_offset, Period};
use keyward_engine::snapshot::RateLimits;

use super::admin::Admin;
use super::output::{dollars, print_json, print_table};
use crate::budget_api::{AdjustBody, IncreaseBody, PriceImportBody, ResetBody};
use crate::error::Error;
use crate::price_catalog::{
    parse_litellm, DEFAULT_CATALOG, DEFAULT_CATALOG_DATE, DEFAULT_CATALOG_SOURCE,
};
use crate::store::{BudgetOwner, LimitsSettings, UsageChange, WindowUsageView};
use crate::units::{format_time, now, parse_usd};

/// Whose limits: `--key ID` or `--project ID`.
#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
pub struct OwnerArgs {
    /// A key id.
    #[arg(long)]
    key: Option<String>,
    /// A project id.
    #[arg(long)]
    project: Option<String>,
}

impl OwnerArgs {
    fn owner(&self) -> BudgetOwner {
        match (&self.key, &self.project) {
            (Some(key), _) => BudgetOwner::Key(key.clone()),
            (None, Some(project)) => BudgetOwner::Project(project.clone()),
            (None, None) => BudgetOwner::Key(String::new()),
        }
    }
}

/// Budgets and quotas as flags, for plans and for keys and projects.
#[derive(Args, Default)]
pub struct LimitFlags {
    /// A spend budget: `PERIOD=CAP` (USD), `PERIOD=CAP/SOFT`, `PERIOD=/SOFT` (soft cap only) or
    /// `PERIOD=none`; PERIOD is day, week or month (and total for plans). Repeat it.
    #[arg(long = "budget", value_name = "PERIOD=USD[/SOFT]")]
    budgets: Vec<String>,
    /// A quota: `PERIOD:requests=N`, `PERIOD:tokens=N`, or `=none`; PERIOD is day, week or
    /// month. Repeat it.
    #[arg(long = "quota", value_name = "PERIOD:KIND=N")]
    quotas: Vec<String>,
}

fn period(text: &str, flag: &str) -> Result<Period, Error> {
    Period::parse(text).ok_or_else(|| {
        Error::invalid(
            "invalid_period",
            format!("{flag}: {text:?} is not a period (day, week, month, total)"),
        )
    })
}

impl LimitFlags {
    /// Applies the flags to existing budgets and quotas (a flag replaces that period's own).
    fn apply(
        &self,
        budgets: &mut Vec<BudgetRecord>,
        quotas: &mut Vec<QuotaRecord>,
    ) -> Result<(), Error> {
        for flag in &self.budgets {
            let (which, amount) = flag.split_once('=').ok_or_else(|| {
                Error::invalid(
                    "invalid_budget",
                    format!("--budget {flag:?}: write PERIOD=USD, PERIOD=USD/SOFT or PERIOD=none"),
                )
            })?;
            let which = period(which, "--budget")?;
            budgets.retain(|budget| budget.period != which);
            if amount == "none" {
                continue;
            }
            let (cap, soft) = amount.split_once('/').unwrap_or((amount, ""));
            let usd = |text: &str| -> Result<Option<u64>, Error> {
                if text.is_empty() {
                    return Ok(None);
                }
                parse_usd(text).map(Some).map_err(|error| {
                    Error::invalid(
                        "invalid_amount",
                        format!("--budget {flag:?}: {}", error.message),
                    )
                })
            };
            budgets.push(BudgetRecord {
                period: which,
                cap_microusd: usd(cap)?,
                soft_cap_microusd: usd(soft)?,
            });
        }
        for flag in &self.quotas {
            let parsed = flag
                .split_once(':')
                .and_then(|(which, rest)| rest.split_once('=').map(|(kind, n)| (which, kind, n)));
            let Some((which, kind, number)) = parsed else {
                return Err(Error::invalid(
                    "invalid_quota",
                    format!("--quota {flag:?}: write PERIOD:requests=N or PERIOD:tokens=N"),
                ));
            };
            let which = period(which, "--quota")?;
            let value = match number {
                "none" => None,
                text => Some(text.parse::<u64>().map_err(|_| {
                    Error::invalid(
                        "invalid_quota",
                        format!("--quota {flag:?}: {text:?} is not a whole number"),
                    )
                })?),
            };
            let position = match quotas.iter().position(|quota| quota.period == which) {
                Some(position) => position,
                None => {
                    quotas.push(QuotaRecord {
                        period: which,
                        requests: None,
                        tokens: None,
                    });
                    quotas.len() - 1
                }
            };
            let Some(quota) = quotas.get_mut(position) else {
                continue;
            };
            match kind {
                "requests" => quota.requests = value,
                "tokens" => quota.tokens = value,
                other => {
                    return Err(Error::invalid(
                        "invalid_quota",
                        format!("--quota {flag:?}: {other:?} is not requests or tokens"),
                    ))
                }
            }
        }
        quotas.retain(|quota| quota.requests.is_some() || quota.tokens.is_some());
        Ok(())
    }
}

#[derive(Subcommand)]
pub enum PlanCommand {
    /// Create or replace a plan. Keys and projects on it follow with the next snapshot.
    Set {
        id: String,
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        limits: LimitFlags,
        /// The model allow-list (comma-separated; a trailing `*` is a prefix).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Requests per minute (per Envoy).
        #[arg(long)]
        rpm: Option<u32>,
        /// Tokens per minute (per Envoy).
        #[arg(long)]
        tpm: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List the plans.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show one plan.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a plan no key or project names.
    Remove { id: String },
}

#[derive(Subcommand)]
pub enum LimitsCommand {
    /// Show a key's or project's own limits.
    Show {
        #[command(flatten)]
        owner: OwnerArgs,
        #[arg(long)]
        json: bool,
    },
    /// Change a key's or project's own limits: what a flag names changes, the rest stays.
    Set {
        #[command(flatten)]
        owner: OwnerArgs,
        /// Put it on a plan.
        #[arg(long, conflicts_with = "no_plan")]
        plan: Option<String>,
        /// Take it off its plan.
        #[arg(long)]
        no_plan: bool,
        /// The UTC offset its windows follow: `+05:30`, `-08:00`, `Z`; `none` to follow the
        /// project's (keys) or UTC.
        #[arg(long, allow_hyphen_values = true)]
        utc_offset: Option<String>,
        #[command(flatten)]
        limits: LimitFlags,
        /// Start from no own limits (then apply the other flags).
        #[arg(long)]
        clear: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum SpendAction {
    /// Each window's spend, requests and tokens, newest first, and the lifetime spend.
    Windows {
        #[command(flatten)]
        owner: OwnerArgs,
        #[arg(long)]
        json: bool,
    },
    /// Correct a window's (or the lifetime) figures, audited: `--by -1.50` takes $1.50 off.
    Adjust {
        #[command(flatten)]
        owner: OwnerArgs,
        /// `day`, `week`, `month` (the current one), `total`, or a window id (2026-11-30).
        #[arg(long)]
        window: String,
        /// Signed USD.
        #[arg(long, allow_hyphen_values = true)]
        by: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        requests: Option<i64>,
        #[arg(long, allow_hyphen_values = true)]
        tokens: Option<i64>,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Set a window's (or the lifetime) figures to zero, audited.
    Reset {
        #[command(flatten)]
        owner: OwnerArgs,
        #[arg(long)]
        window: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Raise a period's cap or quota for a while: it ends by itself in every Envoy.
    Raise {
        #[command(flatten)]
        owner: OwnerArgs,
        /// `day`, `week`, `month` or `total`.
        #[arg(long)]
        window: String,
        /// USD added to the cap.
        #[arg(long)]
        by: Option<String>,
        #[arg(long)]
        requests: Option<u64>,
        #[arg(long)]
        tokens: Option<u64>,
        /// How long: `24h`, `7d`.
        #[arg(long = "for", conflicts_with = "until")]
        duration: Option<String>,
        /// Until these Unix seconds.
        #[arg(long)]
        until: Option<u64>,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// A key's or project's temporary increases, running and ended.
    Increases {
        #[command(flatten)]
        owner: OwnerArgs,
        #[arg(long)]
        json: bool,
    },
    /// Budget alerts (soft cap or cap reached, once per window) and their delivery.
    Alerts {
        #[arg(long, default_value_t = 50)]
        limit: u64,
        #[arg(long)]
        json: bool,
    },
}

/// `keyward price import`.
#[derive(Args)]
pub struct ImportArgs {
    /// A price file in LiteLLM's format (model_prices_and_context_window.json).
    #[arg(required_unless_present = "default", conflicts_with = "default")]
    file: Option<PathBuf>,
    /// Import keyward's default catalog (common OpenAI, Anthropic and Google models).
    #[arg(long)]
    default: bool,
    /// Only these `litellm_provider`s (comma-separated): openai,anthropic,gemini.
    #[arg(long, value_delimiter = ',')]
    provider: Vec<String>,
    /// The date of the prices (YYYY-MM-DD); default: today, or the default catalog's date.
    #[arg(long)]
    as_of: Option<String>,
    /// Remove prices the file does not name.
    #[arg(long)]
    replace: bool,
    #[arg(long)]
    json: bool,
}

fn print_plan(plan: &PlanRecord) {
    let budgets: Vec<String> = plan.budgets.iter().map(describe_budget).collect();
    let quotas: Vec<String> = plan.quotas.iter().map(describe_quota).collect();
    let limits = plan.rate_limits.as_ref();
    print_table(
        &[
            "PLAN",
            "LABEL",
            "BUDGETS",
            "QUOTAS",
            "MODELS",
            "RATE LIMITS",
        ],
        vec![vec![
            plan.id.clone(),
            plan.label.clone().unwrap_or_else(|| "-".into()),
            or_dash(budgets.join(", ")),
            or_dash(quotas.join(", ")),
            plan.models
                .as_ref()
                .map_or_else(|| "all".to_owned(), |models| models.join(",")),
            super::output::short_limits(limits),
        ]],
    );
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text
    }
}

fn describe_budget(budget: &BudgetRecord) -> String {
    let soft = budget
        .soft_cap_microusd
        .map(|soft| format!(" (soft {})", dollars(soft)))
        .unwrap_or_default();
    let cap = budget
        .cap_microusd
        .map_or_else(|| "no cap".to_owned(), dollars);
    format!("{} {cap}{soft}", budget.period.as_str())
}

fn describe_quota(quota: &QuotaRecord) -> String {
    let parts: Vec<String> = [("requests", quota.requests), ("tokens", quota.tokens)]
        .into_iter()
        .filter_map(|(kind, value)| value.map(|n| format!("{n} {kind}")))
        .collect();
    format!("{}/{}", parts.join(" + "), quota.period.as_str())
}

fn print_limits(owner: &BudgetOwner, limits: &LimitsSettings) {
    let budgets: Vec<String> = limits.budgets.iter().map(describe_budget).collect();
    let quotas: Vec<String> = limits.quotas.iter().map(describe_quota).collect();
    print_table(
        &["OWNER", "PLAN", "UTC OFFSET", "BUDGETS", "QUOTAS"],
        vec![vec![
            owner.describe(),
            limits.plan.clone().unwrap_or_else(|| "-".into()),
            limits
                .utc_offset_minutes
                .map_or_else(|| "-".into(), format_offset),
            or_dash(budgets.join(", ")),
            or_dash(quotas.join(", ")),
        ]],
    );
}

fn print_windows(windows: &[WindowUsageView]) {
    let rows = windows
        .iter()
        .map(|window| {
            vec![
                window.window.clone(),
                window.starts_at.map_or_else(|| "-".into(), format_time),
                window.ends_at.map_or_else(|| "-".into(), format_time),
                dollars(window.spent_microusd),
                window.requests.to_string(),
                window.tokens.to_string(),
            ]
        })
        .collect();
    print_table(
        &["WINDOW", "STARTS", "ENDS", "SPENT", "REQUESTS", "TOKENS"],
        rows,
    );
}

fn print_change(change: &UsageChange, json: bool) -> Result<ExitCode, Error> {
    if json {
        print_json(change)?;
    } else {
        println!(
            "{} {}: spent {} -> {}, requests {} -> {}, tokens {} -> {} (policy version {})",
            change.owner.describe(),
            change.before.window,
            dollars(change.before.spent_microusd),
            dollars(change.after.spent_microusd),
            change.before.requests,
            change.after.requests,
            change.before.tokens,
            change.after.tokens,
            change.policy_version
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Today's date in UTC, `YYYY-MM-DD`.
fn today() -> String {
    keyward_engine::calendar::Window::containing(Period::Day, now(), 0)
        .map(|day| day.id())
        .unwrap_or_default()
}

/// Signed USD (`-1.50`) as signed micro-USD.
fn signed_usd(text: &str) -> Result<i64, Error> {
    let (negative, amount) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let micros = i64::try_from(parse_usd(amount)?)
        .map_err(|_| Error::invalid("invalid_amount", "--by: too large"))?;
    Ok(if negative { -micros } else { micros })
}

pub fn plan(admin: &mut dyn Admin, command: PlanCommand) -> Result<ExitCode, Error> {
    match command {
        PlanCommand::Set {
            id,
            label,
            limits,
            models,
            rpm,
            tpm,
            json,
        } => {
            let mut plan = PlanRecord {
                id,
                label,
                budgets: vec![],
                quotas: vec![],
                models,
                rate_limits: (rpm.is_some() || tpm.is_some()).then_some(RateLimits {
                    requests_per_minute: rpm,
                    tokens_per_minute: tpm,
                }),
            };
            limits.apply(&mut plan.budgets, &mut plan.quotas)?;
            let plan = admin.set_plan(&plan)?;
            if json {
                print_json(&plan)?;
            } else {
                print_plan(&plan);
            }
        }
        PlanCommand::List { json } => {
            let plans = admin.plans()?;
            if json {
                print_json(&crate::api::List { data: plans })?;
            } else {
                for plan in &plans {
                    print_plan(plan);
                }
            }
        }
        PlanCommand::Show { id, json } => {
            let plan = admin.plan(&id)?;
            if json {
                print_json(&plan)?;
            } else {
                print_plan(&plan);
            }
        }
        PlanCommand::Remove { id } => {
            let plan = admin.remove_plan(&id)?;
            println!("removed plan {}", plan.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn limits(admin: &mut dyn Admin, command: LimitsCommand) -> Result<ExitCode, Error> {
    let (owner, limits, json) = match command {
        LimitsCommand::Show { owner, json } => {
            let owner = owner.owner();
            let limits = admin.limits(&owner)?;
            (owner, limits, json)
        }
        LimitsCommand::Set {
            owner,
            plan,
            no_plan,
            utc_offset,
            limits,
            clear,
            json,
        } => {
            let owner = owner.owner();
            let mut settings = if clear {
                LimitsSettings::default()
            } else {
                admin.limits(&owner)?
            };
            if no_plan {
                settings.plan = None;
            } else if plan.is_some() {
                settings.plan = plan;
            }
            if let Some(text) = utc_offset {
                settings.utc_offset_minutes = match text.as_str() {
                    "none" => None,
                    text => Some(parse_offset(text).ok_or_else(|| {
                        Error::invalid(
                            "invalid_offset",
                            format!(
                                "--utc-offset {text:?}: write +HH:MM or -HH:MM (up to 14 hours), \
                                 Z, or none"
                            ),
                        )
                    })?),
                };
            }
            limits.apply(&mut settings.budgets, &mut settings.quotas)?;
            let stored = admin.set_limits(&owner, &settings)?;
            (owner, stored, json)
        }
    };
    if json {
        print_json(&limits)?;
    } else {
        print_limits(&owner, &limits);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn spend_action(admin: &mut dyn Admin, action: SpendAction) -> Result<ExitCode, Error> {
    match action {
        SpendAction::Windows { owner, json } => {
            let windows = admin.window_history(&owner.owner())?;
            if json {
                print_json(&crate::api::List { data: windows })?;
            } else {
                print_windows(&windows);
            }
            Ok(ExitCode::SUCCESS)
        }
        SpendAction::Adjust {
            owner,
            window,
            by,
            requests,
            tokens,
            reason,
            json,
        } => {
            let body = AdjustBody {
                owner: owner.owner(),
                window,
                by_microusd: by.as_deref().map(signed_usd).transpose()?.unwrap_or(0),
                requests: requests.unwrap_or(0),
                tokens: tokens.unwrap_or(0),
                reason,
            };
            print_change(&admin.adjust(&body)?, json)
        }
        SpendAction::Reset {
            owner,
            window,
            reason,
            json,
        } => {
            let body = ResetBody {
                owner: owner.owner(),
                window,
                reason,
            };
            print_change(&admin.reset(&body)?, json)
        }
        SpendAction::Raise {
            owner,
            window,
            by,
            requests,
            tokens,
            duration,
            until,
            reason,
            json,
        } => {
            let body = IncreaseBody {
                owner: Some(owner.owner()),
                period: window,
                microusd: by.as_deref().map(parse_usd).transpose()?.unwrap_or(0),
                requests: requests.unwrap_or(0),
                tokens: tokens.unwrap_or(0),
                expires_at: until,
                expires_in: duration,
                reason,
            };
            let view = admin.raise(&body)?;
            if json {
                print_json(&view)?;
            } else {
                println!(
                    "{} {}: +{} +{} requests +{} tokens until {} ({})",
                    view.owner.describe(),
                    view.period.as_str(),
                    dollars(view.microusd),
                    view.requests,
                    view.tokens,
                    format_time(view.expires_at),
                    view.reason
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SpendAction::Increases { owner, json } => {
            let increases = admin.increases(&owner.owner())?;
            if json {
                print_json(&crate::api::List { data: increases })?;
            } else {
                let rows = increases
                    .iter()
                    .map(|view| {
                        vec![
                            view.id.to_string(),
                            view.period.as_str().to_owned(),
                            format!(
                                "+{} +{} req +{} tok",
                                dollars(view.microusd),
                                view.requests,
                                view.tokens
                            ),
                            format_time(view.expires_at),
                            if view.expires_at > now() {
                                "running"
                            } else {
                                "ended"
                            }
                            .to_owned(),
                            view.actor.clone(),
                            view.reason.clone(),
                        ]
                    })
                    .collect();
                print_table(
                    &["ID", "PERIOD", "ADDS", "UNTIL", "STATE", "BY", "REASON"],
                    rows,
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        SpendAction::Alerts { limit, json } => {
            let alerts = admin.alerts(limit)?;
            if json {
                print_json(&crate::api::List { data: alerts })?;
            } else {
                let rows = alerts
                    .iter()
                    .map(|alert| {
                        vec![
                            format_time(alert.created_at),
                            alert.owner.describe(),
                            alert.window.clone(),
                            alert.level.clone(),
                            alert.delivered_at.map_or_else(
                                || format!("no ({} tries)", alert.attempts),
                                format_time,
                            ),
                        ]
                    })
                    .collect();
                print_table(&["AT", "OWNER", "WINDOW", "LEVEL", "DELIVERED"], rows);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn import_prices(admin: &mut dyn Admin, args: ImportArgs) -> Result<ExitCode, Error> {
    let (text, source, default_date) = match &args.file {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|error| {
                Error::invalid(
                    "unreadable_file",
                    format!("cannot read {}: {error}", path.display()),
                )
            })?,
            "litellm".to_owned(),
            today(),
        ),
        None => (
            DEFAULT_CATALOG.to_owned(),
            DEFAULT_CATALOG_SOURCE.to_owned(),
            DEFAULT_CATALOG_DATE.to_owned(),
        ),
    };
    let parsed = parse_litellm(&text, &args.provider)?;
    if parsed.prices.is_empty() {
        return Err(Error::invalid(
            "no_prices",
            "the file has no per-token chat prices (for the providers asked for)",
        ));
    }
    let body = PriceImportBody {
        prices: parsed.prices,
        source,
        as_of: args.as_of.unwrap_or(default_date),
        replace: args.replace,
    };
    let imported = admin.import_prices(&body)?;
    if args.json {
        print_json(&imported)?;
    } else {
        println!(
            "imported {} prices from {} as of {} (catalog version {}): {} added, {} changed, \
             {} unchanged, {} removed; {} entries skipped, {} invalid",
            body.prices.len(),
            imported.source,
            imported.as_of,
            imported.catalog_version,
            imported.added,
            imported.changed,
            imported.unchanged,
            imported.removed,
            parsed.skipped,
            parsed.invalid.len()
        );
        for name in parsed.invalid.iter().take(10) {
            eprintln!("keyward: warning: {name}: not a plausible price, left out");
        }
    }
    Ok(ExitCode::SUCCESS)
}
