//! The other floor of the load harness (issue 17): a proxy loop on
//! pingora-core alone — its listener, HTTP/1 sessions and upstream connection
//! pool — without pingora-proxy's per-request machinery (`Session` with its
//! cache and module contexts, the downstream modules, the task channels
//! between the two sides). It answers the question "would carrying our own
//! proxy loop in the edge's `ServerApp` be much cheaper than pingora-proxy?"
//! before anyone writes it: compare its CPU per request with
//! `bare_pingora`'s in the same run.
//!
//! Like `bare_pingora`: one thread, mimalloc, checks nothing, forwards every
//! request to one upstream over a kept-alive pooled connection, and answers
//! 502 when the upstream fails. HTTP/1.1 with `Content-Length` or chunked
//! bodies both ways; no upgrades, no retries.
//!
//! `BARE_WORK_STEALING=0` runs pingora's no-steal runtime flavour (as
//! `bare_pingora` reads it).
//!
//! `bare_core LISTEN UPSTREAM` (both `IP:PORT`), e.g.
//! `cargo run --release --example bare_core 127.0.0.1:18417 127.0.0.1:18400`.

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::connectors::http::v1::Connector;
use pingora_core::protocols::http::v1::server::HttpSession as DownstreamSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::ResponseHeader;

#[path = "common/bare.rs"]
mod bare;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct CoreProxy {
    connector: Connector,
    /// Built once and borrowed by every request: the pool keys on its hash.
    peer: HttpPeer,
}

impl CoreProxy {
    /// One request: forward it, copy the answer back. `Ok(false)` means the
    /// downstream connection must not be reused.
    async fn forward(&self, down: &mut DownstreamSession) -> pingora_error::Result<bool> {
        let (mut up, _reused) = self.connector.get_http_session(&self.peer).await?;
        up.write_request_header(Box::new(down.req_header().clone()))
            .await?;
        while let Some(chunk) = down.read_body_bytes().await? {
            up.write_body(&chunk).await?;
        }
        up.finish_body().await?;
        up.read_response().await?;
        let answer = up
            .resp_header()
            .cloned()
            .unwrap_or_else(|| ResponseHeader::build(502, None).expect("a 502 header"));
        down.write_response_header(Box::new(answer)).await?;
        while let Some(chunk) = up.read_body_bytes().await? {
            down.write_body(&chunk).await?;
        }
        down.finish_body().await?;
        self.connector
            .release_http_session(up, &self.peer, None)
            .await;
        Ok(true)
    }
}

#[async_trait]
impl ServerApp for CoreProxy {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        _shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let mut down = DownstreamSession::new(stream);
        match down.read_request().await {
            Ok(Some(_)) => {}
            _ => return None,
        }
        // HTTP/1.1 keeps the connection unless the client says `close`.
        down.respect_keepalive();
        match self.forward(&mut down).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(_) => {
                if down.response_written().is_none() {
                    if let Ok(mut bad) = ResponseHeader::build(502, Some(1)) {
                        let _ = bad.insert_header("content-length", "0");
                        let _ = down.write_response_header(Box::new(bad)).await;
                        let _ = down.finish_body().await;
                    }
                }
                return None;
            }
        }
        // pingora's listener calls process_new again with a reusable stream.
        match down.reuse().await {
            Ok(Some(reusable)) => Some(reusable.into_parts().0),
            _ => None,
        }
    }
}

fn main() {
    let (listen, upstream) = bare::listen_and_upstream("bare_core");
    let mut server = bare::server();
    let app = CoreProxy {
        connector: Connector::new(None),
        peer: HttpPeer::new(upstream.as_str(), false, String::new()),
    };
    let mut service = Service::new("bare core".to_string(), app);
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
