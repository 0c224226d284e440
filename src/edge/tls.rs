//! TLS on the proxy listeners, done by the edge instead of pingora's accept
//! loop: pingora gives a handshake 60 s and logs an ERROR line for every
//! client that fails or abandons one. Here the handshake comes after the
//! connection caps, is bounded by `header_timeout_ms`, and a failure costs a
//! debug line.

use std::sync::Arc;
use std::time::Duration;

use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::tls::{
    install_default_crypto_provider, load_certs_and_key_files, version, ServerConfig,
};

use crate::config::model::TlsSettings;

/// The rustls acceptor for `[server.tls]` (TLS 1.2 and 1.3, HTTP/1.1, no
/// client certificates: what pingora's own `add_tls` sets up).
pub fn acceptor(tls: &TlsSettings) -> Result<Acceptor, String> {
    install_default_crypto_provider();
    let cert = tls.cert_file.to_string_lossy();
    let key = tls.key_file.to_string_lossy();
    let (certs, key) = match load_certs_and_key_files(&cert, &key) {
        Ok(Some(pair)) => pair,
        Ok(None) => return Err("server.tls: no certificate or no private key found".into()),
        Err(e) => {
            return Err(format!(
                "server.tls: cannot read the certificate or key: {e}"
            ))
        }
    };
    let config = ServerConfig::builder_with_protocol_versions(&[&version::TLS12, &version::TLS13])
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("server.tls: cannot use the certificate or key: {e}"))?;
    Ok(Acceptor::from_server_config(Arc::new(config)))
}

/// Run the server side of the handshake on a freshly accepted TCP stream,
/// within `limit`. `None` when it failed or took too long.
pub async fn handshake(acceptor: &Acceptor, stream: Stream, limit: Duration) -> Option<Stream> {
    // The listeners are plain TCP: the stream is pingora's L4 stream.
    let Ok(l4) = stream.into_any().downcast::<L4Stream>() else {
        tracing::error!("TLS listener got a stream that is not TCP");
        return None;
    };
    match tokio::time::timeout(limit, acceptor.tls_handshake(*l4)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}
