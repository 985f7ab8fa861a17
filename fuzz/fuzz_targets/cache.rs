//! libFuzzer entry point of the `cache` target; the body is [`latchless_fuzz::run_cache`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    latchless_fuzz::run_cache(data);
});
