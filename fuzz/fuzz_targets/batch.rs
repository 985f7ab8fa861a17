//! libFuzzer entry point of the `batch` target; the body is [`latchless_fuzz::run_batch`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    latchless_fuzz::run_batch(data);
});
