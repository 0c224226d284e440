//! Reading one request head under a deadline, before pingora sees it.
//!
//! Pingora 0.9 times each read of a head separately (60 s, and from the
//! second request on a keep-alive connection not at all), so a client that
//! trickles a byte now and then holds a connection for ever. Here the wait
//! for the first byte is bounded (`keepalive_timeout_ms` between requests,
//! `header_timeout_ms` on a new connection), and so is the whole head from
//! its first byte (`header_timeout_ms`). The complete head is then checked
//! for what pingora's own parser would refuse with a bare answer
//! ([`check_raw_head`]) and handed to pingora as already-read bytes.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::time::Instant;
use tokio::io::AsyncReadExt;

use crate::timer::within;

use crate::error::GatewayError;
use crate::proxy::headers::request_id_from;
use crate::routing::target::{
    check_raw_head, classify_malformed_head, request_line_target, RequestLimits,
};

/// Header fields parsed at most: pingora's own limit (`max_headers` ≤ 256).
const PARSED_HEADERS: usize = 256;

/// Bytes asked for per read.
const READ_CHUNK: usize = 4096;

/// How reading a head ended.
#[derive(Debug)]
pub enum HeadEnd {
    /// The buffer starts with a complete head that passed [`check_raw_head`].
    Complete,
    /// No byte of a request came: the client closed, stayed idle past the
    /// wait, or the server is shutting down. Closed without an answer.
    Nothing(&'static str),
    /// The head started and cannot go on: answer this, then close.
    Refuse(GatewayError, String),
    /// The head started and the client went away: nothing to answer.
    Gone(&'static str),
}

/// What a buffer holds so far.
#[derive(Debug)]
pub enum Examined {
    /// Not a complete head yet.
    Partial,
    /// A complete head of this many bytes, fit for pingora's parser.
    Complete(usize),
    /// A head to refuse, with the request id to answer with.
    Refused(GatewayError, String),
}

/// How long [`read_head`] waits.
pub struct Waits {
    /// For the first byte.
    pub idle: Duration,
    /// For the whole head, from its first byte.
    pub head: Duration,
    /// For the first byte once the server is stopping (then at most `idle`).
    pub stop_grace: Duration,
}

/// Read the next request head into `buf` (empty on entry). The first byte
/// must come within `idle` (within `stop_grace` once the server stops), the
/// rest within `head` of it.
pub async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    waits: Waits,
    limits: &RequestLimits,
    shutdown: &mut ShutdownWatch,
) -> HeadEnd {
    let started = Instant::now();
    let first = tokio::select! {
        biased;
        read = within(waits.idle, read_some(stream, buf)) => read,
        () = shutting_down(shutdown) => {
            // The read above was cancelled before it completed (read_buf is
            // cancel-safe: no byte is lost); wait out the grace instead.
            let left = waits.idle.saturating_sub(started.elapsed()).min(waits.stop_grace);
            if left.is_zero() {
                return HeadEnd::Nothing("server shutting down");
            }
            match within(left, read_some(stream, buf)).await {
                Err(_) => return HeadEnd::Nothing("server shutting down"),
                read => read,
            }
        }
    };
    match first {
        Err(_) => return HeadEnd::Nothing("idle timeout"),
        Ok(Ok(0)) => return HeadEnd::Nothing("client closed"),
        Ok(Err(_)) => return HeadEnd::Nothing("read error"),
        Ok(Ok(_)) => {}
    }
    let deadline = Instant::now() + waits.head;
    // Empty lines before a request line are allowed (RFC 9112 §2.2) and
    // dropped here, but they count against the size limit.
    let mut skipped = 0usize;
    let mut scanned = 0usize;
    loop {
        let blank = buf
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        if blank > 0 {
            buf.advance(blank);
            skipped += blank;
            scanned = 0;
        }
        if has_head_end(&buf[scanned.saturating_sub(2)..]) {
            match examine(buf, limits) {
                Examined::Partial => {}
                Examined::Complete(_) => return HeadEnd::Complete,
                Examined::Refused(err, id) => return HeadEnd::Refuse(err, id),
            }
        }
        scanned = buf.len();
        if buf.len().saturating_add(skipped) > limits.max_header_bytes {
            return HeadEnd::Refuse(
                GatewayError::HeadersTooLarge("headers too large"),
                request_id_from(std::iter::empty()),
            );
        }
        match within(
            deadline.saturating_duration_since(Instant::now()),
            read_some(stream, buf),
        )
        .await
        {
            Err(_) => {
                return HeadEnd::Refuse(
                    GatewayError::HeadTimeout,
                    request_id_from(std::iter::empty()),
                )
            }
            Ok(Ok(0)) => return HeadEnd::Gone("client closed during the head"),
            Ok(Err(_)) => return HeadEnd::Gone("read error during the head"),
            Ok(Ok(_)) => {}
        }
    }
}

async fn read_some(stream: &mut Stream, buf: &mut BytesMut) -> std::io::Result<usize> {
    buf.reserve(READ_CHUNK);
    stream.read_buf(buf).await
}

/// Resolves once the server starts shutting down (never, if it cannot tell).
async fn shutting_down(shutdown: &mut ShutdownWatch) {
    if shutdown.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Whether `bytes` hold the empty line that ends a head (`\n\n` or `\n\r\n`).
fn has_head_end(bytes: &[u8]) -> bool {
    memchr::memchr_iter(b'\n', bytes)
        .any(|i| matches!(&bytes[i + 1..], [b'\n', ..] | [b'\r', b'\n', ..]))
}

/// Parse what `buf` holds (as pingora's parser will) and check a complete head.
pub fn examine(buf: &[u8], limits: &RequestLimits) -> Examined {
    let mut headers = [httparse::EMPTY_HEADER; PARSED_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Examined::Partial,
        Ok(httparse::Status::Complete(len)) => {
            let block = &buf[..len];
            let fields = || req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
            let checked = check_raw_head(
                req.method.unwrap_or_default().as_bytes(),
                request_line_target(block).unwrap_or_default(),
                req.version == Some(0),
                fields(),
                block,
                limits,
            );
            match checked {
                Ok(()) => Examined::Complete(len),
                Err(err) => {
                    let id = request_id_from(
                        fields()
                            .filter(|(n, _)| n.eq_ignore_ascii_case(b"x-request-id"))
                            .map(|(_, v)| v),
                    );
                    Examined::Refused(err, id)
                }
            }
        }
        Err(httparse::Error::TooManyHeaders) => Examined::Refused(
            GatewayError::HeadersTooLarge("too many headers"),
            request_id_from(std::iter::empty()),
        ),
        Err(_) => Examined::Refused(classify_malformed_head(buf), raw_request_id(buf)),
    }
}

/// The request id for a head the parser could not read: from its
/// `X-Request-Id` line when there is a sane one, else a new one.
fn raw_request_id(buf: &[u8]) -> String {
    let values = buf
        .split(|b| *b == b'\n')
        .skip(1)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let (name, value) = (&line[..colon], &line[colon + 1..]);
            name.eq_ignore_ascii_case(b"x-request-id")
                .then(|| value.trim_ascii())
        });
    request_id_from(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(buf: &[u8]) -> Option<&'static str> {
        match examine(buf, &RequestLimits::default()) {
            Examined::Refused(e, _) => Some(e.code()),
            _ => None,
        }
    }

    #[test]
    fn head_end_is_found_with_crlf_and_bare_lf() {
        assert!(has_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\n"));
        assert!(has_head_end(b"GET / HTTP/1.1\nA: b\n\n"));
        assert!(!has_head_end(b"GET / HTTP/1.1\r\nA: b\r\n"));
        assert!(!has_head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r"));
    }

    #[test]
    fn complete_heads_pass_with_their_length() {
        let head = b"GET /a HTTP/1.1\r\nHost: x\r\nX-Request-Id: r1\r\n\r\n";
        let mut with_body = head.to_vec();
        with_body.extend_from_slice(b"more bytes");
        match examine(&with_body, &RequestLimits::default()) {
            Examined::Complete(n) => assert_eq!(n, head.len()),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            examine(b"GET /a HTTP/1.1\r\nHost:", &RequestLimits::default()),
            Examined::Partial
        ));
    }

    #[test]
    fn what_pingora_refuses_is_refused_with_a_gateway_code() {
        let cases: [(&[u8], &str); 11] = [
            (
                b"GET http://other/x HTTP/1.1\r\nHost: x\r\n\r\n",
                "invalid_request_target",
            ),
            (
                b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
                "invalid_request_target",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "duplicate_header",
            ),
            (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", "forbidden_header"),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                "invalid_framing",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                "invalid_framing",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                "invalid_framing",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "invalid_framing",
            ),
            (b"GET /a\xFFb HTTP/1.1\r\nHost: x\r\n\r\n", "invalid_path"),
            (
                b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
                "invalid_request_target",
            ),
            (b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", "invalid_framing"),
        ];
        for (head, expected) in cases {
            assert_eq!(
                code(head),
                Some(expected),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn a_refusal_keeps_a_sane_client_request_id() {
        match examine(
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-Request-Id: abc-1\r\n\r\n",
            &RequestLimits::default(),
        ) {
            Examined::Refused(_, id) => assert_eq!(id, "abc-1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_target_the_gateway_accepts_is_one_pingora_accepts() {
        // Pingora builds an `http::Uri` from the target and refuses it with a
        // bare 400 when that fails: every byte check_raw_head lets through in
        // a path or a query must be one `http` accepts there.
        for b in 0x21u8..=0x7E {
            for target in [format!("/a{}b", b as char), format!("/a?q={}", b as char)] {
                let head = format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n");
                if let Examined::Complete(_) = examine(head.as_bytes(), &RequestLimits::default()) {
                    assert!(
                        http::uri::PathAndQuery::try_from(target.as_str()).is_ok(),
                        "{target:?} passes the edge but not http's URI parser"
                    );
                }
            }
        }
    }
}
