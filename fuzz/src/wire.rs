//! `decode_wire`: every decoder, dispatched on [`WireFormat::of`].
//!
//! Every input also goes through [`padding::unpad`] and [`content::parse`]. Then, by format:
//! messages, bundles (and `verify`), uploads (and the key server's `DeviceKeys`), snapshots
//! ([`crate::snapshots::check`]), device lists (verified under each known account key), link
//! requests (and linking), group messages, distributions, envelopes, multi-recipient uploads
//! (split), certificates ([`crate::certificates::run`]), attachment pointers and scannable
//! safety numbers. Fan-out bodies (`0x52`) have no standalone parser: `interaction` opens them.
//!
//! Invariants: nothing panics; whatever parses re-encodes to bytes that parse back to an equal
//! value (group messages keep their exact bytes); a key server serves only bundles that verify
//! and its record round-trips; every envelope split from an upload passes
//! [`Envelope::from_bytes`]; a verified device list cannot be re-applied as its own successor.

use std::sync::OnceLock;

use confidant::attachment::AttachmentPointer;
use confidant::device::{DeviceEntry, LinkRequest, VerifiedDeviceList};
use confidant::envelope::{Envelope, EnvelopeContent, WireFormat};
use confidant::group::{GroupMessage, SenderKeyDistribution, member_devices};
use confidant::safety::{KnownAccounts, SafetyNumber};
use confidant::server::{self, DeviceKeys, PreKeyUpload};
use confidant::{
    DeviceListError, IdentityKey, IdentityKeyPair, Message, PreKeyBundle, content, padding,
};

use crate::vectors::{self, hex, hex32};

struct Fixture {
    /// Account keys device lists are verified under (the vectors' and the fuzzer's).
    accounts: Vec<IdentityKey>,
    /// An account that links devices (the first device-list vector's).
    linker: IdentityKeyPair,
    /// The safety-number vectors' numbers, from both sides.
    numbers: Vec<SafetyNumber>,
}

fn build() -> Fixture {
    let lists = vectors::vectors(vectors::DEVICE_LIST);
    let mut accounts: Vec<IdentityKey> = lists
        .iter()
        .map(|v| IdentityKey::from_bytes(&hex(v, "account_public")).expect("account key"))
        .collect();
    accounts.extend(crate::interaction::account_keys());
    let linker = IdentityKeyPair::from_seed(&hex32(&lists[0], "account_seed"));
    let numbers = vectors::vectors(vectors::SAFETY_NUMBER)
        .iter()
        .take(1)
        .flat_map(|v| {
            let key = |k| IdentityKey::from_bytes(&hex(v, k)).expect("account key");
            let (lk, lid) = (key("local_account_key"), hex(v, "local_account_id"));
            let (rk, rid) = (key("remote_account_key"), hex(v, "remote_account_id"));
            [
                SafetyNumber::new(&lk, &lid, &rk, &rid),
                SafetyNumber::new(&rk, &rid, &lk, &lid),
            ]
        })
        .collect();
    Fixture {
        accounts,
        linker,
        numbers,
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(build)
}

fn message(data: &[u8]) {
    let Ok(m) = Message::from_bytes(data) else {
        return;
    };
    assert_eq!(
        Message::from_bytes(&m.to_bytes()).as_ref(),
        Ok(&m),
        "Message round trip"
    );
    match &m {
        Message::PreKey(p) => {
            let _ = (
                p.handshake(),
                p.signed_prekey_id(),
                p.one_time_prekey_id(),
                p.kem_prekey_id(),
                p.message().counter(),
            );
            assert!(
                p.handshake().is_post_quantum() == p.kem_prekey_id().is_some(),
                "KEM fields present iff PQXDH"
            );
        }
        Message::Ratchet(r) => {
            let _ = (r.counter(), r.ratchet_key());
        }
    }
}

fn bundle(data: &[u8]) {
    let Ok(b) = PreKeyBundle::from_bytes(data) else {
        return;
    };
    assert_eq!(
        PreKeyBundle::from_bytes(&b.to_bytes()).as_ref(),
        Ok(&b),
        "PreKeyBundle round trip"
    );
    let identity = b.identity_key();
    if let Ok(v) = b.clone().verify() {
        assert!(v.identity_key() == identity, "verified another identity");
        assert!(
            b.verify_for(&identity).is_ok(),
            "verify_for refused what verify accepted"
        );
    }
}

fn upload(data: &[u8]) {
    let Ok(u) = PreKeyUpload::from_bytes(data) else {
        assert!(
            DeviceKeys::register(data).is_err(),
            "a key server registered an invalid upload"
        );
        return;
    };
    assert_eq!(
        PreKeyUpload::from_bytes(&u.to_bytes()).as_ref(),
        Ok(&u),
        "PreKeyUpload round trip"
    );
    let Ok(mut keys) = DeviceKeys::register(data) else {
        return;
    };
    let record = keys.to_bytes();
    assert_eq!(
        DeviceKeys::restore(&record).as_ref(),
        Ok(&keys),
        "DeviceKeys record round trip"
    );
    let before = keys.clone();
    if keys.apply_upload(data).is_err() {
        assert!(keys == before, "a refused upload changed the record");
    }
    let fetched = keys.fetch_bundle();
    fetched
        .bundle
        .verify()
        .expect("a key server served a bundle that does not verify");
}

fn device_list(data: &[u8]) {
    for account in &fixture().accounts {
        let Ok(list) = VerifiedDeviceList::verify(data, account, None) else {
            continue;
        };
        assert!(
            list.changes_since(&list) == Default::default(),
            "a list differs from itself"
        );
        assert!(
            matches!(
                VerifiedDeviceList::verify(data, account, Some(&list)),
                Err(DeviceListError::Rollback { .. })
            ),
            "a list was accepted as its own successor"
        );
        let members = member_devices([&list]);
        assert_eq!(members.len(), list.entries().len(), "member devices");
        let _ = KnownAccounts::new().observe_list(&list);
    }
}

fn link_request(data: &[u8]) {
    let Ok(r) = LinkRequest::from_bytes(data) else {
        return;
    };
    assert_eq!(
        LinkRequest::from_bytes(&r.to_bytes()).as_ref(),
        Ok(&r),
        "LinkRequest round trip"
    );
    if let Ok(entry) = DeviceEntry::link(&fixture().linker, &r, 9) {
        assert!(entry.device_key() == r.device_key(), "linked another key");
    }
}

fn group_message(data: &[u8]) {
    if let Ok(m) = GroupMessage::from_bytes(data) {
        assert!(m.to_bytes() == data, "GroupMessage keeps its exact bytes");
    }
}

fn distribution(data: &[u8]) {
    if let Ok(d) = SenderKeyDistribution::from_bytes(data) {
        let again = SenderKeyDistribution::from_bytes(&d.to_bytes())
            .expect("a distribution's encoding parses");
        assert!(
            *again.to_bytes() == *d.to_bytes()
                && again.group_id() == d.group_id()
                && again.key_id() == d.key_id()
                && again.iteration() == d.iteration()
                && again.previous_key() == d.previous_key(),
            "SenderKeyDistribution round trip"
        );
    }
}

fn envelope_round_trip(e: &Envelope) {
    let bytes = e.to_bytes();
    assert_eq!(
        Envelope::from_bytes(&bytes).as_ref(),
        Ok(e),
        "Envelope round trip"
    );
    let sealed = matches!(e.content, EnvelopeContent::Sealed(_));
    assert_eq!(
        server::validate_sealed_envelope(&bytes).ok(),
        sealed.then_some(e.recipient),
        "validate_sealed_envelope"
    );
    assert_eq!(
        e.sender().is_none(),
        sealed,
        "only sealed envelopes hide the sender"
    );
}

fn envelope(data: &[u8]) {
    if let Ok(e) = Envelope::from_bytes(data) {
        envelope_round_trip(&e);
    }
}

fn split(data: &[u8]) {
    if let Ok(envelopes) = server::split_upload(data) {
        assert!(!envelopes.is_empty(), "an upload split into nothing");
        for e in &envelopes {
            envelope_round_trip(e);
        }
    }
}

fn pointer(data: &[u8]) {
    let Ok(p) = AttachmentPointer::from_bytes(data) else {
        return;
    };
    let bytes = p.to_bytes();
    let again = AttachmentPointer::from_bytes(&bytes).expect("a pointer's encoding parses");
    assert!(*again.to_bytes() == *bytes, "AttachmentPointer round trip");
    let rebuilt = AttachmentPointer::new(
        p.key(),
        *p.digest(),
        p.size(),
        p.chunk_size(),
        p.content_type(),
    )
    .expect("a parsed pointer's fields are valid");
    assert!(
        *rebuilt.to_bytes() == *bytes,
        "AttachmentPointer::new differs"
    );
    assert!(p.chunk_count() >= 1, "no chunks");
}

fn scannable(data: &[u8]) {
    for number in &fixture().numbers {
        let _ = number.compare_scanned(data);
    }
}

/// The `decode_wire` target.
pub fn run(data: &[u8]) {
    let _ = padding::unpad(data);
    let _ = content::parse(data);
    let Some(format) = WireFormat::of(data) else {
        return;
    };
    match format {
        WireFormat::PreKeyMessage | WireFormat::RatchetMessage => message(data),
        WireFormat::Bundle => bundle(data),
        WireFormat::PreKeyUpload => {
            upload(data);
            crate::snapshots::check(data);
        }
        WireFormat::SessionSnapshot
        | WireFormat::PreKeysSnapshot
        | WireFormat::SessionBookSnapshot
        | WireFormat::GroupSessionSnapshot
        | WireFormat::KnownAccountsSnapshot => crate::snapshots::check(data),
        WireFormat::DeviceList => device_list(data),
        WireFormat::LinkRequest => link_request(data),
        WireFormat::GroupMessage => group_message(data),
        WireFormat::SenderKeyDistribution => distribution(data),
        WireFormat::Envelope => envelope(data),
        WireFormat::SealedUpload | WireFormat::FanOutUpload => split(data),
        WireFormat::ServerCertificate | WireFormat::SenderCertificate => {
            crate::certificates::run(data);
        }
        WireFormat::AttachmentPointer => pointer(data),
        WireFormat::ScannableSafetyNumber => scannable(data),
        _ => {}
    }
}

/// Seeds beyond the test vectors' encodings: what the other fixtures make (messages, a
/// bundle, an upload, a fan-out upload, snapshots).
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let p = crate::pairwise::fixture();
    let mut out = vec![
        ("bundle".to_string(), p.bundle.clone()),
        ("upload".to_string(), p.upload.clone()),
    ];
    for (i, m) in p.to_bob.iter().chain(&p.from_carol).enumerate() {
        out.push((format!("message-{i}"), m.wire.clone()));
    }
    for (i, e) in crate::interaction::sample_uploads().into_iter().enumerate() {
        out.push((format!("interaction-{i}"), e));
    }
    out.extend(crate::snapshots::seeds());
    out
}
