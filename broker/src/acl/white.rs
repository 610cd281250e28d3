//! RocketMQ's `globalWhiteRemoteAddresses`: peers whose address matches skip the ACL checks
//! (no signature, every permission, admin included), as in RocketMQ 4.x.
//!
//! Patterns, as RocketMQ writes them, plus CIDR:
//! - `*` or `*.*.*.*`: every peer;
//! - an exact address, IPv4 or IPv6: `192.168.0.7`, `::1`;
//! - IPv4 with per-part wildcards, ranges and lists; missing trailing parts are `*`:
//!   `192.168.*`, `192.168.1.*`, `192.168.1.10-20`, `192.168.1.{7,9,11}`;
//! - CIDR: `10.0.0.0/8`, `fd00::/8`.

use std::net::IpAddr;

/// One parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressPattern {
    /// Every address.
    Any,
    /// One address.
    Exact(IpAddr),
    /// An IPv4 address part by part.
    V4([Part; 4]),
    /// A network: address and prefix length.
    Cidr(IpAddr, u8),
}

/// One part of an IPv4 pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// `*`
    Any,
    /// `a-b` (a single number is `a-a`).
    Range(u8, u8),
    /// `{a,b,c}`
    List(Vec<u8>),
}

impl Part {
    fn parse(s: &str) -> Option<Self> {
        if s == "*" {
            return Some(Self::Any);
        }
        if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            let list: Option<Vec<u8>> = inner.split(',').map(|n| n.trim().parse().ok()).collect();
            return list.filter(|l| !l.is_empty()).map(Self::List);
        }
        if let Some((a, b)) = s.split_once('-') {
            let (a, b) = (a.parse().ok()?, b.parse().ok()?);
            return (a <= b).then_some(Self::Range(a, b));
        }
        let n = s.parse().ok()?;
        Some(Self::Range(n, n))
    }

    fn matches(&self, n: u8) -> bool {
        match self {
            Self::Any => true,
            Self::Range(a, b) => (*a..=*b).contains(&n),
            Self::List(l) => l.contains(&n),
        }
    }
}

impl AddressPattern {
    /// Parses one pattern; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || {
            format!("white address {s:?} is not an address, a pattern like 192.168.1.* or 10.0.0.1-9, or a CIDR")
        };
        if s == "*" || s == "*.*.*.*" {
            return Ok(Self::Any);
        }
        if let Some((addr, len)) = s.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let len: u8 = len.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            if len > max {
                return Err(bad());
            }
            return Ok(Self::Cidr(addr, len));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(Self::Exact(ip));
        }
        let parts: Vec<&str> = s.split('.').collect();
        if parts.is_empty() || parts.len() > 4 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        let mut out = [Part::Any, Part::Any, Part::Any, Part::Any];
        for (i, p) in parts.iter().enumerate() {
            out[i] = Part::parse(p).ok_or_else(bad)?;
        }
        // "192.168" would silently mean 192.168.*.*; RocketMQ requires the trailing `*`.
        if parts.len() < 4 && parts.last() != Some(&"*") {
            return Err(bad());
        }
        Ok(Self::V4(out))
    }

    /// Whether `ip` matches (an IPv4-mapped IPv6 peer is matched as IPv4).
    pub fn matches(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match self {
            Self::Any => true,
            Self::Exact(want) => *want == ip,
            Self::V4(parts) => match ip {
                IpAddr::V4(v4) => parts.iter().zip(v4.octets()).all(|(p, o)| p.matches(o)),
                IpAddr::V6(_) => false,
            },
            Self::Cidr(net, len) => in_network(ip, *net, *len),
        }
    }
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, ip: &str) -> bool {
        AddressPattern::parse(p)
            .unwrap()
            .matches(ip.parse().unwrap())
    }

    #[test]
    fn rocketmq_patterns_match_as_rocketmq_documents_them() {
        assert!(m("*", "8.8.8.8"));
        assert!(m("*.*.*.*", "::1"));
        assert!(m("192.168.0.7", "192.168.0.7"));
        assert!(!m("192.168.0.7", "192.168.0.8"));
        assert!(m("192.168.*", "192.168.200.1"));
        assert!(!m("192.168.*", "192.169.0.1"));
        assert!(m("192.168.1.*", "192.168.1.255"));
        assert!(m("192.168.1.10-20", "192.168.1.15"));
        assert!(!m("192.168.1.10-20", "192.168.1.21"));
        assert!(m("192.168.1.{7,9,11}", "192.168.1.9"));
        assert!(!m("192.168.1.{7,9,11}", "192.168.1.8"));
        assert!(m("::1", "::1"));
        assert!(
            m("127.0.0.1", "::ffff:127.0.0.1"),
            "IPv4-mapped peers match IPv4 patterns"
        );
    }

    #[test]
    fn cidr_networks_match_their_members_only() {
        assert!(m("10.0.0.0/8", "10.200.3.4"));
        assert!(!m("10.0.0.0/8", "11.0.0.1"));
        assert!(m("0.0.0.0/0", "1.2.3.4"));
        assert!(m("fd00::/8", "fd12::1"));
        assert!(!m("fd00::/8", "fe80::1"));
        assert!(!m("10.0.0.0/8", "fd00::1"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for p in [
            "",
            "192.168",
            "300.1.1.1",
            "1.2.3.4.5",
            "1.2.3.{}",
            "1.2.3.9-3",
            "10.0.0.0/33",
            "a.b.c.d",
            "1..2.3",
        ] {
            assert!(AddressPattern::parse(p).is_err(), "{p:?} should be refused");
        }
    }
}
