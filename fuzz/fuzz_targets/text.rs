//! Free text and labels: what passes is within its bound and hides nothing.
#![no_main]

use std::collections::BTreeMap;

use keyward::{
    model::{Labels, MAX_LABEL_BYTES, MAX_LABELS},
    text,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u16, Vec<(String, String)>)| {
    let (free, max, pairs) = input;
    let max = usize::from(max);
    if text::check(free, max).is_ok() {
        assert!(free.len() <= max);
        assert!(!free.chars().any(char::is_control), "{free:?}");
    }
    let map: BTreeMap<String, String> = pairs.into_iter().collect();
    if let Ok(labels) = Labels::new(map.clone()) {
        assert!(labels.as_map().len() <= MAX_LABELS);
        for (key, value) in labels.as_map() {
            assert!(!key.is_empty() && !key.contains('='), "{key:?}");
            assert!(text::check(value, MAX_LABEL_BYTES).is_ok(), "{value:?}");
        }
    }
});
