//! libFuzzer entry point of the `counter` target; the body is [`latchless_fuzz::run_counter`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    latchless_fuzz::run_counter(data);
});
