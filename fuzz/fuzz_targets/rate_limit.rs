//! Rate limits, as text (`N/s`, the CLI's and the server's flags) and as
//! numbers (the wire's requests, period and burst).
#![no_main]

use std::time::Duration;

use keyward::rate_limit::{MAX_PERIOD, RateLimit};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u32, u64, u32, u32)| {
    let (text, requests, per_secs, per_nanos, burst) = input;
    if let Ok(limit) = text.parse::<RateLimit>() {
        assert!(limit.requests() >= 1 && limit.burst() == limit.requests());
        let _ = limit.to_string();
    }
    let per = Duration::new(per_secs, per_nanos % 1_000_000_000);
    if let Ok(limit) = RateLimit::new(requests, per, burst) {
        assert!(limit.per() >= Duration::from_millis(1) && limit.per() <= MAX_PERIOD);
        assert!(limit.per_second().is_finite() && limit.per_second() > 0.0);
    }
});
