#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keyward_engine::fuzzing::usage_reader(data);
});
