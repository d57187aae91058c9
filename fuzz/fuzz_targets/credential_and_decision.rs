#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_engine::fuzzing::credential_and_decision(data);
});
