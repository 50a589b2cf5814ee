//! TLS for the endpoint and the publisher (rustls with the ring provider).
//!
//! * `secure=True`: a self-signed ECDSA P-256 certificate (rcgen) made at connect for the
//!   advertised hosts; publishers accept such peers without verification, as go-micro does.
//! * `tls=TLSConfig(...)`: the endpoint serves the given certificate; publishers verify peers
//!   against the CA (`verify=True`); `client_auth=True` makes the endpoint require a client
//!   certificate signed by the CA (mutual TLS), and publishers present their own.
//!
//! Every failure is an `Error::Tls` whose text says which file or setting is unusable.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::error::{Error, Result};

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and its key.
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { certs: self.certs.clone(), key: self.key.clone_key() }
    }
}

/// A PEM parse failure in words (pki-types prints the offending bytes as a list of numbers).
fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("a PEM section has no end line (-----END {}-----)", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => format!("malformed PEM line {:?}", String::from_utf8_lossy(line)),
        pem::Error::Base64Decode(m) => format!("a PEM section is not valid base64 ({m})"),
        other => other.to_string(),
    }
}

/// A self-signed ECDSA P-256 certificate for `hosts` (IP addresses or DNS names).
pub fn self_signed(hosts: &[String]) -> Result<Identity> {
    let mut names: Vec<String> = hosts.iter().filter(|h| !h.is_empty()).cloned().collect();
    for extra in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_string());
        }
    }
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| Error::tls(format!("could not generate a certificate: {e}")))?;
    Ok(Identity { certs: vec![ck.cert.der().clone()], key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())) })
}

pub fn identity_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Identity> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| Error::tls(format!("cannot read the certificate PEM: {}", pem_reason(&e))))?;
    if certs.is_empty() {
        return Err(Error::tls("the certificate file holds no PEM certificate"));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| Error::tls(format!("cannot read the private key PEM: {}", pem_reason(&e))))?;
    Ok(Identity { certs, key })
}

pub fn roots_from_pem(ca_pem: &[u8]) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| Error::tls(format!("cannot read the CA PEM: {}", pem_reason(&e))))?;
        roots.add(c).map_err(|e| Error::tls(format!("unusable CA certificate: {e}")))?;
        n += 1;
    }
    if n == 0 {
        return Err(Error::tls("the CA file holds no PEM certificate"));
    }
    Ok(roots)
}

const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

pub fn server_config(id: &Identity, client_ca: Option<RootCertStore>) -> Result<Arc<ServerConfig>> {
    let p = provider();
    let builder = ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::tls(format!("no usable protocol version: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), p)
                .build()
                .map_err(|e| Error::tls(format!("cannot build the client verifier: {e}")))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut cfg = builder
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| Error::tls(format!("certificate and key do not fit together: {e}")))?;
    cfg.alpn_protocols = ALPN.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Client side. `roots: None` accepts any peer certificate (go-micro's InsecureSkipVerify; the
/// handshake signatures are still checked). `identity`: presented when a peer asks (mTLS).
pub fn client_config(roots: Option<RootCertStore>, identity: Option<&Identity>) -> Result<Arc<ClientConfig>> {
    let p = provider();
    let builder = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::tls(format!("no usable protocol version: {e}")))?;
    let builder = match roots {
        Some(r) => builder.with_root_certificates(r),
        None => builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(p))),
    };
    // ALPN is left empty: the hyper-rustls connector sets h2 and http/1.1 itself
    let cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
            .map_err(|e| Error::tls(format!("unusable client certificate: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_round_trip() {
        let id = self_signed(&["10.0.0.1".into()]).unwrap();
        assert_eq!(id.certs.len(), 1);
        server_config(&id, None).unwrap();
        client_config(None, Some(&id)).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(id.certs[0].clone()).unwrap();
        server_config(&id, Some(roots.clone())).unwrap();
        client_config(Some(roots), None).unwrap();
    }

    #[test]
    fn bad_pem_is_a_tls_error() {
        let tls_text = |r: Result<()>| match r {
            Err(Error::Tls(m)) => m,
            other => panic!("expected Error::Tls, got {other:?}"),
        };
        let m = tls_text(identity_from_pem(b"nope", b"nope").map(|_| ()));
        assert!(m.contains("certificate"), "{m}");
        let m = tls_text(roots_from_pem(b"").map(|_| ()));
        assert!(m.contains("CA"), "{m}");
        let m = tls_text(roots_from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n").map(|_| ()));
        assert_eq!(m, "cannot read the CA PEM: a PEM section has no end line (-----END CERTIFICATE-----)");
        let id = self_signed(&[]).unwrap();
        let other = self_signed(&[]).unwrap();
        let mismatched = Identity { certs: id.certs.clone(), key: other.key.clone_key() };
        let m = tls_text(server_config(&mismatched, None).map(|_| ()));
        assert!(m.contains("do not fit"), "{m}");
    }
}
