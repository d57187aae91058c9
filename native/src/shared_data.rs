//! Process-wide key/value entries with Envoy's shared-data compare-and-swap rules, for the
//! filter code that still speaks `SharedData` (spend counters, rate-limit state). In a native
//! module every worker runs in one address space, so this is a mutex around a map instead of a
//! host call. The rules copied from Envoy's proxy-wasm shared data (see FACTS.md):
//!
//! - a set on a missing entry succeeds whatever cas is given;
//! - on an existing entry, cas 0 overwrites unconditionally and any other cas must equal the
//!   entry's current token, else `CasMismatch`;
//! - every write gives the entry a new token from one process-wide counter that skips 0.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use keyward_filter::host::{HostError, SetOutcome, SharedData};

/// The value and its CAS token.
type Entry = (Vec<u8>, u32);

#[derive(Debug, Default)]
pub struct SharedEntries {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    next_cas: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Yes,
    CasMismatch,
}

impl SharedEntries {
    pub fn new() -> SharedEntries {
        SharedEntries::default()
    }

    /// A panic while the lock was held leaves the map itself consistent (every update below is
    /// one insert), so a poisoned lock is used as is rather than failing every request after.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.lock().entries.get(key).cloned()
    }

    pub fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Written {
        let mut inner = self.lock();
        let cas = cas.unwrap_or(0);
        if let Some((_, current)) = inner.entries.get(key) {
            if cas != 0 && cas != *current {
                return Written::CasMismatch;
            }
        }
        inner.next_cas = inner.next_cas.wrapping_add(1);
        if inner.next_cas == 0 {
            inner.next_cas = 1;
        }
        let token = inner.next_cas;
        inner
            .entries
            .insert(key.to_owned(), (value.to_vec(), token));
        Written::Yes
    }
}

/// Envoy's shared data as keyward-filter's `SharedData` trait, over one process-wide map.
#[derive(Debug, Clone, Copy)]
pub struct ProcessShared<'a>(pub &'a SharedEntries);

impl SharedData for ProcessShared<'_> {
    fn shared_get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        Ok(self.0.get(key))
    }

    fn shared_set(
        &self,
        key: &str,
        value: &[u8],
        cas: Option<u32>,
    ) -> Result<SetOutcome, HostError> {
        Ok(match self.0.set(key, value, cas) {
            Written::Yes => SetOutcome::Written,
            Written::CasMismatch => SetOutcome::CasMismatch,
        })
    }

    fn now_ms(&self) -> Result<u64, HostError> {
        crate::native_host::now_ms()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_rules_match_envoy_shared_data() {
        let map = SharedEntries::new();
        assert_eq!(map.get("k"), None);
        // Missing entry: any cas creates it (this is how CREATE_ONLY = u32::MAX works).
        assert_eq!(map.set("k", b"a", Some(u32::MAX)), Written::Yes);
        let (value, token) = map.get("k").expect("written");
        assert_eq!(value, b"a");
        assert_ne!(token, 0);
        // Existing entry: a stale or made-up cas is refused...
        assert_eq!(map.set("k", b"b", Some(u32::MAX)), Written::CasMismatch);
        assert_eq!(
            map.set("k", b"b", Some(token.wrapping_add(1))),
            Written::CasMismatch
        );
        // ...the current one wins once...
        assert_eq!(map.set("k", b"b", Some(token)), Written::Yes);
        assert_eq!(map.set("k", b"c", Some(token)), Written::CasMismatch);
        // ...and None (cas 0) overwrites unconditionally.
        assert_eq!(map.set("k", b"d", None), Written::Yes);
        assert_eq!(map.get("k").map(|(v, _)| v), Some(b"d".to_vec()));
    }

    #[test]
    fn tokens_come_from_one_counter_across_keys() {
        let map = SharedEntries::new();
        map.set("a", b"1", None);
        map.set("b", b"1", None);
        let (_, a) = map.get("a").expect("a");
        let (_, b) = map.get("b").expect("b");
        assert_ne!(a, b);
    }

    #[test]
    fn concurrent_cas_increments_lose_nothing() {
        let map = std::sync::Arc::new(SharedEntries::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let map = std::sync::Arc::clone(&map);
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        loop {
                            let (count, cas) = match map.get("n") {
                                Some((bytes, cas)) => {
                                    (u64::from_le_bytes(bytes.try_into().expect("8 bytes")), cas)
                                }
                                None => (0, u32::MAX),
                            };
                            if map.set("n", &(count + 1).to_le_bytes(), Some(cas)) == Written::Yes {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        let (bytes, _) = map.get("n").expect("written");
        assert_eq!(u64::from_le_bytes(bytes.try_into().expect("8 bytes")), 2000);
    }
}
