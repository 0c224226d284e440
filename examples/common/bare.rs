//! What the bare proxies of the load harness share (`bare_pingora`,
//! `bare_core`): their arguments and a pingora server run as the gateway
//! runs it — one thread, and pingora's no-steal runtime when
//! `BARE_WORK_STEALING=0`.

use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;

/// `LISTEN UPSTREAM` from the command line, or the usage and exit 64.
pub fn listen_and_upstream(name: &str) -> (String, String) {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: {name} LISTEN UPSTREAM   (both IP:PORT)");
        std::process::exit(64);
    };
    (listen, upstream)
}

/// A bootstrapped one-thread server.
pub fn server() -> Server {
    let work_stealing = std::env::var("BARE_WORK_STEALING").map_or(true, |v| v != "0");
    let conf = ServerConf {
        threads: 1,
        work_stealing,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}
