//! Answers the edge gives on the raw connection, before pingora has a
//! session: the gateway's JSON refusal (rendered by the one responder,
//! [`respond::render`]), then a close that lets the client read it.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};

use crate::error::GatewayError;
use crate::proxy::respond;

/// How long a client gets to take the answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// After the answer, how long (and how much) the client's unread bytes are
/// drained, so that closing does not reset the connection before the client
/// has read the answer.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

/// The bytes of `err` as an HTTP/1.1 response that closes the connection.
pub fn render(err: &GatewayError, request_id: &str) -> Option<BytesMut> {
    let (mut resp, body) = respond::render(err, request_id).ok()?;
    resp.insert_header("connection", "close").ok()?;
    let mut out = BytesMut::with_capacity(256 + body.len());
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(resp.status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(
        resp.status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    out.put_slice(b"\r\n");
    resp.header_to_h1_wire(&mut out);
    out.put_slice(b"\r\n");
    out.put_slice(&body);
    Some(out)
}

/// Write the refusal, then close (see [`close`]).
pub async fn refuse(stream: &mut Stream, err: &GatewayError, request_id: &str) {
    if let Some(bytes) = render(err, request_id) {
        let written = timeout(WRITE_TIMEOUT, async {
            stream.write_all(&bytes).await?;
            stream.flush().await
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::debug!("client did not take the refusal");
            return;
        }
    }
    close(stream).await;
}

/// Half-close and drain what the client still sends, briefly: a socket
/// closed with unread bytes is reset, and a reset can destroy the answer
/// before the client reads it.
pub async fn close(stream: &mut Stream) {
    if timeout(WRITE_TIMEOUT, stream.shutdown()).await.is_err() {
        return;
    }
    let until = Instant::now() + LINGER;
    let mut drained = 0usize;
    let mut sink = [0u8; 4096];
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(until, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_complete_json_responses_that_close() {
        let bytes = render(&GatewayError::HeadTimeout, "rid-9").unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{text}"
        );
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("\r\nconnection: close"), "{head}");
        assert!(lower.contains("\r\nx-request-id: rid-9"), "{head}");
        assert!(
            lower.contains("\r\ncontent-type: application/json"),
            "{head}"
        );
        assert!(!lower.contains("pingora"), "{head}");
        assert!(lower.contains(&format!("\r\ncontent-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "request_timeout");
        assert_eq!(v["request_id"], "rid-9");
    }
}
