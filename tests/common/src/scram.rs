//! A SCRAM client (RFC 5802, RFC 7677) with channel binding, computed from the client's own
//! end of its TLS session: `tls-exporter` (RFC 9266) through rustls' keying-material export,
//! `tls-server-end-point` (RFC 5929) from the certificate the client received. The proxy
//! computes the same values from its end; only when both ends are one TLS session do they
//! agree, which is what the node checks.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::time::Duration;

use super::raw::{Raw, header};

/// The channel-binding data of a client's TLS session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientBindings {
    /// `tls-exporter`: 32 bytes exported with label `EXPORTER-Channel-Binding` (TLS 1.3).
    pub exporter: Option<Vec<u8>>,
    /// `tls-server-end-point`: SHA-256 of the server's certificate (the test PKI signs with
    /// ECDSA P-256 and SHA-256, for which RFC 5929 §4.1 names SHA-256).
    pub end_point: Option<Vec<u8>>,
}

impl ClientBindings {
    /// The bindings of a client connection whose handshake is done.
    pub fn of(conn: &rustls::ClientConnection) -> ClientBindings {
        let exporter =
            (conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)).then(|| {
                conn.export_keying_material([0u8; 32], b"EXPORTER-Channel-Binding", None)
                    .expect("keying material export")
                    .to_vec()
            });
        let end_point = conn.peer_certificates().and_then(|c| c.first()).map(|der| {
            ring::digest::digest(&ring::digest::SHA256, der.as_ref())
                .as_ref()
                .to_vec()
        });
        ClientBindings {
            exporter,
            end_point,
        }
    }

    /// The data of binding type `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        match name {
            "tls-exporter" => self.exporter.as_deref(),
            "tls-server-end-point" => self.end_point.as_deref(),
            _ => None,
        }
    }
}

/// SCRAM's hash function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
}

/// One SCRAM exchange as a client.
pub struct Scram {
    hash: Hash,
    password: String,
    /// The GS2 header (`n,,` or `p=<type>,,`).
    gs2: String,
    /// The binding data sent in the final message (`c=`), after the GS2 header.
    cb_data: Vec<u8>,
    /// client-first-message-bare.
    first_bare: String,
    /// The server signature the server must prove it knows.
    server_signature: Option<Vec<u8>>,
}

impl Scram {
    /// A SCRAM login as `user`; with `binding` `(type, data)` it is the `-PLUS` variant bound
    /// to that data.
    pub fn new(hash: Hash, user: &str, password: &str, binding: Option<(&str, &[u8])>) -> Scram {
        let nonce = format!("{:032x}", rand::random::<u128>());
        let (gs2, cb_data) = match binding {
            Some((name, data)) => (format!("p={name},,"), data.to_vec()),
            None => ("n,,".to_string(), Vec::new()),
        };
        Scram {
            hash,
            password: password.to_string(),
            gs2,
            cb_data,
            first_bare: format!("n={user},r={nonce}"),
            server_signature: None,
        }
    }

    /// The SASL mechanism name.
    pub fn mechanism(&self) -> String {
        let base = match self.hash {
            Hash::Sha1 => "SCRAM-SHA-1",
            Hash::Sha256 => "SCRAM-SHA-256",
        };
        if self.gs2.starts_with('p') {
            format!("{base}-PLUS")
        } else {
            base.to_string()
        }
    }

    /// client-first-message.
    pub fn first(&self) -> String {
        format!("{}{}", self.gs2, self.first_bare)
    }

    /// client-final-message for `server_first`.
    pub fn final_message(&mut self, server_first: &str) -> String {
        let attr = |k: &str| {
            server_first
                .split(',')
                .find_map(|a| a.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k}= in {server_first:?}"))
                .to_string()
        };
        let (nonce, salt, iterations) = (attr("r"), attr("s"), attr("i"));
        let salt = B64.decode(salt).expect("salt");
        let iterations: u32 = iterations.parse().expect("iterations");
        let (pbkdf2, hmac, digest, len) = match self.hash {
            Hash::Sha1 => (
                ring::pbkdf2::PBKDF2_HMAC_SHA1,
                ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                20,
            ),
            Hash::Sha256 => (
                ring::pbkdf2::PBKDF2_HMAC_SHA256,
                ring::hmac::HMAC_SHA256,
                &ring::digest::SHA256,
                32,
            ),
        };
        let mut salted = vec![0u8; len];
        ring::pbkdf2::derive(
            pbkdf2,
            std::num::NonZeroU32::new(iterations).expect("iterations > 0"),
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let sign = |key: &[u8], data: &[u8]| {
            ring::hmac::sign(&ring::hmac::Key::new(hmac, key), data)
                .as_ref()
                .to_vec()
        };
        let client_key = sign(&salted, b"Client Key");
        let stored_key = ring::digest::digest(digest, &client_key);
        let mut cbind = self.gs2.as_bytes().to_vec();
        cbind.extend_from_slice(&self.cb_data);
        let without_proof = format!("c={},r={nonce}", B64.encode(&cbind));
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let signature = sign(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = sign(&salted, b"Server Key");
        self.server_signature = Some(sign(&server_key, auth_message.as_bytes()));
        format!("{without_proof},p={}", B64.encode(proof))
    }

    /// Whether `server_final` (`v=...`) proves the server knew the password.
    pub fn verify(&self, server_final: &str) -> bool {
        let Some(v) = server_final.strip_prefix("v=") else {
            return false;
        };
        B64.decode(v).ok().as_deref() == self.server_signature.as_deref()
    }
}

/// What one legacy SASL login attempt came to.
#[derive(Debug)]
pub struct Outcome {
    /// The features the client was shown before it authenticated.
    pub features: String,
    /// Success (with the server's signature verified), or the node's `<failure/>`.
    pub result: Result<(), String>,
}

/// The text between the first `<tag ...>` and its end tag.
fn text_of(xml: &str, tag: &str) -> String {
    let start = xml.find(&format!("<{tag}")).expect("tag");
    let after = &xml[start..];
    if after[..after.find('>').unwrap()].ends_with('/') {
        return String::new();
    }
    let open_end = start + after.find('>').unwrap() + 1;
    let close = xml[open_end..].find("</").unwrap() + open_end;
    xml[open_end..close].to_string()
}

/// On a connection whose TLS is up: a stream header (with `from`, if given), then a legacy
/// SASL SCRAM exchange with `scram`. On success the stream is ready to restart.
pub async fn log_in(raw: &mut Raw, domain: &str, from: Option<&str>, mut scram: Scram) -> Outcome {
    let limit = Duration::from_secs(15);
    raw.clear();
    raw.send(&header(domain, from)).await;
    let features = raw.expect("</stream:features>").await;
    raw.clear();
    raw.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
        scram.mechanism(),
        B64.encode(scram.first())
    ))
    .await;
    let answer = raw.expect_any(&["</challenge>", "<failure"], limit).await;
    if answer.contains("<failure") {
        let answer = raw.expect("</failure>").await;
        return Outcome {
            features,
            result: Err(answer),
        };
    }
    let server_first = String::from_utf8(B64.decode(text_of(&answer, "challenge")).unwrap())
        .expect("server-first-message");
    raw.clear();
    let response = scram.final_message(&server_first);
    raw.send(&format!(
        "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
        B64.encode(response)
    ))
    .await;
    let answer = raw.expect_any(&["<success", "<failure"], limit).await;
    let result = if answer.contains("<success") {
        let answer = raw.expect("</success>").await;
        let server_final =
            String::from_utf8(B64.decode(text_of(&answer, "success")).unwrap()).unwrap();
        assert!(
            scram.verify(&server_final),
            "the server's signature does not verify: {server_final:?}"
        );
        Ok(())
    } else {
        Err(raw.expect("</failure>").await)
    };
    raw.clear();
    Outcome { features, result }
}
