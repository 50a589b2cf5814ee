//! Receipts: ordered pipelining of batches between hyperbroker nodes.
//!
//! With one request in flight per node (`node_inflight = 1`, the ordered mode) a publisher sent
//! the next batch only after the node's answer to the last one, and the answer comes after the
//! handlers ran: the node's handlers sat idle while the answer travelled back, the publisher
//! built the next batch and the node read and decoded it (measured at 128 B: the subscriber's
//! Python thread busy 217 µs and idle 303 µs per 1,024-message batch).
//!
//! A batch or frames POST that carries `X-Hyperbroker-Receipt: 1` asks the node for a receipt.
//! A node that gives one answers `200` with the same header at once when the batch is queued
//! for its handlers, the body starting with the one byte [`MARK`]; the per-message batch
//! response (`batch.rs`) follows, after the handlers ran. Every other answer (an error status,
//! a node that ignores the header: go-micro, older hyperbroker) is read as before.
//!
//! The publisher's node link lets a second batch go out only once the first was received
//! (`NodeLink::open_gate`), so the node queues batch k+1 behind batch k and its handlers see the
//! messages in order; nothing is acknowledged before its handler ran. A node without receipts
//! opens the gate only with its whole answer: one batch at a time, as before.
//!
//! This file owns the header, the mark, the endpoint's answer body ([`AnswerBody`]) and the
//! publisher's reading of an answer ([`read_answer`]).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};

/// The request header asking for a receipt, and the answer header saying one was given.
pub const HEADER: &str = "x-hyperbroker-receipt";
/// The first byte of a receipted answer's body: the batch is queued for the handlers.
pub const MARK: u8 = b'+';

/// What the endpoint sends after the mark: the batch response, once the handlers ran.
pub type Rest = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// The body of an endpoint answer: whole, or a receipt now and the rest when it is known.
pub enum AnswerBody {
    Whole(Full<Bytes>),
    Receipted {
        /// the mark, until sent
        mark: Option<Bytes>,
        /// the batch response, until sent
        rest: Option<Rest>,
    },
}

impl AnswerBody {
    pub fn whole(b: impl Into<Bytes>) -> Self {
        AnswerBody::Whole(Full::new(b.into()))
    }

    /// The mark at once, then what `rest` resolves to.
    pub fn receipted(rest: Rest) -> Self {
        AnswerBody::Receipted { mark: Some(Bytes::from_static(&[MARK])), rest: Some(rest) }
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            AnswerBody::Whole(full) => Pin::new(full).poll_frame(cx),
            AnswerBody::Receipted { mark, rest } => {
                if let Some(m) = mark.take() {
                    return Poll::Ready(Some(Ok(Frame::data(m))));
                }
                let Some(fut) = rest.as_mut() else {
                    return Poll::Ready(None);
                };
                match fut.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(b) => {
                        *rest = None;
                        Poll::Ready(Some(Ok(Frame::data(b))))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AnswerBody::Whole(full) => full.is_end_stream(),
            AnswerBody::Receipted { mark, rest } => mark.is_none() && rest.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AnswerBody::Whole(full) => full.size_hint(),
            AnswerBody::Receipted { .. } => SizeHint::default(),
        }
    }
}

/// Why an answer's body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    TimedOut,
    Failed(String),
}

/// Read an answer's body, at most `limit` bytes, within `timeout`. When `receipted` (the answer
/// carries [`HEADER`]), its first byte must be the [`MARK`]: `on_receipt` runs as soon as it
/// arrives, and the body returned is what follows it.
pub async fn read_answer<B>(
    body: B,
    limit: usize,
    timeout: Duration,
    receipted: bool,
    on_receipt: impl FnOnce(),
) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let read = async move {
        let mut body = body;
        let mut buf = BytesMut::new();
        let mut on_receipt = receipted.then_some(on_receipt);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ReadError::Failed(format!("could not read the response: {e}")))?;
            let Ok(mut data) = frame.into_data() else { continue }; // trailers: none expected
            if let Some(f) = on_receipt.take_if(|_| !data.is_empty()) {
                if data[0] != MARK {
                    return Err(ReadError::Failed("the node's receipted answer does not start with the receipt mark".into()));
                }
                data.advance(1);
                f();
            }
            if buf.len() + data.len() > limit {
                return Err(ReadError::Failed(format!("could not read the response: over the limit of {limit} bytes")));
            }
            buf.extend_from_slice(&data);
        }
        if on_receipt.is_some() {
            return Err(ReadError::Failed("the node's receipted answer is empty".into()));
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(ReadError::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A body made of these data frames, one per poll.
    struct Parts(std::collections::VecDeque<Bytes>);

    impl Body for Parts {
        type Data = Bytes;
        type Error = Infallible;
        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn frames(parts: Vec<&'static [u8]>) -> Parts {
        Parts(parts.into_iter().map(Bytes::from_static).collect())
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
    }

    #[test]
    fn the_mark_comes_first_then_the_rest() {
        let body = AnswerBody::receipted(Box::pin(async { Bytes::from_static(b"{\"received\":2}") }));
        let got = run(async { body.collect().await.unwrap().to_bytes() });
        assert_eq!(&got[..], b"+{\"received\":2}");
    }

    #[test]
    fn a_receipted_answer_calls_back_at_the_mark_and_returns_the_rest() {
        let seen = Arc::new(AtomicBool::new(false));
        let s = seen.clone();
        let r = run(read_answer(frames(vec![b"+", b"{\"rec", b"eived\":1}"]), 1024, Duration::from_secs(1), true, move || {
            s.store(true, Ordering::SeqCst)
        }));
        assert_eq!(r.unwrap(), Bytes::from_static(b"{\"received\":1}"));
        assert!(seen.load(Ordering::SeqCst));
    }

    #[test]
    fn the_mark_may_share_a_frame_with_the_rest() {
        let r = run(read_answer(frames(vec![b"+{}"]), 1024, Duration::from_secs(1), true, || {}));
        assert_eq!(r.unwrap(), Bytes::from_static(b"{}"));
    }

    #[test]
    fn an_answer_without_the_mark_or_empty_is_an_error() {
        let bad = run(read_answer(frames(vec![b"{}"]), 1024, Duration::from_secs(1), true, || panic!("no receipt")));
        assert!(matches!(bad, Err(ReadError::Failed(_))));
        let empty = run(read_answer(frames(vec![]), 1024, Duration::from_secs(1), true, || panic!("no receipt")));
        assert!(matches!(empty, Err(ReadError::Failed(_))));
    }

    #[test]
    fn a_plain_answer_is_read_whole_without_a_callback() {
        let r = run(read_answer(frames(vec![b"+a", b"b"]), 1024, Duration::from_secs(1), false, || panic!("no receipt")));
        assert_eq!(r.unwrap(), Bytes::from_static(b"+ab"));
    }

    #[test]
    fn the_limit_and_the_timeout_hold() {
        let big = run(read_answer(frames(vec![b"0123456789"]), 4, Duration::from_secs(1), false, || {}));
        assert!(matches!(big, Err(ReadError::Failed(_))));
        let never = AnswerBody::receipted(Box::pin(std::future::pending()));
        let slow = run(read_answer(never, 1024, Duration::from_millis(20), true, || {}));
        assert_eq!(slow, Err(ReadError::TimedOut));
    }
}
