//! The endpoint's listener: binding (a long listen queue), the accept loop, the connection caps
//! (per peer address and in total: over a cap a new connection is closed right after accept and
//! counted in `connections_refused`), the first-bytes deadline (a connection that sends nothing
//! within `header_read_timeout` is closed), TLS handshakes, serving each connection with
//! `server::handle` (HTTP/1.1 keep-alive and HTTP/2 prior knowledge on one port), handing the
//! memory of closed connections back to the OS, and stopping (`ServerHandle::stop_blocking`
//! waits until every connection is gone).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::server::{handle, ServerState};
use crate::stats::Stats;

/// The protocol sniffing of hyper-util's auto builder has no timeout of its own and hyper's
/// header timeout starts only after it: a client must send its first 24 bytes (the length of
/// the HTTP/2 preface) within `deadline`, or the connection is closed.
pub struct FirstBytesDeadline<S> {
    inner: S,
    seen: usize,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

const SNIFF_BYTES: usize = 24;

impl<S> FirstBytesDeadline<S> {
    pub fn new(inner: S, deadline: std::time::Duration) -> Self {
        FirstBytesDeadline { inner, seen: 0, sleep: Some(Box::pin(tokio::time::sleep(deadline))) }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstBytesDeadline<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = buf.filled().len() - before;
        let me = &mut *self;
        if me.sleep.is_some() {
            me.seen += got;
            if me.seen >= SNIFF_BYTES || (got == 0 && r.is_ready()) {
                me.sleep = None;
            } else if r.is_pending() {
                if let Some(sl) = me.sleep.as_mut() {
                    if sl.as_mut().poll(cx).is_ready() {
                        return std::task::Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "client sent too little too slowly",
                        )));
                    }
                }
            }
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstBytesDeadline<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serve one connection (plain or TLS) until it closes or the endpoint stops.
async fn serve_io<I>(io: I, state: Arc<ServerState>, mut sd: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let timeout = state.config.header_read_timeout;
    let svc_state = state.clone();
    let svc = hyper::service::service_fn(move |req| handle(svc_state.clone(), req));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(timeout).keep_alive(true).half_close(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256).keep_alive_interval(Some(timeout)).keep_alive_timeout(timeout);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = sd.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn).await;
        }
    }
}

/// Counts a connection against the per-peer and the total cap; released on drop.
struct PeerGuard {
    state: Arc<ServerState>,
    ip: std::net::IpAddr,
}

impl PeerGuard {
    /// None when the peer or the endpoint as a whole is at its cap.
    fn acquire(state: &Arc<ServerState>, ip: std::net::IpAddr) -> Option<PeerGuard> {
        let mut peers = state.peers.lock();
        if state.open_conns.load(std::sync::atomic::Ordering::Acquire) >= state.config.max_connections {
            return None;
        }
        let n = peers.entry(ip).or_insert(0);
        if *n >= state.config.max_connections_per_peer {
            return None;
        }
        *n += 1;
        state.open_conns.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        reclaim::opened();
        Some(PeerGuard { state: state.clone(), ip })
    }
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        {
            let mut peers = self.state.peers.lock();
            if let Some(n) = peers.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    peers.remove(&self.ip);
                    // a flood from many addresses must not leave a big table behind
                    let len = peers.len();
                    if peers.capacity() > 64 && len * 4 < peers.capacity() {
                        peers.shrink_to(len * 2);
                    }
                }
            }
        }
        self.state.open_conns.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.state.conn_closed.notify_waiters();
        reclaim::closed();
    }
}

/// Handing the memory of closed connections back to the OS.
///
/// Measured: 8,000 idle connections took ~50 MB; after they closed, all of it was free inside
/// glibc's malloc (`malloc_trim(0)` brought RSS back to within 1 MB of before) but not returned,
/// because it sits in the per-thread arenas of the tokio workers, below live chunks, where
/// glibc's automatic trimming (top of heap only) never reaches. So once many connections of
/// this process's endpoints have closed since the last peak, `malloc_trim(0)` runs once, a
/// moment later (so a whole wave is done), on a blocking thread. Steady traffic never triggers
/// it: only a drop of `TRIM_AFTER_CLOSED` open connections from their peak does. Elsewhere
/// than glibc this is a no-op.
mod reclaim {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// a drop of this many open connections from the peak triggers a trim
    const TRIM_AFTER_CLOSED: usize = 256;
    /// the trim waits this long after the trigger, so one trim covers a whole wave of closes
    const TRIM_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

    /// open endpoint connections of the whole process (malloc is process-wide), and their peak
    /// since the last trim
    static OPEN: AtomicUsize = AtomicUsize::new(0);
    static PEAK: AtomicUsize = AtomicUsize::new(0);
    static SCHEDULED: AtomicBool = AtomicBool::new(false);

    pub(super) fn opened() {
        let now = OPEN.fetch_add(1, Ordering::AcqRel) + 1;
        PEAK.fetch_max(now, Ordering::AcqRel);
    }

    pub(super) fn closed() {
        let now = OPEN.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        if PEAK.load(Ordering::Acquire).saturating_sub(now) < TRIM_AFTER_CLOSED || SCHEDULED.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            SCHEDULED.store(false, Ordering::Release);
            return;
        };
        rt.spawn(async {
            tokio::time::sleep(TRIM_DELAY).await;
            let _ = tokio::task::spawn_blocking(crate::malloc::trim).await;
            PEAK.store(OPEN.load(Ordering::Acquire), Ordering::Release);
            SCHEDULED.store(false, Ordering::Release);
        });
    }
}

/// A running endpoint; dropping the handle does not stop it, `stop` does.
pub struct ServerHandle {
    pub local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stop accepting and wait (bounded) until the listening socket and every accepted
    /// connection are closed, so that once this returns nothing of this endpoint answers any
    /// more (a keep-alive connection must not answer for a successor on the same port).
    /// Call from outside the runtime.
    pub fn stop_blocking(self, rt: &tokio::runtime::Runtime, state: &Arc<ServerState>) {
        let _ = self.shutdown.send(true);
        let accept = self.accept;
        let state = state.clone();
        rt.block_on(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), accept).await;
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), async {
                loop {
                    let closed = state.conn_closed.notified();
                    tokio::pin!(closed);
                    closed.as_mut().enable();
                    if state.open_conns.load(std::sync::atomic::Ordering::Acquire) == 0 {
                        break;
                    }
                    closed.await;
                }
            })
            .await;
        });
    }
}

/// Length of the queue of connections the kernel completed but the endpoint did not accept yet
/// (the kernel caps it at `net.core.somaxconn`). The standard library's 128 overflowed under a
/// burst of connections: the kernel then drops SYNs and the client (a publisher too) waits a
/// whole second for the retransmission.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?; // as std's TcpListener::bind does on Unix
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Bind and serve. HTTP/1.1 keep-alive and HTTP/2 (prior knowledge) on the same port.
pub async fn serve(state: Arc<ServerState>, addr: SocketAddr) -> Result<ServerHandle> {
    let cannot = |e: std::io::Error| Error::io(format!("cannot listen on {addr}: {e}"));
    let listener = bind(addr).map_err(cannot)?;
    let local_addr = listener.local_addr().map_err(cannot)?;
    let (tx, rx) = watch::channel(false);
    let accept = tokio::spawn(accept_loop(listener, state, rx));
    Ok(ServerHandle { local_addr, shutdown: tx, accept })
}

async fn accept_loop(listener: TcpListener, state: Arc<ServerState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, peer)) = r else {
                    // e.g. EMFILE: back off briefly instead of spinning
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                };
                let Some(guard) = PeerGuard::acquire(&state, peer.ip()) else {
                    drop(stream); // over a connection cap: closed at once, not held
                    Stats::add(&state.stats.connections_refused, 1);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let sd = shutdown.clone();
                let tls = state.tls.read().clone();
                tokio::spawn(async move {
                    let _guard = guard;
                        let deadline = state.config.header_read_timeout;
                    match tls {
                        None => serve_io(TokioIo::new(FirstBytesDeadline::new(stream, deadline)), state, sd).await,
                        Some(cfg) => {
                            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
                            let hs = tokio::time::timeout(state.config.header_read_timeout, acceptor.accept(stream)).await;
                            match hs {
                                Ok(Ok(tls_stream)) => {
                                    serve_io(TokioIo::new(FirstBytesDeadline::new(tls_stream, deadline)), state, sd).await
                                }
                                Ok(Err(_)) => Stats::add(&state.stats.tls_handshake_failures, 1),
                                Err(_) => Stats::add(&state.stats.tls_handshake_failures, 1),
                            }
                        }
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}
