//! CIDR allow-lists for keys: `10.0.0.0/8`, `2001:db8::/32`, or a bare
//! address meaning that one host.

use std::{fmt, net::IpAddr, str::FromStr};

/// Why a string is not a CIDR range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected an IPv4 or IPv6 range such as 10.0.0.0/8 or 2001:db8::/32")]
pub struct InvalidCidr;

/// An IP range. The address is stored with its host bits cleared, so
/// `10.1.2.3/8` and `10.0.0.0/8` are the same range.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Whether `ip` lies in this range. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.0.0.1`) match IPv4 ranges, as a dual-stack socket reports them.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(ip)) => {
                let mask = mask32(self.prefix_len);
                u32::from(ip) & mask == u32::from(network)
            }
            (IpAddr::V6(network), IpAddr::V6(ip)) => {
                let mask = mask128(self.prefix_len);
                u128::from(ip) & mask == u128::from(network)
            }
            _ => false,
        }
    }
}

fn mask32(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn mask128(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = InvalidCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, prefix_len) = match s.split_once('/') {
            Some((address, len)) => (address, Some(len)),
            None => (s, None),
        };
        let address: IpAddr = address.parse().map_err(|_| InvalidCidr)?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_len {
            None => max,
            Some(len) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => len
                .parse::<u8>()
                .ok()
                .filter(|&len| len <= max)
                .ok_or(InvalidCidr)?,
            Some(_) => return Err(InvalidCidr),
        };
        let network = match address {
            IpAddr::V4(ip) => IpAddr::V4((u32::from(ip) & mask32(prefix_len)).into()),
            IpAddr::V6(ip) => IpAddr::V6((u128::from(ip) & mask128(prefix_len)).into()),
        };
        Ok(Self {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cidr({self})")
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn parsing_normalises_and_refuses_garbage() {
        assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(cidr("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "10.0.0/8",
            "10.0.0.0/+8",
            "host/8",
            "10.0.0.0/8/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn membership() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("192.0.2.7/32", "192.0.2.7", true),
            ("192.0.2.7/32", "192.0.2.8", false),
            ("0.0.0.0/0", "203.0.113.9", true),
            ("0.0.0.0/0", "2001:db8::1", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::/0", "::1", true),
            ("::/0", "127.0.0.1", false),
            ("10.0.0.0/8", "::ffff:10.0.0.1", true),
            ("::1/128", "::1", true),
        ];
        for (range, ip, expected) in cases {
            assert_eq!(
                cidr(range).contains(ip.parse().unwrap()),
                *expected,
                "{ip} in {range}"
            );
        }
    }

    /// A range from any address and prefix length, with host bits set.
    fn any_cidr() -> impl Strategy<Value = (IpAddr, u8)> {
        prop_oneof![
            (any::<u32>(), 0u8..=32).prop_map(|(ip, len)| (IpAddr::V4(Ipv4Addr::from(ip)), len)),
            (any::<u128>(), 0u8..=128).prop_map(|(ip, len)| (IpAddr::V6(Ipv6Addr::from(ip)), len)),
        ]
    }

    proptest! {
        /// Any text: an answer, never a panic; what parses prints in a form
        /// that parses back to the same range.
        #[test]
        fn parsing_answers_any_text(
            input in prop_oneof![
                any::<String>(),
                "[0-9a-f:./%+-]{0,45}",
                "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}/[0-9+-]{0,4}",
            ]
        ) {
            if let Ok(range) = input.parse::<Cidr>() {
                prop_assert_eq!(range.to_string().parse::<Cidr>(), Ok(range));
            }
        }

        /// A range contains its own network address, the address it was
        /// written with, and every address that differs only in host bits;
        /// flipping a network bit leaves it.
        #[test]
        fn a_range_contains_its_network_and_hosts((address, len) in any_cidr(), host_bits in any::<u128>()) {
            let range = cidr(&format!("{address}/{len}"));
            let printed = range.to_string();
            let network: IpAddr = printed.split_once('/').unwrap().0.parse().unwrap();
            prop_assert!(range.contains(network), "{range} lacks its network");
            prop_assert!(range.contains(address), "{range} lacks {address}");
            let (width, bits) = match address {
                IpAddr::V4(ip) => (32, u128::from(u32::from(ip))),
                IpAddr::V6(ip) => (128, u128::from(ip)),
            };
            let host_mask = u128::MAX.checked_shl(u32::from(width - len)).map_or(u128::MAX, |m| !m);
            let host = bits & !host_mask | host_bits & host_mask;
            let as_ip = |bits: u128| match address {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(bits).unwrap())),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits)),
            };
            prop_assert!(range.contains(as_ip(host)));
            if len > 0 {
                let outside = bits ^ (1u128 << (width - len));
                prop_assert!(!range.contains(as_ip(outside)), "{range} contains {}", as_ip(outside));
            }
        }
    }
}
