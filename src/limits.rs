//! Every resource limit of the crate (PROTOCOL.md §9). Untrusted input is checked against these
//! before any work proportional to it is done.

/// `MAX_SKIP`: the most message keys one received message may make us skip in one chain
/// (PROFILE §2, PROTOCOL.md §5.4).
pub const MAX_SKIP: u32 = 1000;
/// `MAX_STORED_SKIPPED`: skipped message keys kept per session across all chains; the oldest
/// inserted is evicted first (PROTOCOL.md §5.4).
pub const MAX_STORED_SKIPPED: usize = 2000;
/// Largest plaintext a pairwise message carries (256 KiB). Larger content goes in an attachment.
pub const MAX_PLAINTEXT: usize = 256 * 1024;
/// Largest encoded pairwise message accepted by the decoder: the plaintext limit plus room for
/// the header, tag, initial-message fields and a post-quantum KEM ciphertext.
pub const MAX_MESSAGE_BYTES: usize = MAX_PLAINTEXT + 4096;
/// Largest encoded prekey bundle accepted by the decoder.
pub const MAX_BUNDLE_BYTES: usize = 4096;
/// Largest encoded prekey upload accepted by the decoder (room for a full batch of one-time
/// KEM prekeys, 1.6 KiB each).
pub const MAX_UPLOAD_BYTES: usize = 256 * 1024;
/// Largest stored key-server record ([`DeviceKeys::to_bytes`](crate::server::DeviceKeys::to_bytes)).
pub const MAX_DEVICE_RECORD_BYTES: usize = 512 * 1024;
/// Most one-time KEM prekeys in one upload.
pub const MAX_UPLOAD_ONE_TIME_KEM_PREKEYS: usize = 100;
/// Most one-time KEM prekeys a key server stocks per device.
pub const MAX_SERVER_ONE_TIME_KEM_PREKEYS: usize = 200;
/// Most one-time prekeys in one upload.
pub const MAX_UPLOAD_ONE_TIME_PREKEYS: usize = 200;
/// Most one-time prekeys a key server stocks per device.
pub const MAX_SERVER_ONE_TIME_PREKEYS: usize = 1000;
/// A key server reports low stock when fewer one-time prekeys than this remain.
pub const LOW_ONE_TIME_PREKEY_STOCK: usize = 20;
/// Most one-time prekey secrets a device holds.
pub const MAX_ONE_TIME_PREKEYS: usize = 2000;
/// Most one-time KEM prekey secrets (64-byte seeds) a device holds.
pub const MAX_ONE_TIME_KEM_PREKEYS: usize = 500;
/// Most last-resort KEM prekeys a device holds (the current one plus retired ones).
pub const MAX_LAST_RESORT_KEM_PREKEYS: usize = 16;
/// Most signed prekeys a device holds (the current one plus retired ones in their grace period).
pub const MAX_SIGNED_PREKEYS: usize = 16;
/// Most entries of one replay record: per signed prekey (X3DH accepts without a one-time
/// prekey) and per last-resort KEM prekey (PQXDH accepts with it). Never forgotten while the key
/// is held; when full, such messages are refused until the key is rotated (PROTOCOL.md §6.3,
/// §13.5). With [`MAX_SIGNED_PREKEYS`] and [`MAX_LAST_RESORT_KEM_PREKEYS`] this bounds the records
/// at 64 000 entries.
pub const MAX_ACCEPTED_BASE_KEYS: usize = 2000;
/// Default grace period for a replaced signed prekey: 30 days in milliseconds.
pub const SIGNED_PREKEY_GRACE_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Longest associated-data appendix a session snapshot may carry (PROTOCOL.md §4.3).
pub const MAX_AD_APPENDIX: usize = 1024;
/// Shortest ciphertext a ratchet message may carry: the 16-byte AES-GCM tag.
pub const MIN_CIPHERTEXT: usize = 16;
/// Largest snapshot accepted by a `restore`: room for a `PreKeys` snapshot with every replay
/// record full (32 keys × `MAX_ACCEPTED_BASE_KEYS` entries, about 2.9 MB).
pub const MAX_SNAPSHOT_BYTES: usize = 4 * 1024 * 1024;
/// Most devices in one account's device list (PROTOCOL.md §14).
pub const MAX_DEVICES_PER_ACCOUNT: usize = 16;
/// Longest account id in a device list.
pub const MAX_ACCOUNT_ID_BYTES: usize = 256;
/// Largest encoded signed device list (and link request) accepted by the decoder.
pub const MAX_DEVICE_LIST_BYTES: usize = 16 * 1024;
/// Earlier sessions kept per remote device (libsignal keeps 40; PROTOCOL.md §15).
pub const MAX_ARCHIVED_SESSIONS: usize = 40;
/// Most remote devices in one session book snapshot.
pub const MAX_BOOK_DEVICES: usize = 10_000;
/// Largest session book snapshot accepted by `SessionBook::restore` (64 MiB).
pub const MAX_SESSION_BOOK_BYTES: usize = 64 * 1024 * 1024;
/// Most member devices of one group, this device included (PROTOCOL.md §17).
pub const MAX_GROUP_DEVICES: usize = 2048;
/// Sender keys kept per sender device in a group: the current one and up to four earlier ones,
/// so messages in flight across a rotation still decrypt (libsignal keeps 5; PROTOCOL.md §17.5).
pub const MAX_SENDER_KEY_STATES: usize = 5;
/// Retired sender keys remembered per sender device, so a key that left the
/// [`MAX_SENDER_KEY_STATES`] window is never installed again (PROTOCOL.md §17.4).
pub const MAX_RETIRED_SENDER_KEYS: usize = 32;
/// Sender records a group session keeps: current members' and former members' (whose retired
/// keys are remembered so they can never be installed again; beyond this, former members'
/// records are forgotten, lowest address first).
pub const MAX_SENDER_RECORDS: usize = 2 * MAX_GROUP_DEVICES;
/// Largest group message accepted by the decoder: the padded [`MAX_PLAINTEXT`] plus the header,
/// tag and signature.
pub const MAX_GROUP_MESSAGE_BYTES: usize = crate::padding::MAX_PADDED_LEN + 1024;
/// Largest fan-out body accepted: the padded [`MAX_PLAINTEXT`], the leading byte and the tag.
pub const MAX_FANOUT_BODY_BYTES: usize = crate::padding::MAX_PADDED_LEN + 64;
/// Largest sender-key distribution message accepted by the decoder.
pub const MAX_DISTRIBUTION_BYTES: usize = 256;
/// Largest group session snapshot accepted by `GroupSession::restore`: room for
/// [`MAX_GROUP_DEVICES`] senders each with [`MAX_SENDER_KEY_STATES`] keys and
/// [`MAX_STORED_SKIPPED`] skipped keys of 40 bytes (PROTOCOL.md §17.7). A group without
/// skipped keys needs about 120 bytes per member device.
pub const MAX_GROUP_SNAPSHOT_BYTES: usize = 192 * 1024 * 1024;
/// Largest sealed content (PROTOCOL.md §19.3): a sender certificate and the largest inner
/// message (a group message), before padding.
pub const MAX_SEALED_CONTENT_BYTES: usize = MAX_GROUP_MESSAGE_BYTES + 1024;
/// Largest sealed body: the padded sealed content and its tag.
pub const MAX_SEALED_BODY_BYTES: usize = crate::padding::padded_len(MAX_SEALED_CONTENT_BYTES) + 16;
/// Largest sealed per-recipient entry: a pairwise message and its tag.
pub const MAX_SEALED_ENTRY_BYTES: usize = MAX_MESSAGE_BYTES + 16;
/// Largest envelope accepted by `Envelope::from_bytes` (PROTOCOL.md §19.1).
pub const MAX_ENVELOPE_BYTES: usize = MAX_SEALED_BODY_BYTES + MAX_SEALED_ENTRY_BYTES + 1024;
/// Most recipient devices in one multi-recipient upload (PROTOCOL.md §19.4).
pub const MAX_UPLOAD_RECIPIENTS: usize = MAX_GROUP_DEVICES;
/// Largest multi-recipient upload accepted by the server helpers: a body and, per recipient, a
/// header, routing data and a fan-out key entry (up to an initial message's size).
pub const MAX_SEALED_UPLOAD_BYTES: usize = 64 * 1024 * 1024;
/// Most bytes of bodies `server::split_upload` copies out of one upload (recipients × body
/// length): 64 MiB, e.g. a 64 KiB sealed body to 1000 devices. Larger sends must be stored with
/// the body once.
pub const MAX_SPLIT_BYTES: usize = 64 * 1024 * 1024;
