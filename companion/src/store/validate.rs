//! What the store accepts: every record is checked with the filter's own snapshot compiler, and
//! free text is kept printable and bounded.

use keyward_engine::budget::PlanRecord;
use keyward_engine::snapshot::{KeyRecord, Policy, PriceRecord, ProjectRecord, Snapshot};

use super::model::KeySettings;
use crate::error::Error;

/// Checks records with the filter's own snapshot validation, so the control plane never
/// accepts what the data plane would refuse. The error names the field.
pub(super) fn validate_with_engine(
    projects: Vec<ProjectRecord>,
    keys: Vec<KeyRecord>,
    prices: Vec<PriceRecord>,
) -> Result<(), Error> {
    validate_with_plans(projects, keys, prices, Vec::new())
}

/// [`validate_with_engine`] with the plans the records may name.
pub(super) fn validate_with_plans(
    projects: Vec<ProjectRecord>,
    keys: Vec<KeyRecord>,
    prices: Vec<PriceRecord>,
    plans: Vec<PlanRecord>,
) -> Result<(), Error> {
    let snapshot = Snapshot {
        version: 1,
        issued_at: 0,
        expires_at: None,
        projects,
        keys,
        prices,
        price_catalog: None,
        plans,
        provider_keys: None,
    };
    let caps = snapshot
        .keys
        .first()
        .map(|key| (key.spend_cap_microusd, key.spend_soft_cap_microusd))
        .or_else(|| {
            snapshot
                .projects
                .first()
                .map(|project| (project.spend_cap_microusd, project.spend_soft_cap_microusd))
        });
    Policy::compile(snapshot).map(|_| ()).map_err(|error| {
        if error.path.ends_with("spend_soft_cap_microusd") {
            // Say it in the user's terms: the flags and the amounts.
            let usd = |micro: Option<u64>| {
                micro.map_or("none".to_owned(), |m| {
                    format!("{} USD", crate::units::format_usd(m))
                })
            };
            let (cap, soft) = caps.unwrap_or((None, None));
            return Error::invalid(
                "invalid_field",
                format!(
                    "--spend-soft-cap-usd: the soft cap ({}) must be below the spend cap ({}); \
                     lower it, or raise --spend-cap-usd first",
                    usd(soft),
                    usd(cap)
                ),
            );
        }
        let path = ["keys[0]", "projects[0]", "prices[0]", "plans[0]"]
            .iter()
            .find_map(|prefix| error.path.strip_prefix(prefix))
            .unwrap_or(&error.path)
            .trim_start_matches('.');
        let message = if path.is_empty() {
            error.message.clone()
        } else {
            format!("{path}: {}", error.message)
        };
        Error::invalid("invalid_field", message)
    })
}

/// Free-text fields end up in terminals, logs and JSON: keep them printable and bounded.
pub(super) fn validate_text(field: &str, value: Option<&str>, max: usize) -> Result<(), Error> {
    if let Some(value) = value {
        if value.chars().count() > max || value.chars().any(char::is_control) {
            return Err(Error::invalid(
                "invalid_field",
                format!("{field}: at most {max} characters, no control characters"),
            ));
        }
    }
    Ok(())
}

fn validate_list(field: &str, values: &[String]) -> Result<(), Error> {
    for value in values {
        if value.is_empty() || value.len() > 128 || value.chars().any(char::is_control) {
            return Err(Error::invalid(
                "invalid_field",
                format!("{field}: each entry must be 1 to 128 printable characters"),
            ));
        }
    }
    Ok(())
}

/// Scopes and model names are identifiers: a space or comma inside one is a typo (`"chat
/// write"`), and it would never match what a route asks for.
fn validate_identifiers(flag: &str, values: &[String]) -> Result<(), Error> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:/*@+".contains(c);
    if let Some(bad) = values.iter().find(|value| !value.chars().all(allowed)) {
        return Err(Error::invalid(
            "invalid_field",
            format!(
                "{flag}: {bad:?} is not a valid entry (letters, digits and - _ . : / * @ + only; \
                 separate several with commas)"
            ),
        ));
    }
    Ok(())
}

pub(super) fn validate_settings(settings: &KeySettings) -> Result<(), Error> {
    validate_list("scopes", &settings.scopes)?;
    validate_identifiers("--scopes", &settings.scopes)?;
    if let Some(models) = &settings.models {
        validate_list("models", models)?;
        validate_identifiers("--models", models)?;
    }
    validate_text("label", settings.label.as_deref(), 128)?;
    validate_text("note", settings.note.as_deref(), 1000)?;
    Ok(())
}

/// An update that names nothing to change.
pub(super) fn nothing_to_change() -> Error {
    Error::invalid("nothing_to_change", "Name at least one setting to change.")
}
