//! How the CLI prints: aligned tables and fields, JSON, money, times, limits and statuses.

use keyward_engine::snapshot::{KeyStatus, RateLimits};

use crate::error::Error;
use crate::store::KeyView;
use crate::units::{format_time, format_usd};

pub fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Error> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A plain, aligned text table.
pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|header| (*header).to_owned()).collect());
    for row in rows {
        line(row);
    }
}

/// Aligned `name: value` lines.
pub fn print_fields(fields: &[(&str, String)]) {
    let width = fields
        .iter()
        .map(|(name, _)| name.chars().count() + 1)
        .max()
        .unwrap_or(0);
    for (name, value) in fields {
        println!("{:<width$} {value}", format!("{name}:"));
    }
}

/// `$12.50`.
pub fn dollars(micros: u64) -> String {
    format!("${}", format_usd(micros))
}

pub fn optional_usd(micros: Option<u64>) -> String {
    micros.map_or_else(|| "-".to_owned(), dollars)
}

pub fn optional_time(time: Option<u64>) -> String {
    time.map_or_else(|| "-".to_owned(), format_time)
}

/// `$1.25 of $5.00 cap (25%), soft cap $4.00`.
pub fn describe_spend(spent: u64, cap: Option<u64>, soft: Option<u64>) -> String {
    let mut text = dollars(spent);
    match cap {
        Some(cap) => text.push_str(&format!(
            " of {} cap ({})",
            dollars(cap),
            percent(spent, cap)
        )),
        None => text.push_str(", no cap"),
    }
    if let Some(soft) = soft {
        text.push_str(&format!(", soft cap {}", dollars(soft)));
    }
    text
}

/// `spent` as a whole percentage of `cap`, rounded down.
pub fn percent(spent: u64, cap: u64) -> String {
    if cap == 0 {
        return "100%".to_owned();
    }
    let share = u128::from(spent).saturating_mul(100) / u128::from(cap);
    format!("{share}%")
}

/// What spend means for the filter: the cap denies, the soft cap warns.
pub fn spend_alert(spent: u64, cap: Option<u64>, soft: Option<u64>) -> &'static str {
    if cap.is_some_and(|cap| spent >= cap) {
        "cap reached"
    } else if soft.is_some_and(|soft| spent >= soft) {
        "past soft cap"
    } else {
        ""
    }
}

pub fn describe_limits(limits: Option<&RateLimits>) -> String {
    let parts: Vec<String> = limits
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
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(", ")
    }
}

/// `60rpm,100000tpm` for tables.
pub fn short_limits(limits: Option<&RateLimits>) -> String {
    let parts: Vec<String> = limits
        .map(|limits| {
            [
                limits.requests_per_minute.map(|rpm| format!("{rpm}rpm")),
                limits.tokens_per_minute.map(|tpm| format!("{tpm}tpm")),
            ]
            .into_iter()
            .flatten()
            .collect()
        })
        .unwrap_or_default();
    list_or_dash(&parts)
}

pub fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

pub fn status_name<T: serde::Serialize>(status: &T) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn owner_of(key: &KeyView) -> String {
    match (&key.project, &key.org) {
        (Some(project), _) => project.clone(),
        (None, Some(org)) => format!("org:{org}"),
        (None, None) => "-".to_owned(),
    }
}

pub fn describe_status(view: &KeyView) -> String {
    match (view.status, view.revoke_at) {
        (KeyStatus::Revoked, _) => "revoked".to_owned(),
        (status, Some(at)) => format!(
            "{} until {} (rotated)",
            status_name(&status),
            format_time(at)
        ),
        (status, None) => status_name(&status),
    }
}
