//! libFuzzer entry point of the `batch_stream` target; the body is
//! [`latchless_fuzz::run_batch_stream`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    latchless_fuzz::run_batch_stream(data);
});
