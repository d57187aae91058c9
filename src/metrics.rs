//! Envoy stats for keyward, defined once per root context.

use keyward_engine::denial::DenyCode;

use crate::host::{HostError, MetricKind};

/// Metric ids as returned by the host. Names appear in Envoy's `/stats` (with Envoy's prefix for
/// Wasm metrics, e.g. `wasmcustom.keyward.requests.allowed`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    pub allowed: u32,
    pub exempt: u32,
    pub fail_open: u32,
    pub shadow_denied: u32,
    pub policy_version: u32,
    denied: Vec<(DenyCode, u32)>,
}

impl Metrics {
    /// Defines every metric through `define`; any failure fails the configuration.
    pub fn define(
        mut define: impl FnMut(MetricKind, &str) -> Result<u32, HostError>,
    ) -> Result<Metrics, HostError> {
        let mut counter = |name: &str| define(MetricKind::Counter, name);
        let allowed = counter("keyward.requests.allowed")?;
        let exempt = counter("keyward.requests.exempt")?;
        let fail_open = counter("keyward.requests.fail_open")?;
        let shadow_denied = counter("keyward.requests.shadow_denied")?;
        let mut denied = Vec::with_capacity(DenyCode::ALL.len());
        for code in DenyCode::ALL {
            denied.push((
                code,
                counter(&format!("keyward.requests.denied.{}", code.as_str()))?,
            ));
        }
        let policy_version = define(MetricKind::Gauge, "keyward.policy.version")?;
        Ok(Metrics {
            allowed,
            exempt,
            fail_open,
            shadow_denied,
            policy_version,
            denied,
        })
    }

    pub fn denied(&self, code: DenyCode) -> Option<u32> {
        self.denied
            .iter()
            .find(|(defined, _)| *defined == code)
            .map(|(_, id)| *id)
    }
}
