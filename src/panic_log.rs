//! The last words of a Wasm VM. A panic aborts the VM (`panic = "abort"`), and with it every
//! request of its worker; the SDK's own hook would log the message unfiltered. This hook logs the
//! message and the place through the host at error level, so an operator sees why the VM died.

use std::panic::PanicHookInfo;

use crate::host::{LogLevel, Telemetry};

/// Runs of credential-like characters this long are masked in a message built at run time: such
/// a message could quote request data, and no key may ever reach a log.
const MASKED_RUN: usize = 12;
/// A message is cut after this many characters: one log line, not a dump.
const MAX_MESSAGE_CHARS: usize = 400;

/// Logs the panic described by `info` through `host`.
pub fn log_panic(host: &impl Telemetry, info: &PanicHookInfo<'_>) {
    let payload = info.payload();
    // A `&'static str` payload is a literal from the program; a `String` was formatted at run
    // time from values that may come from a request.
    let message = match (
        payload.downcast_ref::<&'static str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(literal), _) => cut((*literal).to_owned()),
        (None, Some(formatted)) => cut(mask_tokens(formatted)),
        (None, None) => "(no message)".to_owned(),
    };
    let place = info.location().map_or_else(
        || "an unknown place".to_owned(),
        |location| {
            format!(
                "{}:{}:{}",
                location.file(),
                location.line(),
                location.column()
            )
        },
    );
    host.log(
        LogLevel::Error,
        &format!("keyward: panicked at {place}: {message}; this VM aborts"),
    );
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.+/=~".contains(c)
}

/// Replaces every run of at least `MASKED_RUN` token characters with `[masked]`.
fn mask_tokens(message: &str) -> String {
    let mut masked = String::with_capacity(message.len());
    let mut run = String::new();
    let flush = |run: &mut String, masked: &mut String| {
        if run.chars().count() >= MASKED_RUN {
            masked.push_str("[masked]");
        } else {
            masked.push_str(run);
        }
        run.clear();
    };
    for c in message.chars() {
        if is_token_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut masked);
            masked.push(c);
        }
    }
    flush(&mut run, &mut masked);
    masked
}

fn cut(message: String) -> String {
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((at, _)) => format!("{}...", message.get(..at).unwrap_or_default()),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::FakeHost;

    thread_local! {
        static HOST: FakeHost = FakeHost::default();
    }

    /// Runs `panicking` under the hook (the hook is process-wide: the previous one is put back)
    /// and returns what was logged.
    fn logged_by(panicking: impl FnOnce() + std::panic::UnwindSafe) -> Vec<(LogLevel, String)> {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| HOST.with(|host| log_panic(host, info))));
        let outcome = std::panic::catch_unwind(panicking);
        std::panic::set_hook(previous);
        assert!(outcome.is_err(), "it panicked");
        HOST.with(|host| host.logs.take())
    }

    #[test]
    fn a_panic_is_logged_with_its_message_and_place_at_error_level() {
        let line = line!() + 1;
        let logs = logged_by(|| panic!("the index is gone"));
        assert_eq!(logs.len(), 1, "{logs:?}");
        let (level, text) = &logs[0];
        assert_eq!(*level, LogLevel::Error);
        assert!(text.contains("the index is gone"), "{text}");
        assert!(
            text.contains(&format!("src/panic_log.rs:{line}:")),
            "{text}"
        );
    }

    #[test]
    fn a_formatted_message_loses_anything_like_a_credential() {
        let key = "ak_good1.s3cr3tS3cr3tS3cr3tXY".to_owned();
        let logs = logged_by(move || {
            let position = key.len() + 3;
            panic!("byte index {position} is out of bounds of `{key}`")
        });
        let text = &logs[0].1;
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(
            text.contains("byte index 32 is out of bounds of `[masked]`"),
            "{text}"
        );
    }

    #[test]
    fn long_messages_are_cut() {
        assert_eq!(cut("é".repeat(500)).chars().count(), MAX_MESSAGE_CHARS + 3);
        assert_eq!(cut("short".to_owned()), "short");
        assert_eq!(mask_tokens("a-b c 0123456789ab!"), "a-b c [masked]!");
    }
}
