//! The panic barrier every exported hook goes through. Unwinding into Envoy's C++ frames is
//! undefined behaviour and a panic in a native module takes the whole proxy down, so each hook
//! runs its body under `catch_unwind` and turns a panic into its fail-closed answer.
//!
//! The module is built with `panic = "unwind"` (the `native-release` profile): with
//! `panic = "abort"` nothing could be caught, which `build.rs`-free code checks at compile time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

#[cfg(all(panic = "abort", not(test)))]
compile_error!(
    "keyward-native must be built with panic = \"unwind\" (cargo build --profile native-release): \
     with abort, a panic in a hook would take Envoy down instead of failing closed"
);

/// Runs `body`; on a panic, logs where it happened and returns `fail_closed()` instead.
/// `AssertUnwindSafe`: after a panic the caller only uses `fail_closed`, never state that the
/// body may have left half-updated (per-stream state is marked poisoned by the caller).
pub fn guarded<T>(hook: &str, body: impl FnOnce() -> T, fail_closed: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(_) => {
            #[cfg(test)]
            CAUGHT.with(|caught| caught.set(caught.get() + 1));
            crate::host::log_error(&format!(
                "keyward: panic in {hook}; failing closed (see the panic location above)"
            ));
            // The fail-closed path itself must not unwind into Envoy either.
            catch_unwind(AssertUnwindSafe(fail_closed)).unwrap_or_else(|_| {
                // Only reachable if the fallback panicked too; nothing safer is left to do.
                std::process::abort()
            })
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Panics the barrier caught on this thread (tests: the corpora must cause none).
    pub static CAUGHT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

static PANIC_HOOK: Once = Once::new();

/// Replaces the default panic message (stderr, with the payload) by one Envoy log line with only
/// the location: a payload may quote request data, and no secret may reach a log.
pub fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_else(|| "unknown location".to_owned());
            crate::host::log_error(&format!("keyward: panic at {location}"));
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_body_gives_the_fail_closed_value() {
        install_panic_hook();
        let got = guarded("test", || -> u32 { panic!("boom") }, || 500);
        assert_eq!(got, 500);
    }

    #[test]
    fn a_normal_body_gives_its_value_and_skips_the_fallback() {
        let mut fallback_ran = false;
        let got = guarded(
            "test",
            || 7,
            || {
                fallback_ran = true;
                0
            },
        );
        assert_eq!(got, 7);
        assert!(!fallback_ran);
    }
}
