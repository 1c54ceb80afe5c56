//! Addresses as drove compares them: [`Cidr`] networks (`trusted_proxies`) and
//! [`canonical_ip`], which folds an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a
//! dual-stack listener reports for an IPv4 peer) into its IPv4 form, so that a client is
//! the same client for trust checks, hashing and rate limits whichever way it arrived.
//! A leaf with no dependencies: drove-config parses networks with it, drove-balancer
//! hashes with it and drove-proxy matches with it, so there is one definition of each.
#![warn(missing_docs)]

use std::net::IpAddr;
use std::str::FromStr;

/// `ip`, with an IPv4-mapped IPv6 address turned into the IPv4 address it carries.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An IP network, e.g. `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// The network `addr/prefix`; host bits of `addr` are cleared, `prefix` is clamped
    /// to the address length.
    pub fn new(addr: IpAddr, prefix: u8) -> Cidr {
        let (addr, prefix) = match addr {
            IpAddr::V4(a) => {
                let p = prefix.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(p)).unwrap_or(0);
                (IpAddr::V4((u32::from(a) & mask).into()), p)
            }
            IpAddr::V6(a) => {
                let p = prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(p)).unwrap_or(0);
                (IpAddr::V6((u128::from(a) & mask).into()), p)
            }
        };
        Cidr { addr, prefix }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network. IPv4-mapped IPv6 addresses match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical_ip(ip);
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Cidr::new(ip, self.prefix).addr == self.addr
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `"10.0.0.0/8"`, `"::1/128"` or a bare IP (a single host).
    fn from_str(s: &str) -> Result<Cidr, String> {
        let text = s.trim();
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| {
            format!(
                "invalid CIDR \"{text}\"; expected a network like \"10.0.0.0/8\" or \"::1/128\""
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => p,
                _ => {
                    return Err(format!(
                        "invalid prefix length `/{p}` in \"{text}\"; expected 0 to {max}"
                    ))
                }
            },
        };
        Ok(Cidr::new(addr, prefix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses_mapped_or_not() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!(
            !all.contains("::1".parse().unwrap()),
            "v4 network, v6 address"
        );
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert_eq!(one.prefix(), 128);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().unwrap_err().contains("invalid CIDR"));
        let host_bits: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(host_bits.to_string(), "10.0.0.0/8", "host bits cleared");
    }

    #[test]
    fn canonical_folds_mapped_v6_only() {
        assert_eq!(
            canonical_ip("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
    }
}
