//! `keyward project`: create, change, archive, show and list projects.

use std::process::ExitCode;

use clap::Subcommand;

use super::admin::Admin;
use super::output::{
    describe_spend, dollars, optional_time, optional_usd, print_fields, print_json, print_table,
    status_name,
};
use super::shared::{SpendCapArgs, SpendCapChangeArgs};
use crate::error::Error;
use crate::store::ProjectUpdate;
use crate::units::format_time;

#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Create a project in an organization.
    Create {
        id: String,
        #[arg(long)]
        org: String,
        #[command(flatten)]
        caps: SpendCapArgs,
        #[arg(long)]
        json: bool,
    },
    /// Change a project's spend cap or soft cap.
    Set {
        id: String,
        #[command(flatten)]
        caps: SpendCapChangeArgs,
        #[arg(long)]
        json: bool,
    },
    /// Archive a project: its keys stop working (403 project_archived) and it gets no new keys.
    Archive {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Show one project, with its spend and caps.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List projects.
    List {
        #[arg(long)]
        json: bool,
    },
}

pub fn run(admin: &mut dyn Admin, command: ProjectCommand) -> Result<ExitCode, Error> {
    let (project, json) = match command {
        ProjectCommand::Create {
            id,
            org,
            caps,
            json,
        } => {
            let (cap, soft) = caps.microusd()?;
            (admin.create_project(&id, &org, (cap, soft))?, json)
        }
        ProjectCommand::Set { id, caps, json } => {
            let (spend_cap_microusd, spend_soft_cap_microusd) = caps.changes()?;
            let update = ProjectUpdate {
                spend_cap_microusd,
                spend_soft_cap_microusd,
            };
            (admin.update_project(&id, &update)?, json)
        }
        ProjectCommand::Archive { id, json } => (admin.archive_project(&id)?, json),
        ProjectCommand::Show { id, json } => {
            let project = admin.project(&id)?;
            if json {
                print_json(&project)?;
            } else {
                print_fields(&[
                    ("project", project.id.clone()),
                    ("org", project.org.clone()),
                    ("status", status_name(&project.status)),
                    (
                        "spend",
                        describe_spend(
                            project.spent_microusd,
                            project.spend_cap_microusd,
                            project.spend_soft_cap_microusd,
                        ),
                    ),
                    ("created", format_time(project.created_at)),
                    ("archived", optional_time(project.archived_at)),
                ]);
            }
            return Ok(ExitCode::SUCCESS);
        }
        ProjectCommand::List { json } => {
            let projects = admin.projects()?;
            if json {
                print_json(&projects)?;
            } else {
                let rows = projects
                    .iter()
                    .map(|project| {
                        vec![
                            project.id.clone(),
                            project.org.clone(),
                            status_name(&project.status),
                            optional_usd(project.spend_cap_microusd),
                            optional_usd(project.spend_soft_cap_microusd),
                            dollars(project.spent_microusd),
                            format_time(project.created_at),
                        ]
                    })
                    .collect();
                print_table(
                    &[
                        "ID",
                        "ORG",
                        "STATUS",
                        "SPEND CAP",
                        "SOFT CAP",
                        "SPENT",
                        "CREATED",
                    ],
                    rows,
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if json {
        print_json(&project)?;
    } else {
        println!("project {}: {}", project.id, status_name(&project.status));
    }
    Ok(ExitCode::SUCCESS)
}
