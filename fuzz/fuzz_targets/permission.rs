//! Permissions and role names: any text through the parsers; what parses
//! prints back unchanged and grants itself.
#![no_main]

use keyward::permission::{MAX_PERMISSION_BYTES, Permission, RoleName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (held, required) = input;
    let parsed: Vec<Permission> = [held, required]
        .into_iter()
        .filter_map(|text| text.parse().ok())
        .collect();
    for permission in &parsed {
        assert!(permission.as_str().len() <= MAX_PERMISSION_BYTES);
        assert_eq!(
            permission.to_string().parse::<Permission>().as_ref(),
            Ok(permission)
        );
        assert!(
            permission.grants(permission),
            "{permission} does not grant itself"
        );
    }
    if let [a, b] = &parsed[..]
        && a.grants(b)
        && a != b
    {
        assert!(a.as_str().ends_with('*'), "{a} grants {b}");
    }
    if let Ok(name) = held.parse::<RoleName>() {
        assert_eq!(name.as_str(), held);
    }
});
