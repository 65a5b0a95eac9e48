//! The untrusted relay and key server, built on `confidant::server`'s helpers.
//!
//! It holds only public keys, signed device lists, certificates it issued and ciphertext:
//! * a key directory: one [`DeviceKeys`] record per device (prekey uploads validated, each
//!   one-time prekey, EC and KEM, handed out at most once, low-stock signal);
//! * signed device lists per account (verified with the account key pinned at first publish,
//!   versions only ever increase) and an account directory (account id → account key);
//! * sender certificates ([`server::issue_sender_certificate`]), only for listed devices;
//! * per-device offline queues of envelope bytes ([`Envelope::to_bytes`]), fed by
//!   [`server::split_upload`], kept until the device acknowledges them;
//! * an attachment blob store taking whole encrypted chunks at chunk boundaries, so an
//!   interrupted upload resumes where it stopped.
//!
//! It knows devices only as (account key, device id). It logs [`Note`]s for the transcript:
//! recipient, envelope kind, size.

use std::collections::{BTreeMap, BTreeSet};

use confidant::book::Address;
use confidant::certificate::ServerCertificate;
use confidant::device::VerifiedDeviceList;
use confidant::envelope::{Envelope, EnvelopeKind};
use confidant::server::{self, DeviceKeys};
use confidant::{IdentityKey, IdentityKeyPair, Timestamp};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::Rng;

/// One queued envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stored {
    /// Queue id, for acknowledgement.
    pub(crate) id: u64,
    /// `Envelope::to_bytes()`.
    pub(crate) bytes: Vec<u8>,
}

/// Something the relay did, for the transcript (the relay's whole view: no plaintext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    /// An envelope was queued for `to`.
    Queued {
        /// Recipient device.
        to: Address,
        /// What the relay can see of it.
        kind: EnvelopeKind,
        /// Envelope size.
        size: usize,
        /// The sender, for unsealed kinds.
        from: Option<Address>,
    },
    /// An envelope for a device that is not listed was dropped.
    Dropped {
        /// The unlisted device.
        to: Address,
    },
    /// Envelopes handed to a device.
    Delivered {
        /// The device.
        to: Address,
        /// How many envelopes (duplicates included).
        count: usize,
        /// Total bytes.
        bytes: usize,
        /// Extra copies handed out.
        duplicates: usize,
        /// Whether they were handed out in a shuffled order.
        shuffled: bool,
    },
    /// A prekey upload was stored.
    Keys {
        /// The device.
        device: Address,
        /// Upload size.
        bytes: usize,
    },
    /// A prekey bundle was handed out.
    Bundle {
        /// Whose bundle.
        device: Address,
        /// Bundle size.
        bytes: usize,
        /// One-time EC prekeys left.
        left: usize,
        /// One-time KEM prekeys left.
        left_kem: usize,
    },
    /// A signed device list was stored.
    List {
        /// The account.
        account: IdentityKey,
        /// Its version.
        version: u64,
        /// Devices listed.
        devices: usize,
        /// Size.
        bytes: usize,
    },
    /// Something was refused.
    Refused {
        /// What and why.
        what: String,
    },
    /// A sender certificate was issued.
    Certificate {
        /// For whom.
        device: Address,
        /// Size.
        bytes: usize,
    },
    /// Attachment bytes were stored.
    Blob {
        /// Blob id.
        blob: u64,
        /// Chunks accepted in this call.
        chunks: u64,
        /// Bytes stored so far.
        stored: u64,
        /// Expected total.
        total: u64,
    },
    /// Attachment bytes were served.
    Download {
        /// Blob id.
        blob: u64,
        /// Bytes served.
        bytes: u64,
    },
    /// The relay misbehaved on purpose (to show that clients resist it).
    Attack {
        /// What it did.
        what: String,
    },
}

/// An attachment blob being uploaded or complete.
struct Blob {
    /// Ciphertext bytes of one whole chunk (`chunk_size + 16`).
    chunk_len: u64,
    total: u64,
    data: Vec<u8>,
}

/// Counters for the summary table.
#[derive(Debug, Default, Clone)]
pub(crate) struct RelayStats {
    /// Envelopes queued, per kind.
    pub(crate) queued: BTreeMap<&'static str, (usize, usize)>,
    /// Envelopes handed out (duplicates included).
    pub(crate) delivered: usize,
    /// Prekey uploads and their bytes.
    pub(crate) key_uploads: (usize, usize),
    /// Bundles handed out.
    pub(crate) bundles: usize,
    /// Device lists stored.
    pub(crate) lists: usize,
    /// Certificates issued.
    pub(crate) certificates: usize,
    /// Requests refused.
    pub(crate) refused: usize,
}

/// The relay and key server.
pub(crate) struct Relay {
    server_key: IdentityKeyPair,
    server_certificate: Vec<u8>,
    keys: BTreeMap<Address, DeviceKeys>,
    low_stock: BTreeSet<Address>,
    directory: BTreeMap<Vec<u8>, IdentityKey>,
    lists: BTreeMap<IdentityKey, (Vec<u8>, VerifiedDeviceList)>,
    queues: BTreeMap<Address, Vec<Stored>>,
    next_id: u64,
    blobs: BTreeMap<u64, Blob>,
    /// Every envelope ever queued, with its recipient (kept for the audit and the replay
    /// attacks; a real relay deletes delivered envelopes).
    history: Vec<(Address, Vec<u8>)>,
    /// Everything else ever received or issued: uploads, lists, certificates.
    received: Vec<Vec<u8>>,
    notes: Vec<Note>,
    stats: RelayStats,
}

/// The relay's name for an envelope kind.
pub(crate) fn kind_name(kind: EnvelopeKind) -> &'static str {
    match kind {
        EnvelopeKind::PreKey => "prekey",
        EnvelopeKind::Ratchet => "ratchet",
        EnvelopeKind::FanOut => "fan-out",
        EnvelopeKind::Group => "group",
        EnvelopeKind::Sealed => "sealed",
        _ => "other",
    }
}

impl Relay {
    /// A relay with a fresh server key certified by a fresh trust root; returns the root's
    /// public key, which clients pin (shipped with the app).
    pub(crate) fn new(rng: &mut ChaCha20Rng) -> (Self, IdentityKey) {
        // The root stays offline with the operator; only the certificate is kept here.
        let root = IdentityKeyPair::generate(rng);
        let server_key = IdentityKeyPair::generate(rng);
        let server_certificate = ServerCertificate::issue(&root, 1, &server_key.public());
        let relay = Self {
            server_key,
            server_certificate,
            keys: BTreeMap::new(),
            low_stock: BTreeSet::new(),
            directory: BTreeMap::new(),
            lists: BTreeMap::new(),
            queues: BTreeMap::new(),
            next_id: 1,
            blobs: BTreeMap::new(),
            history: Vec::new(),
            received: Vec::new(),
            notes: Vec::new(),
            stats: RelayStats::default(),
        };
        (relay, root.public())
    }

    /// Takes the notes logged since the last call.
    pub(crate) fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    fn refuse(&mut self, what: String) -> String {
        self.stats.refused += 1;
        self.notes.push(Note::Refused { what: what.clone() });
        what
    }

    // ---- key directory -------------------------------------------------------------------

    /// Stores a device's prekey upload (registration or a later top-up). The transport is
    /// assumed to have authenticated `device`.
    pub(crate) fn upload_keys(&mut self, device: Address, upload: &[u8]) -> Result<(), String> {
        let result = match self.keys.get_mut(&device) {
            Some(record) => record.apply_upload(upload),
            None => DeviceKeys::register(upload).map(|record| {
                self.keys.insert(device, record);
            }),
        };
        if let Err(e) = result {
            return Err(self.refuse(format!("prekey upload: {e}")));
        }
        self.low_stock.remove(&device);
        self.received.push(upload.to_vec());
        self.stats.key_uploads.0 += 1;
        self.stats.key_uploads.1 += upload.len();
        self.notes.push(Note::Keys {
            device,
            bytes: upload.len(),
        });
        Ok(())
    }

    /// Hands out one bundle of `device` (consuming a one-time EC and KEM prekey if any).
    pub(crate) fn fetch_bundle(&mut self, device: &Address) -> Option<Vec<u8>> {
        let listed = self
            .lists
            .get(&device.account)
            .is_some_and(|(_, l)| l.device_key(device.device).is_some());
        if !listed {
            self.refuse(format!("bundle for unlisted device {}", short(device)));
            return None;
        }
        let fetched = self.keys.get_mut(device)?.fetch_bundle();
        if fetched.low_stock {
            self.low_stock.insert(*device);
        }
        let bytes = fetched.bundle.to_bytes();
        self.stats.bundles += 1;
        self.notes.push(Note::Bundle {
            device: *device,
            bytes: bytes.len(),
            left: fetched.remaining_one_time_prekeys,
            left_kem: fetched.remaining_one_time_kem_prekeys,
        });
        Some(bytes)
    }

    /// Whether the device was told its one-time prekey stock is low.
    pub(crate) fn low_stock(&self, device: &Address) -> bool {
        self.low_stock.contains(device)
    }

    // ---- accounts and device lists -------------------------------------------------------

    /// Stores a signed device list of `account`. The first list pins the account key and its
    /// account id in the directory; later ones must verify under it with a higher version.
    pub(crate) fn publish_list(
        &mut self,
        account: &IdentityKey,
        bytes: &[u8],
    ) -> Result<(), String> {
        let previous = self.lists.get(account).map(|(_, l)| l);
        let list = match VerifiedDeviceList::verify(bytes, account, previous) {
            Ok(list) => list,
            Err(e) => return Err(self.refuse(format!("device list of {}: {e}", hex6(account)))),
        };
        match self.directory.get(list.account_id()) {
            Some(pinned) if pinned != account => {
                return Err(self.refuse("account id already taken".to_string()));
            }
            _ => {
                self.directory.insert(list.account_id().to_vec(), *account);
            }
        }
        // Devices no longer listed lose their prekeys and their queue.
        let gone: Vec<Address> = self
            .keys
            .keys()
            .filter(|a| a.account == *account && list.device_key(a.device).is_none())
            .copied()
            .collect();
        for address in gone {
            self.keys.remove(&address);
            self.queues.remove(&address);
        }
        self.notes.push(Note::List {
            account: *account,
            version: list.version(),
            devices: list.entries().len(),
            bytes: bytes.len(),
        });
        self.stats.lists += 1;
        self.received.push(bytes.to_vec());
        self.lists.insert(*account, (bytes.to_vec(), list));
        Ok(())
    }

    /// The account key registered for an account id (trust on first use by clients).
    pub(crate) fn lookup(&self, account_id: &[u8]) -> Option<IdentityKey> {
        self.directory.get(account_id).copied()
    }

    /// The latest signed device list of an account.
    pub(crate) fn device_list(&self, account: &IdentityKey) -> Option<Vec<u8>> {
        self.lists.get(account).map(|(b, _)| b.clone())
    }

    /// Issues a sender certificate for `device`, valid until `expires`, if the account's
    /// current list has it.
    pub(crate) fn sender_certificate(
        &mut self,
        device: &Address,
        expires: Timestamp,
    ) -> Option<Vec<u8>> {
        let issued = self.lists.get(&device.account).and_then(|(_, list)| {
            server::issue_sender_certificate(
                &self.server_key,
                &self.server_certificate,
                list,
                device.device,
                expires,
            )
        });
        match issued {
            Some(certificate) => {
                self.stats.certificates += 1;
                self.notes.push(Note::Certificate {
                    device: *device,
                    bytes: certificate.len(),
                });
                self.received.push(certificate.clone());
                Some(certificate)
            }
            None => {
                self.refuse(format!("certificate for unlisted device {}", short(device)));
                None
            }
        }
    }

    // ---- messages ------------------------------------------------------------------------

    /// Accepts a multi-recipient upload (sealed `0x72`, or fan-out `0x73` whose sender must be
    /// the authenticated device) and queues one envelope per listed recipient device. Returns
    /// the queued envelopes with their recipients.
    pub(crate) fn submit(
        &mut self,
        authenticated: Option<Address>,
        upload: &[u8],
    ) -> Result<Vec<(Address, Vec<u8>)>, String> {
        let envelopes = match server::split_upload(upload) {
            Ok(e) => e,
            Err(e) => return Err(self.refuse(format!("upload: {e}"))),
        };
        if let Some(sender) = envelopes.first().and_then(Envelope::sender)
            && Some(sender) != authenticated
        {
            return Err(self.refuse("fan-out upload from another device".to_string()));
        }
        self.received.push(upload.to_vec());
        let mut queued = Vec::new();
        for envelope in envelopes {
            let to = envelope.recipient;
            let listed = self
                .lists
                .get(&to.account)
                .is_some_and(|(_, l)| l.device_key(to.device).is_some());
            if !listed {
                self.stats.refused += 1;
                self.notes.push(Note::Dropped { to });
                continue;
            }
            let bytes = envelope.to_bytes();
            self.enqueue(to, envelope.kind(), envelope.sender(), bytes.clone());
            queued.push((to, bytes));
        }
        Ok(queued)
    }

    fn enqueue(&mut self, to: Address, kind: EnvelopeKind, from: Option<Address>, bytes: Vec<u8>) {
        let entry = self.stats.queued.entry(kind_name(kind)).or_default();
        entry.0 += 1;
        entry.1 += bytes.len();
        self.notes.push(Note::Queued {
            to,
            kind,
            size: bytes.len(),
            from,
        });
        self.history.push((to, bytes.clone()));
        let id = self.next_id;
        self.next_id += 1;
        self.queues
            .entry(to)
            .or_default()
            .push(Stored { id, bytes });
    }

    /// Everything queued for `device`, in order. Entries stay until acknowledged.
    pub(crate) fn fetch(&mut self, device: &Address) -> Vec<Stored> {
        let batch = self.queues.get(device).cloned().unwrap_or_default();
        if !batch.is_empty() {
            self.note_delivery(device, &batch, 0, false);
        }
        batch
    }

    /// As [`Relay::fetch`], but shuffled and with `duplicates` extra copies of random entries:
    /// what a flaky network and a retrying relay produce.
    pub(crate) fn fetch_shuffled(
        &mut self,
        device: &Address,
        rng: &mut ChaCha20Rng,
        duplicates: usize,
    ) -> Vec<Stored> {
        let mut batch = self.queues.get(device).cloned().unwrap_or_default();
        if batch.is_empty() {
            return batch;
        }
        for _ in 0..duplicates {
            let i = pick(rng, batch.len());
            if let Some(copy) = batch.get(i).cloned() {
                batch.push(copy);
            }
        }
        shuffle(rng, &mut batch);
        self.note_delivery(device, &batch, duplicates, true);
        batch
    }

    fn note_delivery(
        &mut self,
        device: &Address,
        batch: &[Stored],
        duplicates: usize,
        shuffled: bool,
    ) {
        self.stats.delivered += batch.len();
        self.notes.push(Note::Delivered {
            to: *device,
            count: batch.len(),
            bytes: batch.iter().map(|s| s.bytes.len()).sum(),
            duplicates,
            shuffled,
        });
    }

    /// Deletes acknowledged entries.
    pub(crate) fn ack(&mut self, device: &Address, ids: &BTreeSet<u64>) {
        if let Some(queue) = self.queues.get_mut(device) {
            queue.retain(|s| !ids.contains(&s.id));
        }
    }

    /// Entries waiting for `device`.
    pub(crate) fn pending(&self, device: &Address) -> usize {
        self.queues.get(device).map_or(0, Vec::len)
    }

    /// Attack: copies the last `count` envelopes ever queued for `from` into the queue of
    /// `to`, with the recipient field rewritten (the outer routing data is the relay's to
    /// forge). Returns how many were copied.
    pub(crate) fn redirect_recent(&mut self, from: &Address, to: Address, count: usize) -> usize {
        let recent: Vec<Vec<u8>> = self
            .history
            .iter()
            .rev()
            .filter(|(r, _)| r == from)
            .take(count)
            .map(|(_, b)| b.clone())
            .collect();
        let mut copied = 0;
        for bytes in recent.into_iter().rev() {
            let Ok(mut envelope) = Envelope::from_bytes(&bytes) else {
                continue;
            };
            envelope.recipient = to;
            let id = self.next_id;
            self.next_id += 1;
            let bytes = envelope.to_bytes();
            self.history.push((to, bytes.clone()));
            self.queues
                .entry(to)
                .or_default()
                .push(Stored { id, bytes });
            copied += 1;
        }
        self.notes.push(Note::Attack {
            what: format!(
                "copies {copied} envelopes of {} into the queue of {}",
                short(from),
                short(&to)
            ),
        });
        copied
    }

    // ---- attachments ---------------------------------------------------------------------

    /// Starts an attachment upload of `total` ciphertext bytes in chunks of `chunk_len`
    /// (ciphertext, tag included). Returns the blob id.
    pub(crate) fn create_blob(&mut self, rng: &mut ChaCha20Rng, total: u64, chunk_len: u64) -> u64 {
        let id = rng.next_u64() >> 16;
        self.blobs.insert(
            id,
            Blob {
                chunk_len,
                total,
                data: Vec::new(),
            },
        );
        id
    }

    /// Bytes stored so far (where to resume).
    pub(crate) fn blob_offset(&self, blob: u64) -> Option<u64> {
        self.blobs.get(&blob).map(|b| b.data.len() as u64)
    }

    /// Appends whole chunks at `offset`, which must be the current end and a chunk boundary;
    /// only the last chunk may be short.
    pub(crate) fn upload_chunks(
        &mut self,
        blob: u64,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), String> {
        let Some(b) = self.blobs.get_mut(&blob) else {
            return Err(self.refuse(format!("unknown blob {blob:x}")));
        };
        let len = bytes.len() as u64;
        let end = offset.saturating_add(len);
        let whole = len.is_multiple_of(b.chunk_len) || end == b.total;
        if offset != b.data.len() as u64
            || !offset.is_multiple_of(b.chunk_len)
            || !whole
            || end > b.total
        {
            let what = format!("chunk upload at {offset} (stored {})", b.data.len());
            return Err(self.refuse(what));
        }
        b.data.extend_from_slice(bytes);
        let (stored, total) = (b.data.len() as u64, b.total);
        self.notes.push(Note::Blob {
            blob,
            chunks: len.div_ceil(b.chunk_len),
            stored,
            total,
        });
        Ok(())
    }

    /// Serves `len` bytes of a complete blob from `offset` (a range request).
    pub(crate) fn download(&mut self, blob: u64, offset: u64, len: u64) -> Option<Vec<u8>> {
        let b = self.blobs.get(&blob)?;
        if (b.data.len() as u64) < b.total {
            return None;
        }
        let start = usize::try_from(offset).ok()?;
        let end = usize::try_from(offset.saturating_add(len).min(b.total)).ok()?;
        let out = b.data.get(start..end)?.to_vec();
        self.notes.push(Note::Download {
            blob,
            bytes: out.len() as u64,
        });
        Some(out)
    }

    /// A complete blob (for the audit).
    pub(crate) fn blob(&self, blob: u64) -> Option<&[u8]> {
        self.blobs.get(&blob).map(|b| b.data.as_slice())
    }

    // ---- audit ---------------------------------------------------------------------------

    /// Every envelope ever queued, with its recipient.
    pub(crate) fn history(&self) -> &[(Address, Vec<u8>)] {
        &self.history
    }

    /// Everything the relay stored or received: envelopes (queued and delivered), uploads,
    /// device lists, certificates, prekey records and attachment blobs.
    pub(crate) fn all_bytes(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self.history.iter().map(|(_, b)| b.clone()).collect();
        out.extend(self.received.iter().cloned());
        out.extend(self.keys.values().map(DeviceKeys::to_bytes));
        out.extend(self.lists.values().map(|(b, _)| b.clone()));
        out.extend(self.blobs.values().map(|b| b.data.clone()));
        out.push(self.server_certificate.clone());
        out
    }

    /// Counters for the summary.
    pub(crate) fn stats(&self) -> RelayStats {
        self.stats.clone()
    }

    /// Envelopes currently held in all queues, and their bytes.
    pub(crate) fn held(&self) -> (usize, usize) {
        self.queues
            .values()
            .flatten()
            .fold((0, 0), |(n, b), s| (n + 1, b + s.bytes.len()))
    }
}

/// `0..n` from the RNG (n > 0; the modulo bias is irrelevant for a demo).
pub(crate) fn pick(rng: &mut ChaCha20Rng, n: usize) -> usize {
    usize::try_from(rng.next_u64() % (n.max(1) as u64)).unwrap_or(0)
}

/// Fisher–Yates.
pub(crate) fn shuffle<T>(rng: &mut ChaCha20Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        let j = pick(rng, i + 1);
        items.swap(i, j);
    }
}

/// The first 3 bytes of a key in hex: how the relay names an account.
pub(crate) fn hex6(key: &IdentityKey) -> String {
    hex::encode(key.to_bytes().get(..3).unwrap_or_default())
}

/// `account/device` as the relay sees it.
pub(crate) fn short(address: &Address) -> String {
    format!("{}/{}", hex6(&address.account), address.device)
}
