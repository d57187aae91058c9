//! What every keyward filter configuration in one Envoy process shares, as the Wasm filters
//! sharing a `vm_id` share Envoy's shared data: the live counters, the sync entries (published
//! snapshot, chunks, usage batches) and the usage not handed to the reporter yet. Process-wide,
//! not per configuration, so that none of it is lost when Envoy replaces a filter configuration
//! (a listener update): the new one takes over the counters, the published snapshot and the
//! batch in flight.

use std::sync::{Arc, LazyLock, Mutex};

use keyward_filter::usage_activity::Activity;

use crate::ledger::ProcessLedger;
use crate::shared_data::SharedEntries;

#[derive(Debug, Default)]
pub struct Process {
    pub ledger: ProcessLedger,
    pub shared: SharedEntries,
    pub activity: Arc<Mutex<Activity>>,
}

pub static PROCESS: LazyLock<Process> = LazyLock::new(Process::default);
