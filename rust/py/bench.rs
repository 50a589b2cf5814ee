//! Bench-only native paths (issue 12's "ceiling"): the same traffic as the Python paths with no
//! Python call per message, so a bench can say what fraction of the transport's own limit a
//! Python publisher or handler reaches. Reached from Python only through the underscore-prefixed
//! `Engine._bench_publish` and `Engine._bench_noop_subscription` (`engine.rs`); the no-op sink
//! itself is `Bridge::set_noop` (`bridge.rs`). Nothing but `benches/` uses these.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::payload::Payload;
use crate::publisher::Publisher;

/// Publish `body` to `topic` `n` times from a Rust loop, each message made as `publish` makes it
/// (a `Payload`: a small body copied into its frame, a large one referenced), honouring back-pressure
/// as `Broker.publish_many` does (a congested node makes it wait for room), then wait until
/// every delivery is acknowledged. Blocks the calling thread (call it without the GIL). False
/// when `timeout` passed while waiting for room or for the flush.
pub(super) fn publish_n(rt: &tokio::runtime::Runtime, p: &Arc<Publisher>, topic: &str, n: u64, body: Bytes, timeout: Duration) -> bool {
    let topic: Arc<str> = Arc::from(topic);
    rt.block_on(async {
        for _ in 0..n {
            let payload = Payload::with_body(&topic, std::iter::empty(), body.clone());
            if p.publish(topic.clone(), payload) && !p.clone().wait_room(timeout).await {
                return false;
            }
        }
        p.clone().flush(p.last_seq(), timeout).await
    })
}
