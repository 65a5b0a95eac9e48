//! Sender certificates for sealed sender (PROTOCOL.md §19.2): a trust root, pinned by every
//! client, certifies a server signing key; the server key signs short-lived sender certificates
//! binding (account key, device id, device identity key) until an expiry. A sealed envelope
//! carries the sender's certificate encrypted to the recipient, which checks the chain, the
//! expiry against a caller-supplied time, revocation, and that the certified identity key is the
//! one its session authenticated.
//!
//! ```
//! use confidant::book::Address;
//! use confidant::certificate::{CertificateValidator, ServerCertificate, SenderCertificate};
//! use confidant::{IdentityKeyPair, Timestamp};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let root = IdentityKeyPair::generate(&mut rng); // offline, pinned by clients
//! let server = IdentityKeyPair::generate(&mut rng);
//! let server_cert = ServerCertificate::issue(&root, 1, &server.public());
//!
//! let (account, device) = (IdentityKeyPair::generate(&mut rng), IdentityKeyPair::generate(&mut rng));
//! let now = Timestamp(1_700_000_000_000);
//! let cert = SenderCertificate::issue(
//!     &server, &server_cert,
//!     Address { account: account.public(), device: 1 }, &device.public(), now.plus_ms(86_400_000),
//! );
//!
//! let validator = CertificateValidator::new(root.public());
//! let verified = validator.validate(&cert, now)?;
//! assert_eq!(verified.identity_key(), device.public());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;
use std::collections::BTreeSet;

use crate::book::Address;
use crate::codec::{self, SENDER_CERTIFICATE_V1, SERVER_CERTIFICATE_V1};
use crate::error::{CertificateError, DecodeError};
use crate::keys::{IdentityKey, IdentityKeyPair};
use crate::proto::{SenderCertificateProto, ServerCertificateProto};
use crate::time::Timestamp;

/// Signature context of a server certificate (PROTOCOL.md §19.2).
const SERVER_CERTIFICATE_CONTEXT: &[u8] = b"confidant/server-certificate/v1";
/// Signature context of a sender certificate (PROTOCOL.md §19.2).
const SENDER_CERTIFICATE_CONTEXT: &[u8] = b"confidant/sender-certificate/v1";
/// Length of every server certificate: `0x81`, key id (5), key (34), signature (64).
pub const SERVER_CERTIFICATE_LEN: usize = 104;
/// Length of every sender certificate (it embeds the server certificate). Certificates are
/// canonical and of one length, so a sealed envelope's size does not depend on its sender, and
/// a server cannot tag a sender through its certificate's length (PROTOCOL.md §19.2).
pub const SENDER_CERTIFICATE_LEN: usize = 253;
/// Largest encoded sender certificate accepted by the decoder: exactly
/// [`SENDER_CERTIFICATE_LEN`].
pub const MAX_SENDER_CERTIFICATE_BYTES: usize = SENDER_CERTIFICATE_LEN;
const MAX_SERVER_CERTIFICATE_BYTES: usize = SERVER_CERTIFICATE_LEN;
/// Length of an Ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// `context || bytes`, the message a certificate signature covers.
fn signed_message(context: &[u8], bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(context.len() + bytes.len());
    m.extend_from_slice(context);
    m.extend_from_slice(bytes);
    m
}

/// Splits `leading || protobuf || signature(64)` after checking the size and leading byte.
fn split_signed(bytes: &[u8], leading: u8, limit: usize) -> Result<(&[u8], &[u8]), DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    match bytes.first() {
        None => return Err(DecodeError::Empty),
        Some(&b) if b != leading => return Err(DecodeError::UnsupportedVersion(b)),
        Some(_) => {}
    }
    let at = bytes
        .len()
        .checked_sub(SIGNATURE_LEN)
        .filter(|&at| at >= 1)
        .ok_or(DecodeError::InvalidField("signature"))?;
    bytes
        .split_at_checked(at)
        .ok_or(DecodeError::InvalidField("signature"))
}

/// A server signing key certified by the trust root (PROTOCOL.md §19.2):
/// `0x81 || ServerCertificateProto || Ed25519(root, "confidant/server-certificate/v1" || 0x81 ||
/// ServerCertificateProto)`.
pub struct ServerCertificate;

impl ServerCertificate {
    /// Certifies `server_key` under `key_id` with the trust root (done offline by the operator).
    #[must_use]
    pub fn issue(root: &IdentityKeyPair, key_id: u32, server_key: &IdentityKey) -> Vec<u8> {
        let mut out = codec::encode(
            SERVER_CERTIFICATE_V1,
            &ServerCertificateProto {
                key_id: Some(key_id),
                key: server_key.to_bytes().to_vec(),
            },
        );
        let signature = root.sign(&signed_message(SERVER_CERTIFICATE_CONTEXT, &out));
        out.extend_from_slice(&signature);
        out
    }
}

/// Issues sender certificates (run by the key server; PROTOCOL.md §19.2):
/// `0x82 || SenderCertificateProto || Ed25519(server, "confidant/sender-certificate/v1" || 0x82
/// || SenderCertificateProto)`, the proto embedding the server certificate.
pub struct SenderCertificate;

impl SenderCertificate {
    /// Certifies that `identity_key` is device `sender.device` of account `sender.account` until
    /// `expires`. The key server must only certify a device listed in the account's verified
    /// device list (see [`crate::server::issue_sender_certificate`]).
    #[must_use]
    pub fn issue(
        server: &IdentityKeyPair,
        server_certificate: &[u8],
        sender: Address,
        identity_key: &IdentityKey,
        expires: Timestamp,
    ) -> Vec<u8> {
        let mut out = codec::encode(
            SENDER_CERTIFICATE_V1,
            &SenderCertificateProto {
                account_key: sender.account.to_bytes().to_vec(),
                device_id: Some(sender.device),
                identity_key: identity_key.to_bytes().to_vec(),
                expires: Some(expires.0),
                server_certificate: server_certificate.to_vec(),
            },
        );
        let signature = server.sign(&signed_message(SENDER_CERTIFICATE_CONTEXT, &out));
        out.extend_from_slice(&signature);
        out
    }
}

/// A sender certificate whose chain, expiry and revocation status were checked.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedSenderCertificate {
    sender: Address,
    identity_key: IdentityKey,
    expires: Timestamp,
    server_key_id: u32,
}

impl VerifiedSenderCertificate {
    /// The certified sender device.
    #[must_use]
    pub fn sender(&self) -> Address {
        self.sender
    }

    /// The certified device identity key.
    #[must_use]
    pub fn identity_key(&self) -> IdentityKey {
        self.identity_key
    }

    /// When the certificate expires.
    #[must_use]
    pub fn expires(&self) -> Timestamp {
        self.expires
    }

    /// The id of the server key that signed it.
    #[must_use]
    pub fn server_key_id(&self) -> u32 {
        self.server_key_id
    }
}

impl fmt::Debug for VerifiedSenderCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedSenderCertificate")
            .field("sender", &self.sender)
            .field("expires", &self.expires)
            .field("server_key_id", &self.server_key_id)
            .finish_non_exhaustive()
    }
}

/// Checks sender certificates against a pinned trust root and a list of revoked server key ids
/// (PROTOCOL.md §19.2). A value; the application persists its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateValidator {
    root: IdentityKey,
    revoked: BTreeSet<u32>,
}

impl CertificateValidator {
    /// A validator trusting `root`.
    #[must_use]
    pub fn new(root: IdentityKey) -> Self {
        Self {
            root,
            revoked: BTreeSet::new(),
        }
    }

    /// Refuses every certificate signed by server key `key_id` from now on.
    pub fn revoke(&mut self, key_id: u32) {
        self.revoked.insert(key_id);
    }

    /// The pinned trust root.
    #[must_use]
    pub fn root(&self) -> IdentityKey {
        self.root
    }

    /// Validates a sender certificate at time `now`: the server certificate's signature by the
    /// root, the server key id not revoked, the sender certificate's signature by the server
    /// key, and `now < expires`. Each key is parsed strictly (canonical, torsion-free points).
    ///
    /// # Errors
    /// [`CertificateError`]; every signature failure is `Unauthenticated`.
    pub fn validate(
        &self,
        certificate: &[u8],
        now: Timestamp,
    ) -> Result<VerifiedSenderCertificate, CertificateError> {
        let parsed = parse_canonical(certificate)?;
        let (signed, signature) = (parsed.signed, parsed.signature);
        let (server_signed, server_signature) =
            (&parsed.server_signed[..], &parsed.server_signature[..]);
        let (proto, server) = (&parsed.proto, &parsed.server);
        let server_key_id = server.key_id.ok_or(DecodeError::InvalidField("key_id"))?;
        if !self.root.verify(
            &signed_message(SERVER_CERTIFICATE_CONTEXT, server_signed),
            server_signature,
        ) {
            return Err(CertificateError::Unauthenticated);
        }
        if self.revoked.contains(&server_key_id) {
            return Err(CertificateError::Revoked {
                key_id: server_key_id,
            });
        }
        let server_key = IdentityKey::from_bytes(&server.key)
            .map_err(|_| DecodeError::InvalidField("server key"))?;
        if !server_key.verify(
            &signed_message(SENDER_CERTIFICATE_CONTEXT, signed),
            signature,
        ) {
            return Err(CertificateError::Unauthenticated);
        }
        let key = |bytes: &[u8], field| {
            IdentityKey::from_bytes(bytes).map_err(|_| DecodeError::InvalidField(field))
        };
        let verified = VerifiedSenderCertificate {
            sender: Address {
                account: key(&proto.account_key, "account_key")?,
                device: proto
                    .device_id
                    .ok_or(DecodeError::InvalidField("device_id"))?,
            },
            identity_key: key(&proto.identity_key, "identity_key")?,
            expires: Timestamp(proto.expires.ok_or(DecodeError::InvalidField("expires"))?),
            server_key_id,
        };
        if now >= verified.expires {
            return Err(CertificateError::Expired {
                expires: verified.expires,
                now,
            });
        }
        Ok(verified)
    }
}

/// A sender certificate split into its parts, each checked to be the canonical encoding of its
/// fields (decode, re-encode, compare) and of the one allowed length. Signatures unchecked.
struct ParsedCertificate<'a> {
    signed: &'a [u8],
    signature: &'a [u8],
    proto: SenderCertificateProto,
    server_signed: Vec<u8>,
    server_signature: Vec<u8>,
    server: ServerCertificateProto,
}

fn parse_canonical(certificate: &[u8]) -> Result<ParsedCertificate<'_>, DecodeError> {
    let (signed, signature) = split_signed(
        certificate,
        SENDER_CERTIFICATE_V1,
        MAX_SENDER_CERTIFICATE_BYTES,
    )?;
    if certificate.len() != SENDER_CERTIFICATE_LEN {
        return Err(DecodeError::InvalidField("certificate length"));
    }
    let body = signed.get(1..).ok_or(DecodeError::Empty)?;
    let proto: SenderCertificateProto = codec::decode_body(body, &[])?;
    if codec::encode(SENDER_CERTIFICATE_V1, &proto) != signed {
        return Err(DecodeError::InvalidField("non-canonical certificate"));
    }
    if proto.server_certificate.len() != SERVER_CERTIFICATE_LEN {
        return Err(DecodeError::InvalidField("server certificate length"));
    }
    let (server_signed, server_signature) = split_signed(
        &proto.server_certificate,
        SERVER_CERTIFICATE_V1,
        MAX_SERVER_CERTIFICATE_BYTES,
    )?;
    let server_body = server_signed.get(1..).ok_or(DecodeError::Empty)?;
    let server: ServerCertificateProto = codec::decode_body(server_body, &[])?;
    if codec::encode(SERVER_CERTIFICATE_V1, &server) != server_signed {
        return Err(DecodeError::InvalidField(
            "non-canonical server certificate",
        ));
    }
    let (server_signed, server_signature) = (server_signed.to_vec(), server_signature.to_vec());
    Ok(ParsedCertificate {
        signed,
        signature,
        proto,
        server_signed,
        server_signature,
        server,
    })
}

/// The certified address and identity key of a canonical sender certificate, **without
/// checking any signature**: for the sealed-sender authentication tag, which must be checked
/// before the chain (PROTOCOL.md §19.3), and for a sender checking its own certificate.
pub(crate) fn unverified_subject(
    certificate: &[u8],
) -> Result<(Address, IdentityKey), DecodeError> {
    let parsed = parse_canonical(certificate)?;
    let key = |bytes: &[u8], field| {
        IdentityKey::from_bytes(bytes).map_err(|_| DecodeError::InvalidField(field))
    };
    Ok((
        Address {
            account: key(&parsed.proto.account_key, "account_key")?,
            device: parsed
                .proto
                .device_id
                .ok_or(DecodeError::InvalidField("device_id"))?,
        },
        key(&parsed.proto.identity_key, "identity_key")?,
    ))
}
