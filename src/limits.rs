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
/// Largest encoded prekey upload accepted by the decoder.
pub const MAX_UPLOAD_BYTES: usize = 64 * 1024;
/// Most one-time prekeys in one upload.
pub const MAX_UPLOAD_ONE_TIME_PREKEYS: usize = 200;
/// Most one-time prekeys a key server stocks per device.
pub const MAX_SERVER_ONE_TIME_PREKEYS: usize = 1000;
/// A key server reports low stock when fewer one-time prekeys than this remain.
pub const LOW_ONE_TIME_PREKEY_STOCK: usize = 20;
/// Most one-time prekey secrets a device holds.
pub const MAX_ONE_TIME_PREKEYS: usize = 2000;
/// Most signed prekeys a device holds (the current one plus retired ones in their grace period).
pub const MAX_SIGNED_PREKEYS: usize = 16;
/// Most base keys remembered per signed prekey to reject replayed initial messages that used no
/// one-time prekey. Never forgotten while the signed prekey is held; when full, such messages are
/// refused until the signed prekey is rotated (PROTOCOL.md §6.3). With [`MAX_SIGNED_PREKEYS`] this
/// bounds the record at 32 000 entries.
pub const MAX_ACCEPTED_BASE_KEYS: usize = 2000;
/// Default grace period for a replaced signed prekey: 30 days in milliseconds.
pub const SIGNED_PREKEY_GRACE_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Longest associated-data appendix a session snapshot may carry (PROTOCOL.md §4.3).
pub const MAX_AD_APPENDIX: usize = 1024;
/// Shortest ciphertext a ratchet message may carry: the 16-byte AES-GCM tag.
pub const MIN_CIPHERTEXT: usize = 16;
/// Largest snapshot accepted by a `restore`.
pub const MAX_SNAPSHOT_BYTES: usize = 2 * 1024 * 1024;
