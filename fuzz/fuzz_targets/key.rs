//! The key format: any text through the key, prefix and key id parsers.
#![no_main]

use keyward::key::{KeyId, ParsedKey, Prefix};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(parsed) = ParsedKey::parse(text) {
        // A key is `<prefix>_<id><secret><checksum>`, ASCII, with its id visible.
        let (prefix, body) = text.split_once('_').expect("a parsed key has a separator");
        assert!(prefix.parse::<Prefix>().is_ok(), "{text:?}");
        assert!(body.starts_with(&parsed.id().to_string()), "{text:?}");
        assert!(text.is_ascii(), "{text:?}");
    }
    if let Ok(prefix) = text.parse::<Prefix>() {
        assert_eq!(prefix.to_string(), text);
    }
    if let Ok(id) = text.parse::<KeyId>() {
        assert_eq!(id.to_string(), text);
    }
});
