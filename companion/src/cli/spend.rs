//! `keyward spend` and `keyward usage`: spend against caps, and the usage reports applied.

use std::process::ExitCode;

use clap::Subcommand;

use super::admin::Admin;
use super::output::{
    describe_status, dollars, optional_time, optional_usd, owner_of, percent, print_json,
    print_table, short_limits, spend_alert, status_name,
};
use crate::error::Error;
use crate::store::ProjectView;
use crate::units::format_time;

#[derive(Subcommand)]
pub enum UsageCommand {
    /// The most recent usage batches applied, newest first.
    Batches {
        #[arg(long, default_value_t = 20)]
        limit: u64,
        #[arg(long)]
        json: bool,
    },
}

pub fn spend(admin: &mut dyn Admin, project: Option<&str>, json: bool) -> Result<ExitCode, Error> {
    let projects: Vec<ProjectView> = match project {
        Some(id) => vec![admin.project(id)?],
        None => admin.projects()?,
    };
    let keys = admin.keys(project)?;
    if json {
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|key| {
                serde_json::json!({
                    "id": key.id,
                    "project": key.project,
                    "org": key.org,
                    "status": key.status,
                    "spent_microusd": key.spent_microusd,
                    "spend_cap_microusd": key.spend_cap_microusd,
                    "spend_soft_cap_microusd": key.spend_soft_cap_microusd,
                    "rate_limits": key.rate_limits,
                    "last_seen_at": key.last_seen_at,
                })
            })
            .collect();
        let projects: Vec<serde_json::Value> = projects
            .iter()
            .map(|project| {
                serde_json::json!({
                    "id": project.id,
                    "org": project.org,
                    "status": project.status,
                    "spent_microusd": project.spent_microusd,
                    "spend_cap_microusd": project.spend_cap_microusd,
                    "spend_soft_cap_microusd": project.spend_soft_cap_microusd,
                })
            })
            .collect();
        print_json(&serde_json::json!({"projects": projects, "keys": keys}))?;
        return Ok(ExitCode::SUCCESS);
    }
    let used = |spent: u64, cap: Option<u64>| {
        cap.map_or_else(|| "-".to_owned(), |cap| percent(spent, cap))
    };
    let rows = projects
        .iter()
        .map(|project| {
            vec![
                project.id.clone(),
                project.org.clone(),
                status_name(&project.status),
                dollars(project.spent_microusd),
                optional_usd(project.spend_cap_microusd),
                optional_usd(project.spend_soft_cap_microusd),
                used(project.spent_microusd, project.spend_cap_microusd),
                spend_alert(
                    project.spent_microusd,
                    project.spend_cap_microusd,
                    project.spend_soft_cap_microusd,
                )
                .to_owned(),
            ]
        })
        .collect();
    print_table(
        &[
            "PROJECT", "ORG", "STATUS", "SPENT", "CAP", "SOFT CAP", "USED", "ALERT",
        ],
        rows,
    );
    println!();
    let rows = keys
        .iter()
        .map(|key| {
            vec![
                key.id.clone(),
                owner_of(key),
                describe_status(key),
                dollars(key.spent_microusd),
                optional_usd(key.spend_cap_microusd),
                optional_usd(key.spend_soft_cap_microusd),
                used(key.spent_microusd, key.spend_cap_microusd),
                short_limits(key.rate_limits.as_ref()),
                optional_time(key.last_seen_at),
                spend_alert(
                    key.spent_microusd,
                    key.spend_cap_microusd,
                    key.spend_soft_cap_microusd,
                )
                .to_owned(),
            ]
        })
        .collect();
    print_table(
        &[
            "KEY",
            "OWNER",
            "STATUS",
            "SPENT",
            "CAP",
            "SOFT CAP",
            "USED",
            "LIMITS",
            "LAST SEEN",
            "ALERT",
        ],
        rows,
    );
    Ok(ExitCode::SUCCESS)
}

pub fn usage(admin: &mut dyn Admin, command: UsageCommand) -> Result<ExitCode, Error> {
    match command {
        UsageCommand::Batches { limit, json } => {
            let batches = admin.usage_batches(limit)?;
            if json {
                print_json(&batches)?;
            } else {
                let rows = batches
                    .iter()
                    .map(|batch| {
                        vec![
                            format_time(batch.received_at),
                            batch.reporter.clone(),
                            batch.batch_id.clone(),
                            batch.policy_version.to_string(),
                            format!("{}/{}", batch.applied, batch.entries),
                            dollars(batch.cost_microusd),
                            batch.requests.to_string(),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "RECEIVED", "REPORTER", "BATCH", "VERSION", "APPLIED", "COST", "REQUESTS",
                    ],
                    rows,
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
