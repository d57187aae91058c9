#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_engine::fuzzing::request_body(data);
});
