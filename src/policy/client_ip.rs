//! Which address is "the client" for policy.
//!
//! The socket peer, unless the peer is a trusted proxy: then the forwarding
//! headers are read right to left and the first address that is not itself a
//! trusted proxy is the client. From an untrusted peer the headers are
//! ignored entirely (they are attacker-controlled).

use std::net::IpAddr;

use http::HeaderMap;

use super::ip::{canonical, IpList};

/// Resolve the client address. `peer` is the socket peer (None for a unix
/// socket, which policy treats as unknown and fails closed on IP rules).
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &IpList) -> Option<IpAddr> {
    let peer = canonical(peer?);
    if trusted.is_empty() || !trusted.contains(peer) {
        return Some(peer);
    }
    // Walk the hops right to left: X-Forwarded-For first (the common case),
    // then RFC 7239 Forwarded.
    let mut hops: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else {
            return Some(peer);
        };
        for part in text.split(',') {
            match parse_hop(part) {
                Some(ip) => hops.push(ip),
                // An unparseable hop: stop believing anything left of it.
                None => hops.clear(),
            }
        }
    }
    if hops.is_empty() {
        for value in headers.get_all("forwarded") {
            let Ok(text) = value.to_str() else {
                return Some(peer);
            };
            for element in text.split(',') {
                let for_value = element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v)
                });
                match for_value.and_then(parse_hop) {
                    Some(ip) => hops.push(ip),
                    None => hops.clear(),
                }
            }
        }
    }
    Some(
        hops.iter()
            .rev()
            .map(|ip| canonical(*ip))
            .find(|ip| !trusted.contains(*ip))
            // Every hop trusted: the left-most is the closest we know to the origin.
            .or_else(|| hops.first().map(|ip| canonical(*ip)))
            .unwrap_or(peer),
    )
}

/// One hop: `1.2.3.4`, `1.2.3.4:5678`, `"[2001:db8::1]:80"`, `2001:db8::1`.
fn parse_hop(text: &str) -> Option<IpAddr> {
    let t = text.trim().trim_matches('"');
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = t.strip_prefix('[') {
        let (inner, _) = rest.split_once(']')?;
        return inner.parse().ok();
    }
    let (host, port) = t.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let trusted = IpList::parse(&["10.0.0.0/8"]).unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            client_ip(Some(ip("192.0.2.1")), &h, &trusted),
            Some(ip("192.0.2.1"))
        );
        assert_eq!(
            client_ip(Some(ip("192.0.2.1")), &h, &IpList::default()),
            Some(ip("192.0.2.1"))
        );
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted_hop() {
        let trusted = IpList::parse(&["10.0.0.0/8"]).unwrap();
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), &h, &trusted),
            Some(ip("198.51.100.7"))
        );
        // Several header lines concatenate in order.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.9"),
        ]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), &h, &trusted),
            Some(ip("198.51.100.9"))
        );
    }

    #[test]
    fn forwarded_header_is_understood() {
        let trusted = IpList::parse(&["10.0.0.0/8"]).unwrap();
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::7]:443\";proto=https",
        )]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), &h, &trusted),
            Some(ip("2001:db8::7"))
        );
    }

    #[test]
    fn garbage_hop_resets_trust() {
        let trusted = IpList::parse(&["10.0.0.0/8"]).unwrap();
        let h = headers(&[("x-forwarded-for", "garbage")]);
        assert_eq!(
            client_ip(Some(ip("10.0.0.2")), &h, &trusted),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn mapped_peer_is_canonical() {
        let h = HeaderMap::new();
        assert_eq!(
            client_ip(Some(ip("::ffff:127.0.0.1")), &h, &IpList::default()),
            Some(ip("127.0.0.1"))
        );
    }
}
