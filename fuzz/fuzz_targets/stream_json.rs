#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| worker::fuzzing::stream_json(data));
