//! Timeouts on the request path.
//!
//! A tokio timer registered on a pingora runtime wakes that runtime's I/O
//! driver (an `eventfd` write and one more `epoll_wait`) whenever its
//! deadline is earlier than the driver's next planned wake-up: the load
//! harness counted 0.84 such writes per request when the edge timed its head
//! reads with `tokio::time::timeout` (`perf` on `sys_enter_write`, issue 17).
//! pingora's own timer — what pingora times its reads and writes with — puts
//! the deadline in a shared 10 ms bucket watched by one clock thread, so
//! arming a timer that does not fire costs no system call. A timeout may fire
//! up to one bucket (10 ms) late; none of ours needs finer.

use std::future::Future;
use std::time::Duration;

pub use pingora_timeout::Elapsed;

/// `future`, or `Err(Elapsed)` once `limit` has passed.
pub async fn within<F: Future>(limit: Duration, future: F) -> Result<F::Output, Elapsed> {
    pingora_timeout::fast_timeout::fast_timeout(limit, future).await
}
