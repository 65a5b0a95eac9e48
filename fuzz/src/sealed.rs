//! `sealed_open`: [`sealed::open`] with fixed recipient identities (PROTOCOL.md §19.3).
//!
//! Recipients are those of the sealed-sender test vectors (identities re-derived from their
//! seeds, each with its vector's trust root) plus two of the fuzzer's own, to which a group, a
//! fan-out and a ratchet message were sealed by a sender with one of
//! [`crate::certificates`]' own certificates. Every known envelope opens at init.
//!
//! Input, by its first byte:
//! * `0x71`: an envelope; a sealed one is opened by the recipient it names (or the first);
//! * `0x72`: a multi-recipient upload, split, each sealed envelope opened by its recipient;
//! * anything else: structured ([`arbitrary`]) — raw parts (ephemeral 32, header 48, entry,
//!   body) opened by a chosen recipient; a known envelope with its parts mutated; or a known
//!   envelope offered to another recipient.
//!
//! Invariants: an envelope opens only if its four parts are exactly those of a known envelope
//! and the opener is that envelope's recipient, and then to exactly the known sender and
//! content; a known envelope opens for its recipient; a split upload's envelopes re-encode to
//! themselves.

use std::sync::OnceLock;

use arbitrary::Unstructured;
use confidant::book::Address;
use confidant::certificate::CertificateValidator;
use confidant::envelope::{Envelope, EnvelopeContent, EnvelopeKind, SealedEnvelope};
use confidant::sealed::{self, SealedRecipient};
use confidant::{IdentityKeyPair, SealedError, server};

use crate::certificates::{self, Mutation};
use crate::vectors::{self, hex, hex_opt, hex32, int};
use crate::{NOW, rng};

/// A recipient device.
pub struct Recipient {
    /// Its identity.
    pub identity: IdentityKeyPair,
    /// Its address.
    pub address: Address,
    /// Index of the certificate issuer it trusts ([`certificates::Fixture::issuers`]).
    pub issuer: usize,
}

/// An envelope known to open.
pub struct Known {
    /// Index of its recipient.
    pub recipient: usize,
    /// The sealed parts.
    pub sealed: SealedEnvelope,
    /// The certified sender.
    pub sender: Address,
    /// What it opens to.
    pub content: EnvelopeContent,
}

/// Recipients, known envelopes, and their encodings for seeds.
pub struct Fixture {
    /// Vector recipients, then the fuzzer's own.
    pub recipients: Vec<Recipient>,
    /// Envelopes that open.
    pub known: Vec<Known>,
    /// Encoded envelopes (`0x71`) and uploads (`0x72`).
    pub encodings: Vec<Vec<u8>>,
}

fn validator(recipient: &Recipient) -> &'static CertificateValidator {
    &certificates::fixture().issuers[recipient.issuer].validator
}

fn add_upload(f: &mut Fixture, upload: &[u8]) {
    f.encodings.push(upload.to_vec());
    for envelope in server::split_upload(upload).expect("fixture upload splits") {
        let EnvelopeContent::Sealed(sealed) = &envelope.content else {
            panic!("a sealed upload split to an unsealed envelope");
        };
        f.encodings.push(envelope.to_bytes());
        let Some(recipient) = f
            .recipients
            .iter()
            .position(|r| r.address == envelope.recipient)
        else {
            continue;
        };
        let r = &f.recipients[recipient];
        let unsealed = match sealed::open(&r.identity, sealed, validator(r), NOW) {
            Ok(unsealed) => unsealed,
            // The decoy envelope to the sending device itself.
            Err(SealedError::FromSelf) => continue,
            Err(e) => panic!("fixture envelope fails to open: {e:?}"),
        };
        f.known.push(Known {
            recipient,
            sealed: sealed.clone(),
            sender: unsealed.sender(),
            content: unsealed.content,
        });
    }
}

fn build() -> Fixture {
    let certs = certificates::fixture();
    let mut f = Fixture {
        recipients: Vec::new(),
        known: Vec::new(),
        encodings: Vec::new(),
    };
    let vs = vectors::vectors(vectors::SEALED);
    for (issuer, v) in vs.iter().enumerate() {
        let recipients = v
            .get("recipients")
            .and_then(serde_json::Value::as_array)
            .expect("recipients");
        for r in recipients {
            f.recipients.push(Recipient {
                identity: IdentityKeyPair::from_seed(&hex32(r, "identity_seed")),
                address: Address {
                    account: IdentityKeyPair::from_seed(&hex32(r, "account_seed")).public(),
                    device: u32::try_from(int(r, "device")).expect("device id"),
                },
                issuer,
            });
        }
    }
    for v in &vs {
        add_upload(&mut f, &hex(v, "upload"));
    }

    // The fuzzer's own: two recipients, one sender with an own certificate.
    let mut rng = rng(0x5ea1);
    let own = certs.own();
    let first_own = f.recipients.len();
    let account = IdentityKeyPair::generate(&mut rng);
    for device in [1, 2] {
        f.recipients.push(Recipient {
            identity: IdentityKeyPair::generate(&mut rng),
            address: Address {
                account: account.public(),
                device,
            },
            issuer: own,
        });
    }
    let (sender, cert) = &certs.own_senders[1];
    let cert = &certs.known[*cert].bytes;
    // The sender is a recipient too: the decoys sealed to it must open to `FromSelf`.
    f.recipients.push(Recipient {
        identity: IdentityKeyPair::from_seed(&sender.to_seed()),
        address: certs.known[certs.own_senders[1].1].verified.sender(),
        issuer: own,
    });
    let entries: [&'static [u8]; 2] = [b"entry one", b"entry two, longer"];
    fn to<'a>(r: &Recipient, entry: Option<&'a [u8]>) -> SealedRecipient<'a> {
        SealedRecipient {
            address: r.address,
            identity_key: r.identity.public(),
            entry,
        }
    }
    let own_recipients = &f.recipients[first_own..];
    let to = |i: usize, entry: Option<&'static [u8]>| to(&own_recipients[i], entry);
    let uploads = [
        (
            EnvelopeKind::Group,
            b"a group message".to_vec(),
            vec![to(0, None), to(1, None)],
        ),
        (
            EnvelopeKind::FanOut,
            b"a fan-out body".to_vec(),
            vec![to(0, Some(entries[0])), to(1, Some(entries[1]))],
        ),
        (
            EnvelopeKind::Ratchet,
            b"a ratchet message".to_vec(),
            vec![to(1, None)],
        ),
    ]
    .into_iter()
    .map(|(kind, content, recipients)| {
        let decoy = kind != EnvelopeKind::Ratchet;
        sealed::seal(&mut rng, sender, cert, kind, &content, &recipients, decoy).expect("seal")
    })
    .collect::<Vec<_>>();
    for upload in uploads {
        add_upload(&mut f, &upload);
    }
    // Sanity: every vector recipient has an envelope, and the vectors' envelopes are known.
    for v in &vs {
        let expected = v
            .get("expected")
            .and_then(serde_json::Value::as_array)
            .expect("expected");
        for e in expected {
            let bytes = hex_opt(e, "envelope").expect("envelope");
            assert!(f.encodings.contains(&bytes), "vector envelope reproduced");
        }
    }
    f
}

/// The fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

/// Opens `sealed` as recipient `r` and checks the invariants.
fn open(r: usize, sealed: &SealedEnvelope) {
    let f = fixture();
    let recipient = &f.recipients[r];
    let result = sealed::open(&recipient.identity, sealed, validator(recipient), NOW);
    let known = f.known.iter().find(|k| {
        k.sealed == *sealed
            && f.recipients[k.recipient].identity.public() == recipient.identity.public()
            && f.recipients[k.recipient].issuer == recipient.issuer
    });
    match (result, known) {
        (Ok(u), Some(k)) => assert!(
            u.sender() == k.sender && u.content == k.content,
            "a known envelope opened to another sender or content"
        ),
        (Ok(u), None) => panic!("an envelope opened that was not sealed to this recipient: {u:?}"),
        (Err(e), Some(_)) => panic!("a known envelope failed to open: {e:?}"),
        (Err(SealedError::FromSelf), None) => assert!(
            certificates::fixture()
                .known
                .iter()
                .any(|k| k.verified.identity_key() == recipient.identity.public()),
            "FromSelf reported to a device that is not a certified sender"
        ),
        (Err(_), None) => {}
    }
}

fn recipient_of(address: &Address) -> usize {
    fixture()
        .recipients
        .iter()
        .position(|r| r.address == *address)
        .unwrap_or(0)
}

fn structured(data: &[u8]) -> arbitrary::Result<()> {
    let f = fixture();
    let mut u = Unstructured::new(data);
    match u.int_in_range(0..=2u8)? {
        0 => {
            let r = u.choose_index(f.recipients.len())?;
            let ephemeral = u.arbitrary()?;
            let header = u.arbitrary()?;
            let entry_len = u.int_in_range(0..=300usize)?;
            let entry = u.bytes(entry_len)?.to_vec();
            let body = u.take_rest().to_vec();
            open(
                r,
                &SealedEnvelope {
                    ephemeral,
                    header,
                    entry,
                    body,
                },
            );
        }
        1 => {
            let k = &f.known[u.choose_index(f.known.len())?];
            let mut parts = [
                k.sealed.ephemeral.to_vec(),
                k.sealed.header.to_vec(),
                k.sealed.entry.clone(),
                k.sealed.body.clone(),
            ];
            for _ in 0..u.int_in_range(1..=4)? {
                let part = u.choose_index(4)?;
                u.arbitrary::<Mutation>()?.apply(&mut parts[part]);
            }
            let [ephemeral, header, entry, body] = parts;
            let (Ok(ephemeral), Ok(header)) = (ephemeral.try_into(), header.try_into()) else {
                return Ok(());
            };
            let sealed = SealedEnvelope {
                ephemeral,
                header,
                entry,
                body,
            };
            // Opens only if it is still exactly a known envelope of this recipient.
            open(k.recipient, &sealed);
        }
        _ => {
            let k = u.choose_index(f.known.len())?;
            let r = u.choose_index(f.recipients.len())?;
            open(r, &f.known[k].sealed);
        }
    }
    Ok(())
}

/// The `sealed_open` target.
pub fn run(data: &[u8]) {
    match data.first() {
        Some(0x71) => {
            if let Ok(envelope) = Envelope::from_bytes(data)
                && let EnvelopeContent::Sealed(sealed) = &envelope.content
            {
                open(recipient_of(&envelope.recipient), sealed);
            }
        }
        Some(0x72) => {
            if let Ok(envelopes) = server::split_upload(data) {
                for envelope in envelopes.iter().take(8) {
                    assert!(
                        Envelope::from_bytes(&envelope.to_bytes()).as_ref() == Ok(envelope),
                        "a split envelope does not re-encode to itself"
                    );
                    if let EnvelopeContent::Sealed(sealed) = &envelope.content {
                        open(recipient_of(&envelope.recipient), sealed);
                    }
                }
            }
        }
        _ => {
            let _ = structured(data);
        }
    }
}

/// Seeds: every known envelope and upload, and structured inputs for each mode.
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let f = fixture();
    let mut out: Vec<(String, Vec<u8>)> = f
        .encodings
        .iter()
        .enumerate()
        .map(|(i, e)| (format!("encoding-{i}"), e.clone()))
        .collect();
    let mut r = rng(0x5eed_5ea1);
    for mode in 0..3u8 {
        for len in [40usize, 200, 600] {
            let mut bytes = vec![0u8; len];
            rand_chacha::rand_core::Rng::fill_bytes(&mut r, &mut bytes);
            bytes[0] = mode;
            out.push((format!("structured-{mode}-{len}"), bytes));
        }
    }
    out
}
