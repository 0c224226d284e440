//! The floor of the load harness: a pingora 0.9 proxy that checks nothing and
//! forwards everything to one upstream, run the way the gateway runs pingora
//! (one thread, mimalloc). Comparing the gateway's
//! `auth = "none"` route with it separates the cost of Portcullis from the
//! cost of the framework it is built on.
//!
//! Two knobs, for measuring pingora's own candidates one at a time (issue 17,
//! `benches/load/README.md`): `BARE_MODULES=none` leaves out the downstream
//! modules pingora adds by default (a disabled response-compression module,
//! whose context is built for every request); `BARE_WORK_STEALING=0` runs
//! pingora's no-steal runtime flavour; `BARE_PEER=clone` builds the
//! upstream's `HttpPeer` once and clones it per request instead of building it.
//!
//! `bare_pingora LISTEN UPSTREAM` (both `IP:PORT`), e.g.
//! `cargo run --release --example bare_pingora 127.0.0.1:18409 127.0.0.1:18400`.

use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[path = "common/bare.rs"]
mod bare;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
    no_modules: bool,
    peer: Option<HttpPeer>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, modules: &mut pingora_core::modules::http::HttpModules) {
        if !self.no_modules {
            modules.add_module(
                pingora_core::modules::http::compression::ResponseCompressionBuilder::enable(0),
            );
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        if let Some(peer) = &self.peer {
            return Ok(Box::new(peer.clone()));
        }
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let (listen, upstream) = bare::listen_and_upstream("bare_pingora");
    let no_modules = std::env::var("BARE_MODULES").is_ok_and(|v| v == "none");
    let mut server = bare::server();
    let peer = std::env::var("BARE_PEER")
        .is_ok_and(|v| v == "clone")
        .then(|| HttpPeer::new(upstream.as_str(), false, String::new()));
    let bare = Bare {
        upstream,
        no_modules,
        peer,
    };
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, bare);
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
