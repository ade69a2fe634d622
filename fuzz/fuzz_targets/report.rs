//! Arbitrary bytes as a run folder's `summary.json` and `metrics.jsonl` (split at the
//! first zero byte) through `kdc report`: the parse and the page with its charts. Errors
//! are expected; a panic or an allocation past libFuzzer's limit is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (summary, metrics) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let (summary, metrics) = (
        String::from_utf8_lossy(summary),
        String::from_utf8_lossy(metrics),
    );
    if let Ok(run) = kd_report::parse(std::path::Path::new("run"), &summary, &metrics) {
        let _ = kd_report::render(&run);
    }
});
