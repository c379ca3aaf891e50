//! Channel binding through the proxy (RFC 5929, RFC 9266, XEP-0440).
//!
//! A SCRAM `-PLUS` login proves that the client and the server see the same TLS session: the
//! client mixes data unique to its TLS session into its proof. With TLS ending at the proxy,
//! the node's own TLS session (if any) is not the client's, so the node cannot check that by
//! itself. The proxy, which holds the client's session, computes the binding data the client
//! will use and hands them to the node in the PROXY v2 header (trusted only on the
//! proxy-to-node link), so that the node checks the client's proof against the client's real
//! session. A second TLS terminator between the client and the proxy (a man in the middle)
//! has a session of its own with the client, whose binding data the proxy never sees: the
//! client's proof then fails at the node.
//!
//! Two binding types are computed:
//! - `tls-exporter` (RFC 9266): 32 bytes exported with the label `EXPORTER-Channel-Binding`;
//!   TLS 1.3 only (for TLS 1.2 it is defined only with the extended master secret, which
//!   rustls does not report).
//! - `tls-server-end-point` (RFC 5929 §4.1): a hash of the certificate the proxy presented.

use rustls::ProtocolVersion;
use rustls::server::ServerConnection;

/// Name of the `tls-exporter` binding type (RFC 9266).
pub const TLS_EXPORTER: &str = "tls-exporter";
/// Name of the `tls-server-end-point` binding type (RFC 5929).
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// The PROXY v2 TLV carrying `tls-exporter` data (the range 0xE0–0xEF is reserved for
/// applications by the PROXY protocol specification).
pub const PP2_TYPE_TLS_EXPORTER: u8 = 0xE0;
/// The PROXY v2 TLV carrying `tls-server-end-point` data.
pub const PP2_TYPE_TLS_SERVER_END_POINT: u8 = 0xE1;

/// The exporter label of RFC 9266.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-Channel-Binding";

/// The binding data of one client's TLS session, as the node must see them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bindings {
    /// `tls-exporter`: present on TLS 1.3 sessions.
    pub exporter: Option<[u8; 32]>,
    /// `tls-server-end-point`: present when the presented certificate's signature names one
    /// hash function RFC 5929 can use.
    pub end_point: Option<Box<[u8]>>,
}

impl Bindings {
    /// The bindings of a finished handshake, with `end_point` the hash of the certificate
    /// the proxy presented on it (see [`end_point_hash`]). `None` if there is none at all.
    pub fn of_session(session: &ServerConnection, end_point: Option<&[u8]>) -> Option<Bindings> {
        let exporter = if session.protocol_version() == Some(ProtocolVersion::TLSv1_3) {
            session
                .export_keying_material([0u8; 32], EXPORTER_LABEL, None)
                .ok()
        } else {
            None
        };
        let b = Bindings {
            exporter,
            end_point: end_point.map(Box::from),
        };
        (!b.is_empty()).then_some(b)
    }

    /// What a probe of the proxy's own presents: every type, with random data nobody can
    /// match. A node then offers a probe what it offers a TLS 1.3 client, which is what the
    /// feature cache must hold (each client is then shown only the types it has).
    pub fn for_probe() -> Bindings {
        use ring::rand::SecureRandom;
        let rng = ring::rand::SystemRandom::new();
        let mut exporter = [0u8; 32];
        let mut end_point = vec![0u8; 32];
        // The system's random source does not fail on the platforms the proxy runs on; were it
        // to, zeros are as unusable for a login as random bytes.
        let _ = rng.fill(&mut exporter);
        let _ = rng.fill(&mut end_point);
        Bindings {
            exporter: Some(exporter),
            end_point: Some(end_point.into()),
        }
    }

    /// No binding type at all.
    pub fn is_empty(&self) -> bool {
        self.exporter.is_none() && self.end_point.is_none()
    }

    /// The binding types present, by their registered names.
    pub fn types(&self) -> Vec<&'static str> {
        let mut t = Vec::with_capacity(2);
        if self.exporter.is_some() {
            t.push(TLS_EXPORTER);
        }
        if self.end_point.is_some() {
            t.push(TLS_SERVER_END_POINT);
        }
        t
    }

    /// The PROXY v2 TLVs (type, value) that carry these bindings.
    pub fn tlvs(&self) -> Vec<(u8, &[u8])> {
        let mut t = Vec::with_capacity(2);
        if let Some(e) = &self.exporter {
            t.push((PP2_TYPE_TLS_EXPORTER, &e[..]));
        }
        if let Some(h) = &self.end_point {
            t.push((PP2_TYPE_TLS_SERVER_END_POINT, &h[..]));
        }
        t
    }
}

/// The hash function RFC 5929 §4.1 picks for a certificate's `tls-server-end-point`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndPointHash {
    Sha256,
    Sha384,
    Sha512,
}

/// `tls-server-end-point` of a DER certificate (RFC 5929 §4.1): the hash of the whole
/// certificate with the hash function of its signature algorithm, SHA-256 in place of MD5
/// and SHA-1. `None` where the binding is undefined (no single hash function, as with
/// Ed25519) or the hash is one the proxy does not have (SHA-224).
pub fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    use x509_parser::prelude::*;
    let (_, cert) = parse_x509_certificate(der).ok()?;
    let alg = &cert.signature_algorithm;
    let oid = alg.algorithm.to_id_string();
    let hash = match oid.as_str() {
        // md5WithRSAEncryption, sha1WithRSAEncryption, sha256WithRSAEncryption,
        // ecdsa-with-SHA1, ecdsa-with-SHA256, dsa-with-sha1, dsa-with-sha256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2"
        | "1.2.840.10040.4.3"
        | "2.16.840.1.101.3.4.3.2" => EndPointHash::Sha256,
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => EndPointHash::Sha384,
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => EndPointHash::Sha512,
        // RSASSA-PSS names its hash in its parameters.
        "1.2.840.113549.1.1.10" => {
            let x509_parser::signature_algorithm::SignatureAlgorithm::RSASSA_PSS(params) =
                x509_parser::signature_algorithm::SignatureAlgorithm::try_from(alg).ok()?
            else {
                return None;
            };
            match params.hash_algorithm_oid().to_id_string().as_str() {
                "1.3.14.3.2.26" | "2.16.840.1.101.3.4.2.1" => EndPointHash::Sha256,
                "2.16.840.1.101.3.4.2.2" => EndPointHash::Sha384,
                "2.16.840.1.101.3.4.2.3" => EndPointHash::Sha512,
                _ => return None,
            }
        }
        _ => return None,
    };
    let alg = match hash {
        EndPointHash::Sha256 => &ring::digest::SHA256,
        EndPointHash::Sha384 => &ring::digest::SHA384,
        EndPointHash::Sha512 => &ring::digest::SHA512,
    };
    Some(ring::digest::digest(alg, der).as_ref().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec!["example.test".into()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn end_point_hash_follows_the_signature_hash() {
        let p256 = cert(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            end_point_hash(&p256).unwrap(),
            ring::digest::digest(&ring::digest::SHA256, &p256).as_ref()
        );
        let p384 = cert(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            end_point_hash(&p384).unwrap(),
            ring::digest::digest(&ring::digest::SHA384, &p384).as_ref()
        );
        // Ed25519 uses no single hash function: the binding is undefined.
        assert_eq!(end_point_hash(&cert(&rcgen::PKCS_ED25519)), None);
        assert_eq!(end_point_hash(b"not a certificate"), None);
    }

    #[test]
    fn types_and_tlvs_name_what_is_present() {
        let b = Bindings {
            exporter: Some([7; 32]),
            end_point: None,
        };
        assert_eq!(b.types(), vec![TLS_EXPORTER]);
        assert_eq!(b.tlvs(), vec![(PP2_TYPE_TLS_EXPORTER, &[7u8; 32][..])]);
        let probe = Bindings::for_probe();
        assert_eq!(probe.types(), vec![TLS_EXPORTER, TLS_SERVER_END_POINT]);
        assert_ne!(
            probe,
            Bindings::for_probe(),
            "probe data are fresh each time"
        );
        assert!(
            Bindings {
                exporter: None,
                end_point: None
            }
            .is_empty()
        );
    }
}
