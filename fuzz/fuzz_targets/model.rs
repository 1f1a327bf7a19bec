#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrolm::api::fuzz::model(data));
