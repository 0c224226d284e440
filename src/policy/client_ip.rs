//! Which address is "the client" for policy.
//!
//! The socket peer, unless the peer is a trusted proxy: then one forwarding
//! header — `X-Forwarded-For` or RFC 7239 `Forwarded`, whichever
//! `server.client_ip_header` names — is walked from the right, trusted hops
//! are skipped, and the first untrusted address is the client. The header
//! is read as bytes, one element at a time: an element that does not parse
//! (garbage, non-ASCII bytes, `for=unknown`) is a hop nobody can vouch for,
//! so nothing left of it is believed. When the walk finds no untrusted
//! address the client IP is *unknown*, and every IP rule fails closed — it
//! is never the trusted proxy's own address. From an untrusted peer the
//! headers are ignored entirely (they are attacker-controlled).

use std::net::IpAddr;

use http::HeaderMap;

use super::ip::{canonical, IpList};
use crate::routing::target::trim_ows;

/// The one header a trusted proxy's client address is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIpHeader {
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded`, its `for=` parameters.
    Forwarded,
}

impl ClientIpHeader {
    /// The header's name (lowercase).
    pub fn name(self) -> &'static str {
        match self {
            ClientIpHeader::XForwardedFor => "x-forwarded-for",
            ClientIpHeader::Forwarded => "forwarded",
        }
    }

    /// The value from `server.client_ip_header`.
    pub fn parse(text: &str) -> Option<ClientIpHeader> {
        match text {
            "x-forwarded-for" => Some(ClientIpHeader::XForwardedFor),
            "forwarded" => Some(ClientIpHeader::Forwarded),
            _ => None,
        }
    }
}

/// Resolve the client address. `peer` is the socket peer (None for a unix
/// socket, which policy treats as unknown and fails closed on IP rules).
pub fn client_ip(
    peer: Option<IpAddr>,
    headers: &HeaderMap,
    trusted: &IpList,
    header: ClientIpHeader,
) -> Option<IpAddr> {
    let peer = canonical(peer?);
    if !trusted.contains(peer) {
        return Some(peer);
    }
    walk(headers, trusted, header, |_| {})
}

/// What a trusted proxy vouches for, to send upstream: the client address
/// (None when unknown) and the trusted hops between it and the peer, in
/// left-to-right order. Anything left of the client is unverifiable and
/// is not passed on.
pub fn believed_chain(
    headers: &HeaderMap,
    trusted: &IpList,
    header: ClientIpHeader,
) -> (Option<IpAddr>, Vec<IpAddr>) {
    let mut hops = Vec::new();
    let client = walk(headers, trusted, header, |hop| hops.push(hop));
    hops.reverse();
    (client, hops)
}

/// Walk the chosen header's elements right to left (later header lines
/// first). Trusted hops are passed to `on_trusted` and skipped; the first
/// untrusted address is the client; an unparseable element, or the start of
/// the chain, ends the walk with no client.
fn walk(
    headers: &HeaderMap,
    trusted: &IpList,
    header: ClientIpHeader,
    mut on_trusted: impl FnMut(IpAddr),
) -> Option<IpAddr> {
    for value in headers.get_all(header.name()).iter().rev() {
        for element in value.as_bytes().rsplit(|b| *b == b',') {
            let hop = match header {
                ClientIpHeader::XForwardedFor => parse_hop(element),
                ClientIpHeader::Forwarded => forwarded_for(element).and_then(parse_hop),
            };
            let ip = canonical(hop?);
            if !trusted.contains(ip) {
                return Some(ip);
            }
            on_trusted(ip);
        }
    }
    None
}

/// The value of the `for` parameter of one `Forwarded` element
/// (`for=192.0.2.1;proto=https`); None when it has none.
fn forwarded_for(element: &[u8]) -> Option<&[u8]> {
    element.split(|b| *b == b';').find_map(|pair| {
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (key, value) = (trim_ows(&pair[..eq]), &pair[eq + 1..]);
        key.eq_ignore_ascii_case(b"for").then_some(value)
    })
}

/// One hop: `1.2.3.4`, `1.2.3.4:5678`, `"[2001:db8::1]:80"`, `2001:db8::1`.
/// Anything else (obfuscated identifiers, `unknown`, non-ASCII bytes) is None.
fn parse_hop(raw: &[u8]) -> Option<IpAddr> {
    let mut t = trim_ows(raw);
    if let [b'"', inner @ .., b'"'] = t {
        t = inner;
    }
    let t = std::str::from_utf8(t).ok()?;
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = t.strip_prefix('[') {
        let (inner, port) = rest.split_once(']')?;
        if !port.is_empty() {
            port.strip_prefix(':')?.parse::<u16>().ok()?;
        }
        return inner.parse().ok();
    }
    let (host, port) = t.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ClientIpHeader::{Forwarded, XForwardedFor};

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn proxies() -> IpList {
        IpList::parse(&["10.0.0.0/8"]).unwrap()
    }

    const PROXY: &str = "10.0.0.2";

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let h = headers(&[("x-forwarded-for", b"1.2.3.4")]);
        for trusted in [proxies(), IpList::default()] {
            assert_eq!(
                client_ip(Some(ip("192.0.2.1")), &h, &trusted, XForwardedFor),
                Some(ip("192.0.2.1"))
            );
        }
    }

    #[test]
    fn trusted_peer_gives_rightmost_untrusted_hop() {
        let h = headers(&[("x-forwarded-for", b"6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            client_ip(Some(ip(PROXY)), &h, &proxies(), XForwardedFor),
            Some(ip("198.51.100.7"))
        );
        // Several header lines concatenate in order.
        let h = headers(&[
            ("x-forwarded-for", b"6.6.6.6"),
            ("x-forwarded-for", b"198.51.100.9"),
        ]);
        assert_eq!(
            client_ip(Some(ip(PROXY)), &h, &proxies(), XForwardedFor),
            Some(ip("198.51.100.9"))
        );
    }

    #[test]
    fn forwarded_header_is_understood() {
        let h = headers(&[(
            "forwarded",
            b"for=6.6.6.6, for=\"[2001:db8::7]:443\";proto=https",
        )]);
        assert_eq!(
            client_ip(Some(ip(PROXY)), &h, &proxies(), Forwarded),
            Some(ip("2001:db8::7"))
        );
        let h = headers(&[("forwarded", b"proto=http;For=\"192.0.2.60:47011\"")]);
        assert_eq!(
            client_ip(Some(ip(PROXY)), &h, &proxies(), Forwarded),
            Some(ip("192.0.2.60"))
        );
    }

    #[test]
    fn only_the_configured_header_counts() {
        // A client-sent X-Forwarded-For cannot override the proxy's Forwarded.
        let h = headers(&[
            ("x-forwarded-for", b"198.51.100.1"),
            ("forwarded", b"for=203.0.113.5"),
        ]);
        assert_eq!(
            client_ip(Some(ip(PROXY)), &h, &proxies(), Forwarded),
            Some(ip("203.0.113.5"))
        );
        assert_eq!(
            client_ip(Some(ip(PROXY)), &h, &proxies(), XForwardedFor),
            Some(ip("198.51.100.1"))
        );
    }

    #[test]
    fn non_ascii_element_is_an_untrusted_hop_not_a_fallback_to_the_proxy() {
        // The review's reproduction: one \xff byte in front.
        let h = headers(&[("x-forwarded-for", b"\xff, 203.0.113.5")]);
        assert_eq!(
            client_ip(Some(ip(PROXY)), &h, &proxies(), XForwardedFor),
            Some(ip("203.0.113.5"))
        );
        let h = headers(&[("forwarded", b"for=\xff, for=203.0.113.5")]);
        assert_eq!(
            client_ip(Some(ip(PROXY)), &h, &proxies(), Forwarded),
            Some(ip("203.0.113.5"))
        );
        // Garbage right of every untrusted address: nothing can be believed.
        for value in [
            &b"203.0.113.5, \xff"[..],
            b"203.0.113.5, garbage",
            b"",
            b" , ",
        ] {
            let h = headers(&[("x-forwarded-for", value)]);
            assert_eq!(
                client_ip(Some(ip(PROXY)), &h, &proxies(), XForwardedFor),
                None,
                "{value:?}"
            );
        }
        for value in [
            &b"for=unknown"[..],
            b"for=_hidden",
            b"proto=https",
            b"for=\"\xff\"",
        ] {
            let h = headers(&[("forwarded", value)]);
            assert_eq!(
                client_ip(Some(ip(PROXY)), &h, &proxies(), Forwarded),
                None,
                "{value:?}"
            );
        }
    }

    #[test]
    fn no_untrusted_hop_means_unknown() {
        let trusted = proxies();
        assert_eq!(
            client_ip(Some(ip(PROXY)), &HeaderMap::new(), &trusted, XForwardedFor),
            None
        );
        let h = headers(&[("x-forwarded-for", b"10.9.9.9, 10.1.1.1")]);
        assert_eq!(
            client_ip(Some(ip(PROXY)), &h, &trusted, XForwardedFor),
            None
        );
    }

    #[test]
    fn believed_chain_keeps_the_client_and_the_trusted_hops_only() {
        let h = headers(&[("x-forwarded-for", b"6.6.6.6, \xff, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            believed_chain(&h, &proxies(), XForwardedFor),
            (Some(ip("198.51.100.7")), vec![ip("10.1.1.1")])
        );
        let h = headers(&[("x-forwarded-for", b"198.51.100.7, junk, 10.1.1.1")]);
        assert_eq!(
            believed_chain(&h, &proxies(), XForwardedFor),
            (None, vec![ip("10.1.1.1")])
        );
    }

    #[test]
    fn hops_parse_strictly() {
        assert_eq!(parse_hop(b" 1.2.3.4:80 "), Some(ip("1.2.3.4")));
        assert_eq!(parse_hop(b"[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(
            parse_hop(b"\"[2001:db8::1]:8080\""),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(parse_hop(b"[2001:db8::1]x"), None);
        assert_eq!(parse_hop(b"2001:db8::1:80"), Some(ip("2001:db8::1:80")));
        assert_eq!(parse_hop(b"1.2.3.4:99999"), None);
        assert_eq!(parse_hop(b"host.example:80"), None);
    }

    #[test]
    fn mapped_peer_is_canonical() {
        assert_eq!(
            client_ip(
                Some(ip("::ffff:127.0.0.1")),
                &HeaderMap::new(),
                &IpList::default(),
                XForwardedFor
            ),
            Some(ip("127.0.0.1"))
        );
    }
}
