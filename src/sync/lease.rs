//! Which VM polls: with poller `lease`, the filter VMs sharing a vm_id elect one through a lease
//! in shared data, under holder ids that are unique per VM.

use keyward_engine::sync::{lease_step, LeaseStep, INSTANCE_COUNTER_ENTRY, LEASE_ENTRY};

use crate::host::{HostError, SetOutcome, SharedData, CREATE_ONLY};

/// A number no other VM sharing this vm_id has been given: the lease needs holder ids that
/// differ between VMs, and worker VMs are clones that start in the same millisecond with the
/// same context ids, so neither can tell them apart. A CAS-incremented counter can.
pub fn claim_instance_number(host: &impl SharedData) -> Result<u64, HostError> {
    // Each failed attempt means another VM just claimed a number; a few suffice.
    for _ in 0..64 {
        let current = host.shared_get(INSTANCE_COUNTER_ENTRY)?;
        let (next, cas) = match &current {
            Some((value, cas)) => {
                let text = core::str::from_utf8(value).unwrap_or("0");
                (text.parse::<u64>().unwrap_or(0) + 1, *cas)
            }
            None => (1, CREATE_ONLY),
        };
        let written = host.shared_set(
            INSTANCE_COUNTER_ENTRY,
            next.to_string().as_bytes(),
            Some(cas),
        )?;
        if written == SetOutcome::Written {
            return Ok(next);
        }
    }
    Err(HostError::Contended)
}

/// Takes or renews the lease for holder `me`; whether `me` holds it now. A holder that stops
/// renewing loses it after `ttl_ms`.
pub fn hold_lease(
    host: &impl SharedData,
    me: &str,
    now_ms: u64,
    ttl_ms: u64,
) -> Result<bool, HostError> {
    let current = host.shared_get(LEASE_ENTRY)?;
    let (value, cas) = match &current {
        Some((value, cas)) => (Some(value.as_slice()), *cas),
        None => (None, CREATE_ONLY),
    };
    match lease_step(value, me, now_ms, ttl_ms) {
        LeaseStep::Wait => Ok(false),
        LeaseStep::Write(lease) => {
            let written = host.shared_set(LEASE_ENTRY, lease.encode().as_bytes(), Some(cas))?;
            Ok(written == SetOutcome::Written)
        }
    }
}
