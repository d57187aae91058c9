//! The fleet's private key, which opens the provider keys of every snapshot. It reaches the data
//! plane out of band, in the environment variable `KEYWARD_FLEET_PRIVATE_KEY`: never in the
//! plugin configuration (Envoy's `/config_dump` shows that) nor in a snapshot. Envoy hands a
//! Wasm VM the variables of `vm_config.environment_variables` through WASI `environ_get`; the
//! native build reads its process's environment.

use std::sync::Arc;

use keyward_engine::provider_keys::{FleetPrivateKey, FLEET_PRIVATE_KEY_ENV};

use crate::host::LogLevel;

/// The key from the environment, and a line for the log saying what happened (never the key):
/// info when read, error when set but unusable.
pub fn fleet_key_from_environment() -> (Option<Arc<FleetPrivateKey>>, Option<(LogLevel, String)>) {
    let (key, note) = fleet_key_from(environment_variable(FLEET_PRIVATE_KEY_ENV).as_deref());
    let level = if key.is_some() {
        LogLevel::Info
    } else {
        LogLevel::Error
    };
    (key, note.map(|line| (level, line)))
}

/// The key from the variable's value, if any: an unreadable value is refused with its cause.
pub fn fleet_key_from(value: Option<&str>) -> (Option<Arc<FleetPrivateKey>>, Option<String>) {
    match value {
        None => (None, None),
        Some(text) => match FleetPrivateKey::from_base64(text) {
            Ok(key) => (
                Some(Arc::new(key)),
                Some(format!("keyward: fleet private key read from {FLEET_PRIVATE_KEY_ENV}")),
            ),
            Err(cause) => (
                None,
                Some(format!(
                    "keyward: {FLEET_PRIVATE_KEY_ENV} is set but unusable ({cause}); requests on provider routes are refused"
                )),
            ),
        },
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn environment_variable(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

// WASI's environment calls (`wasi_snapshot_preview1`), which Envoy's Wasm runtime serves from
// `vm_config.environment_variables`. The module targets wasm32-unknown-unknown, so it imports
// the two functions itself rather than link a WASI libc.
#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn environ_sizes_get(count: *mut usize, buffer_size: *mut usize) -> i32;
    fn environ_get(entries: *mut *mut u8, buffer: *mut u8) -> i32;
}

#[cfg(target_arch = "wasm32")]
fn environment_variable(name: &str) -> Option<String> {
    let mut count = 0usize;
    let mut size = 0usize;
    // SAFETY: both pointers are to live locals the host writes one usize each into.
    if unsafe { environ_sizes_get(&mut count, &mut size) } != 0 || count == 0 {
        return None;
    }
    let mut pointers: Vec<*mut u8> = vec![core::ptr::null_mut(); count];
    let mut buffer = zeroize::Zeroizing::new(vec![0u8; size]);
    // SAFETY: the host writes `count` pointers and `size` bytes, the sizes it just reported.
    if unsafe { environ_get(pointers.as_mut_ptr(), buffer.as_mut_ptr()) } != 0 {
        return None;
    }
    // Entries are `NAME=value\0`, back to back in the buffer.
    buffer
        .split(|byte| *byte == 0)
        .filter_map(|entry| core::str::from_utf8(entry).ok())
        .find_map(|entry| {
            entry
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        })
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_value_is_reported_without_repeating_it() {
        let (key, line) = fleet_key_from(Some("c2VjcmV0LW5vdC1hLWtleQ=="));
        assert!(key.is_none());
        let line = line.expect("a log line");
        assert!(line.contains("not 32 bytes"), "{line}");
        assert!(!line.contains("c2VjcmV0"));
        assert_eq!(fleet_key_from(None).1, None);
        let (private, _) = FleetPrivateKey::derive_pair(&[1u8; 32]);
        assert!(fleet_key_from(Some(&private)).0.is_some());
    }
}
