//! CIDR allow-list entries: what parses prints in a form that parses back
//! to the same range, which contains its own network address.
#![no_main]

use std::net::IpAddr;

use keyward::cidr::Cidr;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(range) = text.parse::<Cidr>() {
        let printed = range.to_string();
        assert_eq!(printed.parse::<Cidr>(), Ok(range), "{text:?}");
        let network: IpAddr = printed
            .split_once('/')
            .expect("a printed range has a length")
            .0
            .parse()
            .expect("a printed range starts with an address");
        assert!(range.contains(network), "{range} lacks {network}");
    }
});
