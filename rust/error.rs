//! The crate's one error type. Every fallible pure-Rust function returns `Result<T, Error>`;
//! `py/errors.rs` maps each variant to its Python exception class in one place.
//!
//! The variant says what kind of thing went wrong (and so which Python class the user catches);
//! the text says what to do about it.

use std::fmt;

use crate::codec::CodecError;

#[derive(Debug)]
pub enum Error {
    /// An envelope could not be encoded or decoded (Python: `CodecError`).
    Codec(CodecError),
    /// An option or argument is out of range or malformed (Python: `ValueError`).
    Config(String),
    /// Certificates, keys or TLS settings are unusable (Python: `BrokerError`).
    Tls(String),
    /// A socket could not be bound, a runtime could not start, a wake-up fd failed (Python:
    /// `BrokerError`).
    Io(String),
    /// A subscriber node's registry record cannot be used (Python: `BrokerError`).
    Node(String),
    /// A peer answered outside the protocol, e.g. an unreadable batch response (recorded as a
    /// delivery failure; Python: `BrokerError`).
    Peer(String),
}

impl Error {
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }

    pub fn tls(msg: impl Into<String>) -> Self {
        Error::Tls(msg.into())
    }

    pub fn io(msg: impl Into<String>) -> Self {
        Error::Io(msg.into())
    }

    pub fn node(msg: impl Into<String>) -> Self {
        Error::Node(msg.into())
    }

    pub fn peer(msg: impl Into<String>) -> Self {
        Error::Peer(msg.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Codec(e) => e.fmt(f),
            Error::Config(m) | Error::Node(m) | Error::Io(m) | Error::Peer(m) => f.write_str(m),
            Error::Tls(m) => write!(f, "TLS configuration: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Codec(e) => Some(e),
            _ => None,
        }
    }
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Self {
        Error::Codec(e)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_problem() {
        assert_eq!(Error::tls("no key").to_string(), "TLS configuration: no key");
        assert_eq!(Error::config("backlog must be >= 1").to_string(), "backlog must be >= 1");
        let e: Error = CodecError::NoTopic.into();
        assert!(e.to_string().contains("no topic"));
        assert!(std::error::Error::source(&e).is_some());
    }
}
