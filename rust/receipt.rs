//! Receipts: ordered pipelining of batches between hyperbroker nodes.
//!
//! With one request in flight per node (`node_inflight = 1`, the ordered mode) a publisher sent
//! the next batch only after the node's answer to the last one, and the answer comes after the
//! handlers ran: the node's handlers sat idle while the answer travelled back, the publisher
//! built the next batch and the node read and decoded it (measured at 128 B: the subscriber's
//! Python thread busy 217 µs and idle 303 µs per 1,024-message batch).
//!
//! A batch or frames POST that carries `X-Hyperbroker-Receipt: 1` asks the node for a receipt.
//! A node that gives one sends the answer's head at once, `200` with the same header, when the
//! batch is queued for its handlers; the body, the per-message batch response (`batch.rs`),
//! follows after the handlers ran. Every other answer (an error status, a node that ignores
//! the header: go-micro, older hyperbroker) is read as before. The receipt is the head alone,
//! no body byte: over HTTP/2 hundreds of streams each sending a tiny DATA frame trip the h2
//! crate's flood guard (`too_many_data_frames`, measured with 300 topics on one node).
//!
//! The publisher's node link lets a second batch go out only once the first was received
//! (`NodeLink::open_gate`), so the node queues batch k+1 behind batch k and its handlers see the
//! messages in order; nothing is acknowledged before its handler ran. A node without receipts
//! opens the gate only with its whole answer: one batch at a time, as before. Order holds while
//! deliveries succeed: a batch that fails after its receipt (the node went away) is sent again
//! after the ones that went out behind it, which the node may already have handled.
//!
//! This file owns the header, the pipeline's depth and the endpoint's answer body.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};

/// Batches on their way to (or being handled by) one node in the ordered mode: one being handled,
/// one received and queued behind it, one on the wire. Measured at 128 B (publish_many to a
/// Python handler, 2 cores): 1.58M msg/s with one, 1.85–1.94M with two, 2.0–2.1M with three.
/// A receipted batch waits behind at most `PIPELINE - 1` others before its handlers run, so the
/// publisher gives its answer `PIPELINE` request timeouts.
pub const PIPELINE: usize = 3;

/// The request header asking for a receipt, and the answer header saying one was given.
pub const HEADER: &str = "x-hyperbroker-receipt";

/// What a receipted answer's body becomes: the batch response, once the handlers ran.
pub type Rest = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// The body of an endpoint answer: whole, or (after a receipt, the head) the rest when known.
pub enum AnswerBody {
    Whole(Full<Bytes>),
    /// None once sent
    Later(Option<Rest>),
}

impl AnswerBody {
    pub fn whole(b: impl Into<Bytes>) -> Self {
        AnswerBody::Whole(Full::new(b.into()))
    }

    /// The body of a receipt: what `rest` resolves to, as one final frame.
    pub fn later(rest: Rest) -> Self {
        AnswerBody::Later(Some(rest))
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            AnswerBody::Whole(full) => Pin::new(full).poll_frame(cx),
            AnswerBody::Later(rest) => {
                let Some(fut) = rest.as_mut() else {
                    return Poll::Ready(None);
                };
                match fut.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(b) => {
                        *rest = None; // the end of the stream rides on this frame
                        Poll::Ready(Some(Ok(Frame::data(b))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AnswerBody::Whole(full) => full.is_end_stream(),
            AnswerBody::Later(rest) => rest.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AnswerBody::Whole(full) => full.size_hint(),
            AnswerBody::Later(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
    }

    #[test]
    fn a_later_body_is_the_rest_in_one_final_frame() {
        let mut body = AnswerBody::later(Box::pin(async { Bytes::from_static(b"{\"received\":2}") }));
        assert!(!body.is_end_stream());
        let frame = run(async { body.frame().await }).unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"{\"received\":2}"));
        assert!(body.is_end_stream(), "the frame carries the end of the stream");
        assert!(run(async { body.frame().await }).is_none());
    }

    #[test]
    fn a_later_body_waits_for_its_rest() {
        let (tx, rx) = tokio::sync::oneshot::channel::<Bytes>();
        let body = AnswerBody::later(Box::pin(async move { rx.await.unwrap_or_default() }));
        let got = run(async move {
            let read = tokio::spawn(async move { body.collect().await.unwrap().to_bytes() });
            tokio::task::yield_now().await;
            assert!(!read.is_finished(), "nothing before the handlers ran");
            tx.send(Bytes::from_static(b"done")).unwrap();
            read.await.unwrap()
        });
        assert_eq!(got, Bytes::from_static(b"done"));
    }

    #[test]
    fn a_whole_body_is_as_given() {
        let got = run(async { AnswerBody::whole("plain").collect().await.unwrap().to_bytes() });
        assert_eq!(got, Bytes::from_static(b"plain"));
    }
}
