//! TLS for the endpoint and the publisher (rustls with the ring provider).
//!
//! * `secure=True`: a self-signed ECDSA P-256 certificate (rcgen) made at connect for the
//!   advertised hosts; publishers accept such peers without verification, as go-micro does.
//! * `tls=TLSConfig(...)`: the endpoint serves the given certificate; publishers verify peers
//!   against the CA (`verify=True`); `client_auth=True` makes the endpoint require a client
//!   certificate signed by the CA (mutual TLS), and publishers present their own.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

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

/// A self-signed ECDSA P-256 certificate for `hosts` (IP addresses or DNS names).
pub fn self_signed(hosts: &[String]) -> Result<Identity, String> {
    let mut names: Vec<String> = hosts.iter().filter(|h| !h.is_empty()).cloned().collect();
    for extra in ["localhost", "127.0.0.1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_string());
        }
    }
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| format!("could not generate a certificate: {e}"))?;
    Ok(Identity {
        certs: vec![ck.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der())),
    })
}

pub fn identity_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Identity, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read the certificate PEM: {e}"))?;
    if certs.is_empty() {
        return Err("the certificate file holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("cannot read the private key PEM: {e}"))?;
    Ok(Identity { certs, key })
}

pub fn roots_from_pem(ca_pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| format!("cannot read the CA PEM: {e}"))?;
        roots.add(c).map_err(|e| format!("unusable CA certificate: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("the CA file holds no PEM certificate".into());
    }
    Ok(roots)
}

const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

pub fn server_config(id: &Identity, client_ca: Option<RootCertStore>) -> Result<Arc<ServerConfig>, String> {
    let p = provider();
    let builder = ServerConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), p)
                .build()
                .map_err(|e| format!("cannot build the client verifier: {e}"))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let mut cfg = builder
        .with_single_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    cfg.alpn_protocols = ALPN.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Client side. `roots: None` accepts any peer certificate (go-micro's InsecureSkipVerify; the
/// handshake signatures are still checked). `identity`: presented when a peer asks (mTLS).
pub fn client_config(roots: Option<RootCertStore>, identity: Option<&Identity>) -> Result<Arc<ClientConfig>, String> {
    let p = provider();
    let builder = ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match roots {
        Some(r) => builder.with_root_certificates(r),
        None => builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAny(p))),
    };
    // ALPN is left empty: the hyper-rustls connector sets h2 and http/1.1 itself
    let cfg = match identity {
        Some(id) => builder
            .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
            .map_err(|e| format!("unusable client certificate: {e}"))?,
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
    fn bad_pem_is_an_error() {
        assert!(identity_from_pem(b"nope", b"nope").is_err());
        assert!(roots_from_pem(b"").is_err());
    }
}
