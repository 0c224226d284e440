//! CIDR lists with logarithmic matching.
//!
//! A list of networks is compiled into sorted, merged, non-overlapping
//! address ranges per family; a lookup is one binary search. IPv4-mapped IPv6
//! addresses (`::ffff:10.1.2.3`) are matched as the IPv4 address they carry,
//! so a filter written in IPv4 cannot be bypassed by a dual-stack socket.

use std::net::IpAddr;

use ipnet::IpNet;

/// A compiled set of IP networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpList {
    // Boxed slices, sized exactly: a cached client record carries one.
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u128)]>,
}

/// Parse one list entry: a single address (`10.1.2.3`, `::1`) or a network
/// (`10.0.0.0/8`). Host bits set in a network (`10.1.2.3/8`) are refused: the
/// writer almost certainly meant something else.
pub fn parse_entry(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address or CIDR network"))?;
    if net.trunc() != net {
        return Err(format!(
            "{text:?} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

impl IpList {
    /// Build from already-parsed networks.
    pub fn new<I: IntoIterator<Item = IpNet>>(nets: I) -> IpList {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => {
                    // A v4-mapped v6 network is stored as IPv4 so both spellings match.
                    if let Some(v4net) = mapped_v4_net(&n) {
                        v4.push(v4net);
                    } else {
                        v6.push((u128::from(n.network()), u128::from(n.broadcast())));
                    }
                }
            }
        }
        IpList {
            v4: merge(v4).into_boxed_slice(),
            v6: merge(v6).into_boxed_slice(),
        }
    }

    /// Parse a list of entries, returning the index and reason of each bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<IpList, Vec<(usize, String)>> {
        let mut nets = Vec::with_capacity(entries.len());
        let mut errors = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            match parse_entry(entry.as_ref()) {
                Ok(net) => nets.push(net),
                Err(e) => errors.push((i, e)),
            }
        }
        if errors.is_empty() {
            Ok(IpList::new(nets))
        } else {
            Err(errors)
        }
    }

    /// Whether `addr` falls in any network of the list.
    pub fn contains(&self, addr: IpAddr) -> bool {
        match canonical(addr) {
            IpAddr::V4(a) => lookup(&self.v4, u32::from(a)),
            IpAddr::V6(a) => lookup(&self.v6, u128::from(a)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// The address as policy sees it: IPv4-mapped IPv6 becomes IPv4.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

fn mapped_v4_net(net: &ipnet::Ipv6Net) -> Option<(u32, u32)> {
    if net.prefix_len() < 96 {
        return None;
    }
    let start = net.network().to_ipv4_mapped()?;
    let end = net.broadcast().to_ipv4_mapped()?;
    Some((u32::from(start), u32::from(end)))
}

fn merge<T: Ord + Copy + num_like::Succ>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1.succ_saturating() => {
                if end > last.1 {
                    last.1 = end;
                }
            }
            _ => out.push((start, end)),
        }
    }
    out.shrink_to_fit();
    out
}

fn lookup<T: Ord + Copy>(ranges: &[(T, T)], addr: T) -> bool {
    // Index of the first range starting after addr; the candidate is the one before.
    let idx = ranges.partition_point(|&(start, _)| start <= addr);
    idx > 0 && ranges[idx - 1].1 >= addr
}

mod num_like {
    /// `x + 1` without overflow, to merge adjacent ranges.
    pub trait Succ {
        fn succ_saturating(self) -> Self;
    }
    impl Succ for u32 {
        fn succ_saturating(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl Succ for u128 {
        fn succ_saturating(self) -> Self {
            self.saturating_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> IpList {
        IpList::parse(entries).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn single_addresses_and_networks() {
        let l = list(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"]);
        assert!(l.contains(ip("10.255.0.1")));
        assert!(!l.contains(ip("11.0.0.1")));
        assert!(l.contains(ip("192.168.1.7")));
        assert!(!l.contains(ip("192.168.1.8")));
        assert!(l.contains(ip("2001:db8:1::5")));
        assert!(!l.contains(ip("2001:db9::1")));
        assert!(l.contains(ip("::1")));
        assert!(!l.contains(ip("::2")));
    }

    #[test]
    fn ipv4_mapped_ipv6_matches_as_ipv4() {
        let l = list(&["10.0.0.0/8"]);
        assert!(l.contains(ip("::ffff:10.1.2.3")));
        assert!(!l.contains(ip("::ffff:11.1.2.3")));
        let mapped = list(&["::ffff:10.0.0.0/104"]);
        assert!(mapped.contains(ip("10.9.9.9")));
    }

    #[test]
    fn overlapping_and_adjacent_ranges_merge() {
        let l = list(&["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128/25", "0.0.0.0/0"]);
        assert_eq!(l.v4.len(), 1);
        assert!(l.contains(ip("255.255.255.255")));
        let all6 = list(&["::/0"]);
        assert!(all6.contains(ip("ffff::1")));
        assert!(!all6.contains(ip("1.2.3.4")));
    }

    #[test]
    fn edges_of_ranges() {
        let l = list(&["10.0.0.8/29", "10.0.0.32/30"]);
        for (addr, inside) in [
            ("10.0.0.7", false),
            ("10.0.0.8", true),
            ("10.0.0.15", true),
            ("10.0.0.16", false),
            ("10.0.0.31", false),
            ("10.0.0.32", true),
            ("10.0.0.35", true),
            ("10.0.0.36", false),
        ] {
            assert_eq!(l.contains(ip(addr)), inside, "{addr}");
        }
    }

    #[test]
    fn bad_entries_are_reported_with_their_index() {
        let errs = IpList::parse(&["10.0.0.0/8", "10.0.0.0/33", "nope", "10.1.2.3/8"]).unwrap_err();
        let idx: Vec<_> = errs.iter().map(|(i, _)| *i).collect();
        assert_eq!(idx, vec![1, 2, 3]);
        assert!(errs[2].1.contains("10.0.0.0/8"));
    }

    #[test]
    fn empty_list_matches_nothing() {
        let l = IpList::default();
        assert!(l.is_empty());
        assert!(!l.contains(ip("127.0.0.1")));
    }
}
