//! The audit report as a table for terminals.

use serde_json::Value;

use super::*;

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => text.clone(),
        Value::Array(items) => {
            if items.is_empty() {
                "-".to_owned()
            } else {
                items.iter().map(text).collect::<Vec<_>>().join(",")
            }
        }
        other => other.to_string(),
    }
}

static NULL: Value = Value::Null;

/// The value at a JSON pointer, or null.
fn at<'a>(value: &'a Value, pointer: &str) -> &'a Value {
    value.pointer(pointer).unwrap_or(&NULL)
}

pub(super) fn print_report_table(report: &Report) {
    let json = &report.json;
    let snapshot = at(json, "/snapshot");
    println!(
        "snapshot version {}, issued_at {}, signature {}; mode {}, policy_unavailable {}",
        at(snapshot, "/version"),
        at(snapshot, "/issued_at"),
        text(at(snapshot, "/signature/state")),
        text(at(json, "/config/mode")),
        text(at(json, "/config/policy_unavailable")),
    );
    println!();
    let route_names: Vec<String> = at(json, "/routes")
        .as_array()
        .map(|routes| {
            routes
                .iter()
                .map(|route| text(at(route, "/name")))
                .collect()
        })
        .unwrap_or_default();
    let mut headers: Vec<String> = [
        "KEY",
        "PROJECT",
        "ORG",
        "ENV",
        "STATUS",
        "SCOPES",
        "MODELS",
        "CAP",
        "EXPIRES",
        "LAST USED",
    ]
    .iter()
    .map(|header| (*header).to_owned())
    .collect();
    headers.extend(route_names.iter().map(|name| name.to_uppercase()));
    let empty = Vec::new();
    let rows: Vec<Vec<String>> = at(json, "/keys")
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|key| {
            let mut row = vec![
                text(at(key, "/id")),
                text(at(key, "/project")),
                text(at(key, "/org")),
                text(at(key, "/environment")),
                text(at(key, "/status")),
                text(at(key, "/scopes")),
                if at(key, "/models").is_null() {
                    "*".to_owned()
                } else {
                    text(at(key, "/models"))
                },
                at(key, "/spend_cap_microusd")
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), crate::units::format_usd),
                at(key, "/expires_at")
                    .as_u64()
                    .map_or_else(|| "never".to_owned(), crate::units::format_time),
                at(key, "/last_used_at")
                    .as_u64()
                    .map_or_else(|| "-".to_owned(), crate::units::format_time),
            ];
            let decisions = at(key, "/routes").as_array().unwrap_or(&empty);
            row.extend(
                decisions
                    .iter()
                    .map(|decision| match at(decision, "/code").as_str() {
                        Some(code) => format!("deny:{code}"),
                        None => text(at(decision, "/decision")),
                    }),
            );
            row
        })
        .collect();
    crate::cli::output::print_table(
        &headers.iter().map(String::as_str).collect::<Vec<_>>(),
        rows,
    );
    println!();
    if report.findings.is_empty() {
        println!("no findings");
    } else {
        let rows = report
            .findings
            .iter()
            .map(|finding| {
                vec![
                    finding.severity.name().to_uppercase(),
                    finding.code.to_owned(),
                    finding.subject.clone(),
                    finding.message.clone(),
                ]
            })
            .collect();
        crate::cli::output::print_table(&["SEVERITY", "FINDING", "SUBJECT", "DETAIL"], rows);
    }
    if let Some(notes) = at(json, "/notes").as_array() {
        for note in notes {
            println!("note: {}", text(note));
        }
    }
}
