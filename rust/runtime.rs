//! The one tokio runtime of the process, started lazily. A runtime does not survive `fork()`:
//! the PID it was started in is remembered and a forked child gets a clear `Error::Io`.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

use crate::error::{Error, Result};

static RUNTIME: OnceLock<(u32, Runtime)> = OnceLock::new();

/// hyperbroker's runtime was started in another process (a `fork()` child cannot use it).
const FORKED: &str = "hyperbroker's runtime was started in another process and does not survive fork(); \
                      start worker processes with the 'spawn' method";

fn worker_threads() -> usize {
    std::env::var("HYPERBROKER_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 4))
}

/// The process-wide runtime.
pub fn get() -> Result<&'static Runtime> {
    let pid = std::process::id();
    if let Some((p, rt)) = RUNTIME.get() {
        return if *p == pid { Ok(rt) } else { Err(Error::io(FORKED)) };
    }
    let rt = Builder::new_multi_thread()
        .worker_threads(worker_threads())
        .thread_name("hyperbroker-io")
        .enable_all()
        .build()
        .map_err(|e| Error::io(format!("could not start the tokio runtime: {e}")))?;
    let _ = RUNTIME.set((pid, rt));
    match RUNTIME.get() {
        Some((p, rt)) if *p == pid => Ok(rt),
        Some(_) => Err(Error::io(FORKED)),
        None => Err(Error::io("could not start the tokio runtime: it vanished")),
    }
}
