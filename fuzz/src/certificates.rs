//! `certificates`: sender-certificate validation (PROTOCOL.md §19.2).
//!
//! Issuers (trust root, server key, server certificate) are those of the sealed-sender test
//! vectors, re-derived from their seeds, plus one of the fuzzer's own; the known-valid
//! certificates are the vectors' and a few issued here.
//!
//! Input, by its first byte:
//! * `0x82`: a sender certificate, validated under every issuer's root;
//! * `0x81`: a server certificate, used to issue a sender certificate with the fuzzer's own
//!   server key;
//! * anything else: structured ([`arbitrary`]) — a known certificate mutated, or a certificate
//!   issued from fuzzed fields.
//!
//! Invariants: validation is deterministic; a certificate validates only if it is exactly one
//! of the certificates its root's server issued (signatures are deterministic and strictly
//! verified, so no other encoding can pass), with the fields it was issued with; a valid
//! certificate is refused once its server key is revoked and once it expired; a known
//! certificate validates before its expiry; a certificate issued with the genuine server
//! certificate and a future expiry validates, with exactly the issued fields, and one issued
//! with any other server certificate does not.

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use confidant::book::Address;
use confidant::certificate::{
    CertificateValidator, SenderCertificate, ServerCertificate, VerifiedSenderCertificate,
};
use confidant::{CertificateError, IdentityKey, IdentityKeyPair, Timestamp};

use crate::vectors::{self, hex, hex32, int};
use crate::{DAY_MS, NOW, rng};

/// A trust root and the server key it certified.
pub struct Issuer {
    /// The trust root.
    pub root: IdentityKeyPair,
    /// The server signing key.
    pub server: IdentityKeyPair,
    /// The server certificate (`0x81`).
    pub server_certificate: Vec<u8>,
    /// The server key id.
    pub key_id: u32,
    /// A validator pinning `root`.
    pub validator: CertificateValidator,
}

/// A certificate known to be valid at [`NOW`].
pub struct Known {
    /// Index of its issuer.
    pub issuer: usize,
    /// The certificate (`0x82`).
    pub bytes: Vec<u8>,
    /// What it certifies.
    pub verified: VerifiedSenderCertificate,
}

/// The issuers, certificates and sender identities.
pub struct Fixture {
    /// The vectors' issuers, then the fuzzer's own (last).
    pub issuers: Vec<Issuer>,
    /// Known-valid certificates.
    pub known: Vec<Known>,
    /// Sender device identities of the fuzzer's own certificates, with their `known` index.
    pub own_senders: Vec<(IdentityKeyPair, usize)>,
    /// Valid identity keys to issue certificates for.
    pub keys: Vec<IdentityKey>,
}

impl Fixture {
    /// Index of the fuzzer's own issuer.
    #[must_use]
    pub fn own(&self) -> usize {
        self.issuers.len() - 1
    }
}

fn issuer(root: IdentityKeyPair, server: IdentityKeyPair, key_id: u32) -> Issuer {
    let server_certificate = ServerCertificate::issue(&root, key_id, &server.public());
    Issuer {
        validator: CertificateValidator::new(root.public()),
        root,
        server,
        server_certificate,
        key_id,
    }
}

fn build() -> Fixture {
    let mut issuers = Vec::new();
    let mut known = Vec::new();
    for v in vectors::vectors(vectors::SEALED) {
        let root = IdentityKeyPair::from_seed(&hex32(&v, "root_seed"));
        let server = IdentityKeyPair::from_seed(&hex32(&v, "server_seed"));
        let key_id = u32::try_from(int(&v, "server_key_id")).expect("key id");
        let issuer = issuer(root, server, key_id);
        let bytes = hex(&v, "certificate");
        let verified = issuer
            .validator
            .validate(&bytes, NOW)
            .expect("vector certificate validates");
        known.push(Known {
            issuer: issuers.len(),
            bytes,
            verified,
        });
        issuers.push(issuer);
    }
    let mut rng = rng(0xce47);
    let own = issuer(
        IdentityKeyPair::generate(&mut rng),
        IdentityKeyPair::generate(&mut rng),
        7,
    );
    let mut own_senders = Vec::new();
    let mut keys = Vec::new();
    for (i, expires_days) in [1u64, 30, 365].into_iter().enumerate() {
        let account = IdentityKeyPair::generate(&mut rng);
        let device = IdentityKeyPair::generate(&mut rng);
        let sender = Address {
            account: account.public(),
            device: 1 + u32::try_from(i).unwrap_or(0) * 1000,
        };
        let bytes = SenderCertificate::issue(
            &own.server,
            &own.server_certificate,
            sender,
            &device.public(),
            NOW.plus_ms(expires_days * DAY_MS),
        );
        let verified = own
            .validator
            .validate(&bytes, NOW)
            .expect("own certificate validates");
        keys.extend([account.public(), device.public()]);
        own_senders.push((device, known.len()));
        known.push(Known {
            issuer: issuers.len(),
            bytes,
            verified,
        });
    }
    issuers.push(own);
    Fixture {
        issuers,
        known,
        own_senders,
        keys,
    }
}

/// The fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

/// Validates `bytes` under issuer `i` and checks every invariant that does not depend on how
/// the bytes were made. Unless `issued_here` (a certificate just issued from fuzzed fields),
/// only a known certificate may validate. Returns the result.
fn validate(
    i: usize,
    bytes: &[u8],
    issued_here: bool,
) -> Result<VerifiedSenderCertificate, CertificateError> {
    let f = fixture();
    let issuer = &f.issuers[i];
    let result = issuer.validator.validate(bytes, NOW);
    assert!(
        result == issuer.validator.validate(bytes, NOW),
        "validation is not deterministic"
    );
    let known = f.known.iter().find(|k| k.issuer == i && k.bytes == bytes);
    match (&result, known) {
        (Ok(v), Some(k)) => {
            assert!(
                *v == k.verified,
                "a known certificate validated to other fields"
            );
        }
        (Ok(v), None) => {
            // Only a certificate this issuer's server signed can validate.
            assert!(issued_here, "an unknown certificate validated: {v:?}");
        }
        (Err(e), Some(_)) => panic!("a known-valid certificate was refused: {e:?}"),
        (Err(_), None) => {}
    }
    if let Ok(v) = &result {
        let mut revoked = issuer.validator.clone();
        revoked.revoke(v.server_key_id());
        assert_eq!(
            revoked.validate(bytes, NOW),
            Err(CertificateError::Revoked {
                key_id: v.server_key_id()
            }),
            "a revoked server key's certificate was not refused as revoked"
        );
        assert!(
            matches!(
                issuer.validator.validate(bytes, v.expires()),
                Err(CertificateError::Expired { .. })
            ),
            "a certificate validated at its expiry"
        );
        assert!(v.expires() > NOW, "validated after expiry");
    }
    result
}

/// Fuzzed certificate fields.
#[derive(Arbitrary, Debug)]
struct Fields {
    account: u8,
    identity: u8,
    device: u32,
    expires: u64,
    /// `None`: the genuine server certificate.
    server_certificate: Option<Vec<u8>>,
}

/// A byte-level mutation (positions taken modulo the length), shared with `sealed_open`.
#[derive(Arbitrary, Debug, Clone)]
pub enum Mutation {
    /// XOR the byte at a position.
    Xor(u16, u8),
    /// Cut at a position.
    Truncate(u16),
    /// Insert a byte at a position.
    Insert(u16, u8),
    /// Append bytes.
    Append(Vec<u8>),
}

impl Mutation {
    /// Applies the mutation.
    pub fn apply(&self, bytes: &mut Vec<u8>) {
        let at = |pos: u16, len: usize| usize::from(pos) % len.max(1);
        match self {
            Mutation::Xor(pos, with) => {
                let i = at(*pos, bytes.len());
                if let Some(b) = bytes.get_mut(i) {
                    *b ^= *with;
                }
            }
            Mutation::Truncate(pos) => {
                let i = at(*pos, bytes.len());
                bytes.truncate(i);
            }
            Mutation::Insert(pos, byte) => {
                let i = at(*pos, bytes.len() + 1).min(bytes.len());
                bytes.insert(i, *byte);
            }
            Mutation::Append(tail) => bytes.extend_from_slice(tail),
        }
    }
}

fn issue(fields: &Fields) {
    let f = fixture();
    let own = &f.issuers[f.own()];
    let key = |i: u8| f.keys[usize::from(i) % f.keys.len()];
    let sender = Address {
        account: key(fields.account),
        device: fields.device,
    };
    let identity = key(fields.identity);
    let expires = Timestamp(fields.expires);
    let server_certificate = fields
        .server_certificate
        .as_deref()
        .unwrap_or(&own.server_certificate);
    let bytes =
        SenderCertificate::issue(&own.server, server_certificate, sender, &identity, expires);
    let result = validate(f.own(), &bytes, true);
    let genuine = server_certificate == own.server_certificate.as_slice();
    match result {
        Ok(v) => {
            assert!(
                genuine,
                "a certificate with a forged server certificate validated"
            );
            assert!(
                v.sender() == sender
                    && v.identity_key() == identity
                    && v.expires() == expires
                    && v.server_key_id() == own.key_id,
                "a certificate validated to other fields than it was issued with"
            );
        }
        Err(e) => assert!(
            !genuine || expires <= NOW,
            "a freshly issued certificate was refused: {e:?}"
        ),
    }
}

fn structured(data: &[u8]) -> arbitrary::Result<()> {
    let f = fixture();
    let mut u = Unstructured::new(data);
    if u.arbitrary::<bool>()? {
        issue(&u.arbitrary()?);
        return Ok(());
    }
    let k = &f.known[u.choose_index(f.known.len())?];
    let mut bytes = k.bytes.clone();
    let count = u.int_in_range(1..=4)?;
    for _ in 0..count {
        u.arbitrary::<Mutation>()?.apply(&mut bytes);
    }
    let result = validate(k.issuer, &bytes, false);
    assert_eq!(
        result.is_ok(),
        f.known
            .iter()
            .any(|c| c.issuer == k.issuer && c.bytes == bytes),
        "a mutated certificate validated"
    );
    Ok(())
}

/// The `certificates` target.
pub fn run(data: &[u8]) {
    let f = fixture();
    match data.first() {
        Some(0x82) => {
            for i in 0..f.issuers.len() {
                let _ = validate(i, data, false);
            }
        }
        Some(0x81) => issue(&Fields {
            account: 0,
            identity: 1,
            device: 1,
            expires: NOW.0 + DAY_MS,
            server_certificate: Some(data.to_vec()),
        }),
        _ => {
            let _ = structured(data);
        }
    }
}

/// Seeds: every known certificate and server certificate, and a few structured inputs.
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let f = fixture();
    let mut out = Vec::new();
    for (i, k) in f.known.iter().enumerate() {
        out.push((format!("certificate-{i}"), k.bytes.clone()));
    }
    for (i, s) in f.issuers.iter().enumerate() {
        out.push((
            format!("server-certificate-{i}"),
            s.server_certificate.clone(),
        ));
    }
    let mut r = rng(0x5eed_ce47);
    for i in 0..4 {
        let mut bytes = vec![0u8; 64 + 32 * i];
        rand_chacha::rand_core::Rng::fill_bytes(&mut r, &mut bytes);
        bytes[0] = u8::try_from(i).unwrap_or(0);
        out.push((format!("structured-{i}"), bytes));
    }
    out
}
