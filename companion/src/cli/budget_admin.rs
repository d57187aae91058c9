//! What the budget commands (`plan`, `limits`, `spend windows|adjust|reset|raise|alerts`,
//! `price import`) do, against the store (local mode) or a running control plane (remote mode).

use keyward_engine::budget::PlanRecord;

use super::admin::{segment, Local, Remote};
use crate::api::List;
use crate::budget_api::{AdjustBody, IncreaseBody, PriceImportBody, ResetBody};
use crate::error::Error;
use crate::store::{
    AlertView, BudgetOwner, IncreaseView, LimitsSettings, PriceImport, UsageChange, WindowTarget,
    WindowUsageView,
};
use crate::units::now;

pub trait BudgetAdmin {
    fn set_plan(&mut self, plan: &PlanRecord) -> Result<PlanRecord, Error>;
    fn plans(&mut self) -> Result<Vec<PlanRecord>, Error>;
    fn plan(&mut self, id: &str) -> Result<PlanRecord, Error>;
    fn remove_plan(&mut self, id: &str) -> Result<PlanRecord, Error>;
    fn limits(&mut self, owner: &BudgetOwner) -> Result<LimitsSettings, Error>;
    fn set_limits(
        &mut self,
        owner: &BudgetOwner,
        limits: &LimitsSettings,
    ) -> Result<LimitsSettings, Error>;
    fn window_history(&mut self, owner: &BudgetOwner) -> Result<Vec<WindowUsageView>, Error>;
    fn adjust(&mut self, body: &AdjustBody) -> Result<UsageChange, Error>;
    fn reset(&mut self, body: &ResetBody) -> Result<UsageChange, Error>;
    fn raise(&mut self, body: &IncreaseBody) -> Result<IncreaseView, Error>;
    fn increases(&mut self, owner: &BudgetOwner) -> Result<Vec<IncreaseView>, Error>;
    fn alerts(&mut self, limit: u64) -> Result<Vec<AlertView>, Error>;
    fn import_prices(&mut self, body: &PriceImportBody) -> Result<PriceImport, Error>;
}

impl BudgetAdmin for Local {
    fn set_plan(&mut self, plan: &PlanRecord) -> Result<PlanRecord, Error> {
        self.store.set_plan(&self.actor, now(), plan)
    }

    fn plans(&mut self) -> Result<Vec<PlanRecord>, Error> {
        self.store.plans()
    }

    fn plan(&mut self, id: &str) -> Result<PlanRecord, Error> {
        self.store.plan(id)
    }

    fn remove_plan(&mut self, id: &str) -> Result<PlanRecord, Error> {
        self.store.remove_plan(&self.actor, now(), id)
    }

    fn limits(&mut self, owner: &BudgetOwner) -> Result<LimitsSettings, Error> {
        self.store.limits(owner)
    }

    fn set_limits(
        &mut self,
        owner: &BudgetOwner,
        limits: &LimitsSettings,
    ) -> Result<LimitsSettings, Error> {
        self.store.set_limits(&self.actor, now(), owner, limits)
    }

    fn window_history(&mut self, owner: &BudgetOwner) -> Result<Vec<WindowUsageView>, Error> {
        self.store.window_history(owner)
    }

    fn adjust(&mut self, body: &AdjustBody) -> Result<UsageChange, Error> {
        self.store.adjust_usage(
            &self.actor,
            now(),
            &body.owner,
            &body.target()?,
            body.delta(),
            &body.reason,
        )
    }

    fn reset(&mut self, body: &ResetBody) -> Result<UsageChange, Error> {
        let target = WindowTarget::parse(&body.window)?;
        self.store
            .reset_usage(&self.actor, now(), &body.owner, &target, &body.reason)
    }

    fn raise(&mut self, body: &IncreaseBody) -> Result<IncreaseView, Error> {
        let at = now();
        let (owner, increase) = body.resolve(at)?;
        self.store
            .raise_limit(&self.actor, at, &owner, increase, &body.reason)
    }

    fn increases(&mut self, owner: &BudgetOwner) -> Result<Vec<IncreaseView>, Error> {
        self.store.increases(owner)
    }

    fn alerts(&mut self, limit: u64) -> Result<Vec<AlertView>, Error> {
        self.store.alerts(limit)
    }

    fn import_prices(&mut self, body: &PriceImportBody) -> Result<PriceImport, Error> {
        self.store.import_prices(
            &self.actor,
            now(),
            &body.prices,
            &body.source,
            &body.as_of,
            body.replace,
        )
    }
}

/// `?key=<id>` or `?project=<id>`.
fn owner_query(owner: &BudgetOwner) -> String {
    format!("{}={}", owner.kind(), segment(owner.id()))
}

impl BudgetAdmin for Remote {
    fn set_plan(&mut self, plan: &PlanRecord) -> Result<PlanRecord, Error> {
        let path = format!("/v1/plans/{}", segment(&plan.id));
        self.send("PUT", &path, Some(plan))
    }

    fn plans(&mut self) -> Result<Vec<PlanRecord>, Error> {
        self.send::<List<PlanRecord>, ()>("GET", "/v1/plans", None)
            .map(|list| list.data)
    }

    fn plan(&mut self, id: &str) -> Result<PlanRecord, Error> {
        self.send::<_, ()>("GET", &format!("/v1/plans/{}", segment(id)), None)
    }

    fn remove_plan(&mut self, id: &str) -> Result<PlanRecord, Error> {
        self.send::<_, ()>("DELETE", &format!("/v1/plans/{}", segment(id)), None)
    }

    fn limits(&mut self, owner: &BudgetOwner) -> Result<LimitsSettings, Error> {
        self.send::<_, ()>("GET", &format!("/v1/limits?{}", owner_query(owner)), None)
    }

    fn set_limits(
        &mut self,
        owner: &BudgetOwner,
        limits: &LimitsSettings,
    ) -> Result<LimitsSettings, Error> {
        let path = format!("/v1/limits?{}", owner_query(owner));
        self.send("PUT", &path, Some(limits))
    }

    fn window_history(&mut self, owner: &BudgetOwner) -> Result<Vec<WindowUsageView>, Error> {
        let path = format!("/v1/windows?{}", owner_query(owner));
        self.send::<List<WindowUsageView>, ()>("GET", &path, None)
            .map(|list| list.data)
    }

    fn adjust(&mut self, body: &AdjustBody) -> Result<UsageChange, Error> {
        self.send("POST", "/v1/spend/adjust", Some(body))
    }

    fn reset(&mut self, body: &ResetBody) -> Result<UsageChange, Error> {
        self.send("POST", "/v1/spend/reset", Some(body))
    }

    fn raise(&mut self, body: &IncreaseBody) -> Result<IncreaseView, Error> {
        self.send("POST", "/v1/increases", Some(body))
    }

    fn increases(&mut self, owner: &BudgetOwner) -> Result<Vec<IncreaseView>, Error> {
        let path = format!("/v1/increases?{}", owner_query(owner));
        self.send::<List<IncreaseView>, ()>("GET", &path, None)
            .map(|list| list.data)
    }

    fn alerts(&mut self, limit: u64) -> Result<Vec<AlertView>, Error> {
        let path = format!("/v1/alerts?limit={limit}");
        self.send::<List<AlertView>, ()>("GET", &path, None)
            .map(|list| list.data)
    }

    fn import_prices(&mut self, body: &PriceImportBody) -> Result<PriceImport, Error> {
        self.send("POST", "/v1/prices/import", Some(body))
    }
}
