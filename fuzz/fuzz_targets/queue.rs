//! libFuzzer entry point of the `queue` target; the body is [`latchless_fuzz::run_queue`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    latchless_fuzz::run_queue(data);
});
