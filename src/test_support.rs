//! Test doubles shared by the filter's unit tests.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::host::SetOutcome;

/// Shared data that behaves like Envoy's: one CAS counter, a missing key accepts any CAS, and
/// CAS 0 overwrites.
#[derive(Default)]
pub struct SharedMap {
    pub entries: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
}

impl SharedMap {
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.entries.borrow().get(key).cloned()
    }

    pub fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> SetOutcome {
        let mut entries = self.entries.borrow_mut();
        if let (Some(cas), Some((_, current))) = (cas, entries.get(key)) {
            if cas != 0 && cas != *current {
                return SetOutcome::CasMismatch;
            }
        }
        self.next_cas.set(self.next_cas.get() + 1);
        entries.insert(key.to_owned(), (value.to_vec(), self.next_cas.get()));
        SetOutcome::Written
    }
}
