//! Metered routes whose models have no price: spend on them cannot be counted against a
//! budget. The models a route can see are the ones it fixes, and the exact names of every
//! allow-list (keys' own and plans'); prefixes (`gpt-4o*`) name no single model to check.

use keyward_engine::metering::UnpricedModel;
use keyward_engine::route::ModelSource;

use super::report::Finding;
use super::{Loaded, Severity};

pub(super) fn unpriced_models(loaded: &Loaded) -> Vec<Finding> {
    let settings = &loaded.config.settings;
    let prices = loaded.policy.prices();
    let mut named: Vec<&str> = Vec::new();
    let lists = loaded
        .snapshot
        .keys
        .iter()
        .filter_map(|key| key.models.as_ref())
        .chain(
            loaded
                .snapshot
                .plans
                .iter()
                .filter_map(|plan| plan.models.as_ref()),
        );
    for list in lists {
        for model in list.iter().filter(|model| !model.ends_with('*')) {
            if !named.contains(&model.as_str()) {
                named.push(model);
            }
        }
    }
    named.sort_unstable();
    // Unpriced requests pass uncounted with `allow`; with the default they are refused where a
    // cap applies and uncounted elsewhere.
    let severity = match settings.metering.unpriced_model {
        UnpricedModel::Allow => Severity::High,
        UnpricedModel::DenyWhenCapped => Severity::Medium,
    };
    let mut findings = Vec::new();
    for route in settings.routes.iter().filter(|route| route.meter) {
        let mut models: Vec<&str> = named.clone();
        if let Some(ModelSource::Fixed(model)) = &route.model {
            models.insert(0, model);
        }
        let unpriced: Vec<&str> = models
            .into_iter()
            .filter(|model| prices.price_for(model).is_none())
            .collect();
        if unpriced.is_empty() {
            continue;
        }
        findings.push(Finding {
            severity,
            code: "metered_model_unpriced",
            subject: format!("route:{}", route.name),
            message: format!(
                "route {} is metered, but these models have no price, so their spend is not \
                 counted against any budget: {} (keyward price set, or keyward price import)",
                route.name,
                unpriced.join(", ")
            ),
        });
    }
    if prices.is_empty() && settings.routes.iter().any(|route| route.meter) {
        findings.push(Finding {
            severity,
            code: "metered_model_unpriced",
            subject: "prices".to_owned(),
            message: "routes are metered, but the snapshot has no prices at all: every model \
                      is unpriced (keyward price import --default)"
                .to_owned(),
        });
    }
    findings
}
