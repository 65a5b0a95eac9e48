//! Encrypted attachments (PROTOCOL.md §20): a file of any size encrypted in chunks under a fresh
//! key, streamed with bounded memory, resumable at a chunk boundary and decryptable by range.
//!
//! The sender draws a fresh 32-byte attachment key `K` per file, encrypts the file with
//! [`AttachmentEncryptor`] and uploads the ciphertext anywhere (the ciphertext has no header).
//! [`AttachmentEncryptor::finish`] returns an [`AttachmentPointer`] — `K`, the SHA-256 of the
//! ciphertext, the plaintext size, the chunk size and a content type — which travels, encoded
//! with [`AttachmentPointer::to_bytes`], inside an end-to-end encrypted message. The recipient
//! downloads the ciphertext and decrypts it with [`AttachmentDecryptor`], or decrypts a byte range
//! with [`chunk_range`] and [`decrypt_range`] / [`decrypt_chunk`].
//!
//! Each chunk is AES-256-GCM under a key derived from `K`, with a nonce that binds the chunk
//! index and a final-chunk flag (the STREAM construction of Hoang, Reyhanitabar, Rogaway and
//! Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015),
//! so truncation, reordering, duplication, chunk swaps between files and bit flips are all
//! rejected (PROTOCOL.md §20.8).
//!
//! ```
//! use confidant::attachment::{AttachmentDecryptor, AttachmentEncryptor, AttachmentPointer};
//! # use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng};
//! # let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let file = vec![0x42u8; 200_000];
//!
//! // Sender: encrypt in pieces of any size; upload `ciphertext` as it is produced.
//! let mut enc = AttachmentEncryptor::new(&mut rng, 64 * 1024, "image/png")?;
//! let mut ciphertext = Vec::new();
//! for piece in file.chunks(50_000) {
//!     enc.update(piece, &mut ciphertext)?;
//! }
//! let pointer = enc.finish(&mut ciphertext);
//! let message_body = pointer.to_bytes(); // send inside an end-to-end message
//!
//! // Recipient: decrypt in pieces of any size; the file is valid only if `finish` succeeds.
//! let pointer = AttachmentPointer::from_bytes(&message_body)?;
//! let mut dec = AttachmentDecryptor::new(&pointer);
//! let mut plaintext = Vec::new();
//! for piece in ciphertext.chunks(30_000) {
//!     dec.update(piece, &mut plaintext)?;
//! }
//! dec.finish()?;
//! assert_eq!(plaintext, file);
//! # Ok::<(), confidant::attachment::AttachmentError>(())
//! ```

use core::fmt;
use core::ops::Range;

use crate::error::DecodeError;
use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{Nonce, Tag};
use aes_gcm::{AeadInOut, Aes256Gcm, Key, KeyInit};
use hkdf::Hkdf;
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

// ---- Constants (PROTOCOL.md §20.1) -----------------------------------------------------------

/// The attachment profile (PROTOCOL.md §20.1); also the `profile` of the attachment test vectors
/// (PROTOCOL.md §20.11).
pub const ATTACHMENT_PROFILE_ID: &str = "confidant-attachment/v1";
/// `ATTACHMENT_INFO`, the HKDF label that expands `K` into the chunk key and nonce prefix
/// (PROTOCOL.md §20.2).
const ATTACHMENT_INFO: &[u8] = b"confidant/attachment/v1";
/// The all-zero 32-byte HKDF salt (PROTOCOL.md §20.2, as §4.2 and §5.3).
const ZERO_SALT: [u8; 32] = [0; 32];
/// Length of the attachment key `K` (PROTOCOL.md §20.2).
pub const KEY_LEN: usize = 32;
/// Length of the AES-256 chunk key (PROTOCOL.md §20.2).
const AES_KEY_LEN: usize = 32;
/// Length of the nonce prefix (PROTOCOL.md §20.2): nonce = prefix (7) || u32be(index) (4) ||
/// final flag (1).
const NONCE_PREFIX_LEN: usize = 7;
/// HKDF output length: the chunk key and the nonce prefix (PROTOCOL.md §20.2).
const OKM_LEN: usize = AES_KEY_LEN + NONCE_PREFIX_LEN;
/// Length of the ciphertext digest, SHA-256 (PROTOCOL.md §20.4).
pub const DIGEST_LEN: usize = 32;
/// Length of the AES-GCM tag that ends every ciphertext chunk (PROTOCOL.md §20.3).
pub const TAG_LEN: usize = 16;
/// Final-chunk flag of every chunk but the last (PROTOCOL.md §20.2).
const NOT_LAST: u8 = 0x00;
/// Final-chunk flag of the last chunk (PROTOCOL.md §20.2).
const LAST: u8 = 0x01;
/// Smallest chunk size, 1 KiB (PROTOCOL.md §20.3). Chunk sizes are powers of two.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// Largest chunk size, 16 MiB (PROTOCOL.md §20.3); also bounds the decryptor's buffer.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// The chunk size applications should use unless they have a reason not to: 64 KiB
/// (PROTOCOL.md §20.3).
pub const DEFAULT_CHUNK_SIZE: u32 = 64 * 1024;
/// Most chunks in one attachment, 2^32: chunk indices are u32 (PROTOCOL.md §20.3, §20.9).
pub const MAX_CHUNKS: u64 = 1 << 32;
/// Longest content type in a pointer, in bytes (PROTOCOL.md §20.4).
pub const MAX_CONTENT_TYPE_LEN: usize = 255;
/// Largest encoded pointer accepted by [`AttachmentPointer::from_bytes`] (PROTOCOL.md §20.4,
/// §20.9). A canonical pointer is at most 342 bytes.
pub const MAX_POINTER_BYTES: usize = 512;
/// Leading byte of an encoded attachment pointer, format version 1 (PROTOCOL.md §20.4, §8.1).
const POINTER_V1: u8 = 0x91;

// Nonce layout: 7 + 4 + 1 = 12 bytes, AES-GCM's 96-bit nonce.
const _: () = assert!(NONCE_PREFIX_LEN + 4 + 1 == 12);
// A chunk stays far below GCM's 2^36 − 32-byte limit, so sealing a chunk cannot fail.
const _: () = assert!((MAX_CHUNK_SIZE as u64) < (1 << 36) - 32);

// ---- Errors ----------------------------------------------------------------------------------

/// Why an attachment operation failed (PROTOCOL.md §20.10; what is detected: §20.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// The ciphertext does not match the pointer: a chunk's tag failed (bit flip, reordering,
    /// duplication, a chunk of another file, a wrong final flag), the ciphertext was truncated or
    /// had extra bytes, a chunk had the wrong length, or the digest did not match. One variant
    /// for every authentication failure: the file (or range) MUST be treated as invalid.
    #[error("attachment failed authentication")]
    Unauthenticated,
    /// An encoded pointer could not be decoded.
    #[error("malformed attachment pointer: {0}")]
    Malformed(#[from] DecodeError),
    /// The chunk size is not a power of two from [`MIN_CHUNK_SIZE`] to [`MAX_CHUNK_SIZE`].
    #[error("invalid chunk size {0}")]
    InvalidChunkSize(u32),
    /// The content type is longer than [`MAX_CONTENT_TYPE_LEN`] bytes.
    #[error("content type longer than {MAX_CONTENT_TYPE_LEN} bytes")]
    InvalidContentType,
    /// [`encrypt_chunk`]: the plaintext length does not fit the chunk's position (a non-final
    /// chunk is exactly the chunk size, a final chunk at most the chunk size and empty only at
    /// index 0).
    #[error("plaintext length does not fit the chunk position")]
    InvalidChunkLength,
    /// The attachment would have more than [`MAX_CHUNKS`] chunks.
    #[error("attachment too large (more than 2^32 chunks)")]
    TooLarge,
    /// The chunk index or byte range lies outside the attachment.
    #[error("chunk or byte range outside the attachment")]
    ChunkOutOfRange,
}

// ---- Sizes (PROTOCOL.md §20.3) ---------------------------------------------------------------

/// Whether `chunk_size` is allowed: a power of two from [`MIN_CHUNK_SIZE`] to
/// [`MAX_CHUNK_SIZE`] (PROTOCOL.md §20.3).
#[must_use]
pub const fn is_valid_chunk_size(chunk_size: u32) -> bool {
    chunk_size.is_power_of_two() && chunk_size >= MIN_CHUNK_SIZE && chunk_size <= MAX_CHUNK_SIZE
}

fn check_chunk_size(chunk_size: u32) -> Result<(), AttachmentError> {
    if is_valid_chunk_size(chunk_size) {
        Ok(())
    } else {
        Err(AttachmentError::InvalidChunkSize(chunk_size))
    }
}

/// The largest plaintext size for a (valid) chunk size: [`MAX_CHUNKS`] full chunks.
const fn max_size(chunk_size: u32) -> u64 {
    // At most 2^24 * 2^32 = 2^56: no overflow.
    (chunk_size as u64).saturating_mul(MAX_CHUNKS)
}

/// Number of chunks of a `size`-byte plaintext: `max(1, ceil(size / chunk_size))` — an empty
/// file is one empty final chunk (PROTOCOL.md §20.3).
///
/// # Errors
/// [`AttachmentError::InvalidChunkSize`]; [`AttachmentError::TooLarge`] above
/// [`MAX_CHUNKS`] chunks.
pub fn chunk_count(size: u64, chunk_size: u32) -> Result<u64, AttachmentError> {
    check_chunk_size(chunk_size)?;
    if size > max_size(chunk_size) {
        return Err(AttachmentError::TooLarge);
    }
    Ok(chunks_of(size, chunk_size))
}

/// `max(1, ceil(size / chunk_size))` for a valid chunk size.
fn chunks_of(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size).max(1)).max(1)
}

/// Ciphertext length of a `size`-byte plaintext: `size + 16 · chunk_count(size, chunk_size)`
/// (PROTOCOL.md §20.3). It depends on nothing else.
///
/// # Errors
/// As [`chunk_count`].
pub fn ciphertext_len(size: u64, chunk_size: u32) -> Result<u64, AttachmentError> {
    let chunks = chunk_count(size, chunk_size)?;
    // At most 2^56 + 2^36: no overflow.
    Ok(size.saturating_add(chunks.saturating_mul(TAG_LEN as u64)))
}

// ---- Keys and chunk AEAD (PROTOCOL.md §20.2) -------------------------------------------------

/// The AES-256-GCM chunk cipher and nonce prefix expanded from `K`.
struct ChunkCipher {
    cipher: Aes256Gcm,
    nonce_prefix: Zeroizing<[u8; NONCE_PREFIX_LEN]>,
}

impl ChunkCipher {
    /// `aes_key || nonce_prefix = HKDF-SHA-256(salt = 0^32, IKM = K, info = ATTACHMENT_INFO ||
    /// u32be(chunk_size), L = 39)` (PROTOCOL.md §20.2): binding the chunk size means one key
    /// resumed with another chunk size gets other keys, never a reused nonce.
    fn new(key: &[u8; KEY_LEN], chunk_size: u32) -> Self {
        let okm = derive(key, chunk_size);
        let mut aes_key = Zeroizing::new([0u8; AES_KEY_LEN]);
        let mut nonce_prefix = Zeroizing::new([0u8; NONCE_PREFIX_LEN]);
        if let Some((k, p)) = okm.split_first_chunk::<AES_KEY_LEN>() {
            aes_key.copy_from_slice(k);
            if let Ok(p) = <&[u8; NONCE_PREFIX_LEN]>::try_from(p) {
                nonce_prefix.copy_from_slice(p);
            }
        }
        let aes_key: &Key<Aes256Gcm> = (&*aes_key).into();
        Self {
            cipher: Aes256Gcm::new(aes_key),
            nonce_prefix,
        }
    }

    /// `nonce_prefix || u32be(index) || flag` (PROTOCOL.md §20.2).
    fn nonce(&self, index: u32, last: bool) -> Nonce<Aes256Gcm> {
        let mut nonce = [0u8; 12];
        let (prefix, rest) = nonce.split_at_mut(NONCE_PREFIX_LEN);
        prefix.copy_from_slice(&*self.nonce_prefix);
        let (counter, flag) = rest.split_at_mut(4);
        counter.copy_from_slice(&index.to_be_bytes());
        flag.fill(if last { LAST } else { NOT_LAST });
        Nonce::<Aes256Gcm>::from(nonce)
    }

    /// Appends `AES-256-GCM(aes_key, nonce(index, last), aad = "", plaintext) || tag` to `out`,
    /// encrypting straight from `plaintext` into `out` (one pass, no intermediate copy).
    fn seal_into(&self, index: u32, last: bool, plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start.saturating_add(plaintext.len()), 0);
        let nonce = self.nonce(index, last);
        let tag = out
            .get_mut(start..)
            .and_then(|dst| InOutBuf::new(plaintext, dst).ok())
            .and_then(|buf| self.cipher.encrypt_inout_detached(&nonce, &[], buf).ok());
        match tag {
            Some(tag) => out.extend_from_slice(&tag),
            None => {
                // Unreachable: chunks are at most MAX_CHUNK_SIZE, far below GCM's bound, and
                // the buffers have equal length. Should it happen, emit zeros and a zero tag —
                // a chunk that fails to open — and never plaintext.
                if let Some(dst) = out.get_mut(start..) {
                    dst.fill(0);
                }
                out.resize(start.saturating_add(plaintext.len() + TAG_LEN), 0);
            }
        }
    }

    /// Opens one chunk (`ct || tag`) and appends its plaintext to `out`; on failure `out` is
    /// unchanged (nothing is written before the tag verified).
    fn open_into(
        &self,
        index: u32,
        last: bool,
        chunk: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AttachmentError> {
        let ct_len = chunk
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(AttachmentError::Unauthenticated)?;
        let (ct, tag) = chunk
            .split_at_checked(ct_len)
            .ok_or(AttachmentError::Unauthenticated)?;
        let tag = Tag::<Aes256Gcm>::try_from(tag).map_err(|_| AttachmentError::Unauthenticated)?;
        let nonce = self.nonce(index, last);
        let start = out.len();
        out.resize(start.saturating_add(ct_len), 0);
        let opened = out
            .get_mut(start..)
            .and_then(|dst| InOutBuf::new(ct, dst).ok())
            .is_some_and(|buf| {
                self.cipher
                    .decrypt_inout_detached(&nonce, &[], buf, &tag)
                    .is_ok()
            });
        if opened {
            Ok(())
        } else {
            out.truncate(start);
            Err(AttachmentError::Unauthenticated)
        }
    }
}

/// HKDF-SHA-256(salt = 0^32, IKM = K, info = ATTACHMENT_INFO || u32be(chunk_size), L = 39).
fn derive(key: &[u8; KEY_LEN], chunk_size: u32) -> Zeroizing<[u8; OKM_LEN]> {
    let mut okm = Zeroizing::new([0u8; OKM_LEN]);
    let hk = Hkdf::<Sha256>::new(Some(&ZERO_SALT), key);
    // Cannot fail: 39 bytes is far below 255 * HashLen.
    if hk
        .expand_multi_info(&[ATTACHMENT_INFO, &chunk_size.to_be_bytes()], &mut *okm)
        .is_err()
    {
        okm.zeroize();
    }
    okm
}

// ---- Pointer (PROTOCOL.md §20.4) -------------------------------------------------------------

mod proto {
    //! The hand-written prost message of the pointer (PROTOCOL.md §20.4). Next tag: 6.

    use zeroize::Zeroize;

    /// `AttachmentPointerProto`; tags must match PROTOCOL.md §20.4.
    #[derive(PartialEq, prost::Message)]
    pub(super) struct AttachmentPointerProto {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub(super) digest: Vec<u8>,
        #[prost(uint64, tag = "3")]
        pub(super) size: u64,
        #[prost(uint32, tag = "4")]
        pub(super) chunk_size: u32,
        #[prost(string, tag = "5")]
        pub(super) content_type: String,
    }

    impl Drop for AttachmentPointerProto {
        fn drop(&mut self) {
            self.key.zeroize();
            self.content_type.zeroize();
        }
    }
}

use proto::AttachmentPointerProto;

/// Everything a recipient needs to fetch, check and decrypt one attachment (PROTOCOL.md §20.4):
/// the attachment key `K`, the SHA-256 of the ciphertext, the plaintext size, the chunk size and
/// a content type. It travels inside an end-to-end encrypted message
/// ([`to_bytes`](Self::to_bytes)); whoever holds it can decrypt the file.
///
/// Not `Clone`; `Debug` hides the key; wiped on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct AttachmentPointer {
    key: [u8; KEY_LEN],
    digest: [u8; DIGEST_LEN],
    size: u64,
    chunk_size: u32,
    content_type: String,
}

impl AttachmentPointer {
    /// A pointer from its fields, for applications that store them separately.
    ///
    /// # Errors
    /// [`AttachmentError::InvalidChunkSize`], [`AttachmentError::TooLarge`] (more than
    /// [`MAX_CHUNKS`] chunks), [`AttachmentError::InvalidContentType`].
    pub fn new(
        key: &[u8; KEY_LEN],
        digest: [u8; DIGEST_LEN],
        size: u64,
        chunk_size: u32,
        content_type: &str,
    ) -> Result<Self, AttachmentError> {
        chunk_count(size, chunk_size)?;
        if content_type.len() > MAX_CONTENT_TYPE_LEN {
            return Err(AttachmentError::InvalidContentType);
        }
        Ok(Self {
            key: *key,
            digest,
            size,
            chunk_size,
            content_type: content_type.to_owned(),
        })
    }

    /// The attachment key `K`.
    #[must_use]
    pub fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// SHA-256 of the whole ciphertext.
    #[must_use]
    pub fn digest(&self) -> &[u8; DIGEST_LEN] {
        &self.digest
    }

    /// Plaintext size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Chunk size in bytes (a valid one: [`is_valid_chunk_size`]).
    #[must_use]
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The content type (at most [`MAX_CONTENT_TYPE_LEN`] bytes, possibly empty). Chosen by the
    /// sender and not checked against the content.
    #[must_use]
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// Number of chunks, 1 to [`MAX_CHUNKS`].
    #[must_use]
    pub fn chunk_count(&self) -> u64 {
        chunks_of(self.size, self.chunk_size)
    }

    /// Length of the ciphertext this pointer describes ([`ciphertext_len`]).
    #[must_use]
    pub fn ciphertext_len(&self) -> u64 {
        self.size
            .saturating_add(self.chunk_count().saturating_mul(TAG_LEN as u64))
    }

    /// Plaintext length of chunk `index` (< [`chunk_count`](Self::chunk_count)).
    fn plaintext_len_of(&self, index: u64) -> u64 {
        let c = u64::from(self.chunk_size);
        self.size.saturating_sub(index.saturating_mul(c)).min(c)
    }

    /// `0x91 || AttachmentPointerProto` (PROTOCOL.md §20.4).
    #[must_use]
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        use prost::Message;
        let message = AttachmentPointerProto {
            key: self.key.to_vec(),
            digest: self.digest.to_vec(),
            size: self.size,
            chunk_size: self.chunk_size,
            content_type: self.content_type.clone(),
        };
        // Sized exactly: never reallocates, so no unwiped copy of the key is left behind.
        let mut out = Zeroizing::new(Vec::with_capacity(1 + message.encoded_len()));
        out.push(POINTER_V1);
        message.encode_raw(&mut *out);
        out
    }

    /// Decodes and validates `0x91 || AttachmentPointerProto` (PROTOCOL.md §20.4): size limit,
    /// leading byte, protobuf, then the fields in tag order.
    ///
    /// # Errors
    /// [`AttachmentError::Malformed`] with the reason.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AttachmentError> {
        Ok(Self::decode(bytes)?)
    }

    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        use prost::Message;
        if bytes.len() > MAX_POINTER_BYTES {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                limit: MAX_POINTER_BYTES,
            });
        }
        let (&first, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
        if first != POINTER_V1 {
            return Err(DecodeError::UnsupportedVersion(first));
        }
        let mut message =
            AttachmentPointerProto::decode(body).map_err(|_| DecodeError::Protobuf)?;
        let key = <&[u8; KEY_LEN]>::try_from(message.key.as_slice())
            .map_err(|_| DecodeError::InvalidField("key"))?;
        let mut pointer = Self {
            key: *key,
            digest: [0; DIGEST_LEN],
            size: message.size,
            chunk_size: message.chunk_size,
            content_type: String::new(),
        };
        pointer.digest = <[u8; DIGEST_LEN]>::try_from(message.digest.as_slice())
            .map_err(|_| DecodeError::InvalidField("digest"))?;
        if !is_valid_chunk_size(message.chunk_size) {
            return Err(DecodeError::InvalidField("chunk_size"));
        }
        if message.size > max_size(message.chunk_size) {
            return Err(DecodeError::InvalidField("size"));
        }
        if message.content_type.len() > MAX_CONTENT_TYPE_LEN {
            return Err(DecodeError::InvalidField("content_type"));
        }
        pointer.content_type = core::mem::take(&mut message.content_type);
        Ok(pointer)
    }
}

impl fmt::Debug for AttachmentPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachmentPointer")
            .field("key", &"<redacted>")
            .field("size", &self.size)
            .field("chunk_size", &self.chunk_size)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

// ---- Streaming encryption (PROTOCOL.md §20.5) ------------------------------------------------

/// Seals chunks in order and hashes the ciphertext.
struct Sealer {
    cipher: ChunkCipher,
    /// Index of the next chunk to seal.
    index: u32,
    hasher: Sha256,
}

impl Sealer {
    fn seal(&mut self, last: bool, plaintext: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        self.cipher.seal_into(self.index, last, plaintext, out);
        if let Some(chunk) = out.get(start..) {
            self.hasher.update(chunk);
        }
        // A non-final chunk never has index u32::MAX (the size check in `update`), and nothing
        // is sealed after the final one.
        self.index = self.index.saturating_add(1);
    }
}

/// Streaming encryption of one attachment with bounded memory (PROTOCOL.md §20.5).
///
/// Feed the plaintext in pieces of any size to [`update`](Self::update), which appends the
/// ciphertext of every chunk completed so far; [`finish`](Self::finish) seals the final chunk
/// and returns the [`AttachmentPointer`]. At most one chunk of plaintext is buffered (the final
/// chunk carries the final flag, so a full chunk is held until more data proves it is not the
/// last). The buffer and keys are wiped on drop.
///
/// **Resuming an upload.** The ciphertext is a deterministic function of `K`, the chunk size and
/// the plaintext, so persist [`key`](Self::key), the chunk size and the content type before
/// uploading. After an interruption at chunk `j` (byte `j · (chunk_size + 16)` of the
/// ciphertext), either keep this encryptor alive and resend what it produced, or rebuild it with
/// [`with_key`](Self::with_key), feed the plaintext from the start and discard the first
/// `j · (chunk_size + 16)` output bytes instead of uploading them (the digest needs the whole
/// ciphertext, so the earlier chunks are re-encrypted and hashed, not re-sent). [`encrypt_chunk`]
/// regenerates any single chunk. **Only ever resume with byte-identical plaintext**: `K` with a
/// changed file reuses AES-GCM nonces, which reveals plaintext and lets anyone forge chunks. If
/// the file may have changed, start again with a fresh key.
pub struct AttachmentEncryptor {
    key: Zeroizing<[u8; KEY_LEN]>,
    sealer: Sealer,
    chunk_size: u32,
    content_type: Zeroizing<String>,
    /// Plaintext of the current chunk, at most `chunk_size` bytes; allocated once.
    buffer: Zeroizing<Vec<u8>>,
    /// Plaintext bytes accepted so far.
    size: u64,
}

impl AttachmentEncryptor {
    /// Starts an attachment under a fresh key `K` (32 bytes from `rng`). Arguments are checked
    /// before anything is drawn.
    ///
    /// # Errors
    /// [`AttachmentError::InvalidChunkSize`], [`AttachmentError::InvalidContentType`].
    pub fn new(
        rng: &mut (impl CryptoRng + ?Sized),
        chunk_size: u32,
        content_type: &str,
    ) -> Result<Self, AttachmentError> {
        check_args(chunk_size, content_type)?;
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut *key);
        Self::with_key(&key, chunk_size, content_type)
    }

    /// Starts an attachment under a given key `K`: to resume an upload of the **same**
    /// plaintext, or for test vectors. Never use one key for two different plaintexts.
    ///
    /// # Errors
    /// [`AttachmentError::InvalidChunkSize`], [`AttachmentError::InvalidContentType`].
    pub fn with_key(
        key: &[u8; KEY_LEN],
        chunk_size: u32,
        content_type: &str,
    ) -> Result<Self, AttachmentError> {
        check_args(chunk_size, content_type)?;
        Ok(Self {
            key: Zeroizing::new(*key),
            sealer: Sealer {
                cipher: ChunkCipher::new(key, chunk_size),
                index: 0,
                hasher: Sha256::new(),
            },
            chunk_size,
            content_type: Zeroizing::new(content_type.to_owned()),
            buffer: Zeroizing::new(Vec::new()),
            size: 0,
        })
    }

    /// The attachment key `K`: persist it (secretly) with the chunk size and content type to
    /// resume an interrupted upload.
    #[must_use]
    pub fn key(&self) -> &[u8; KEY_LEN] {
        &self.key
    }

    /// The chunk size.
    #[must_use]
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Plaintext bytes accepted so far.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Plaintext bytes buffered (not yet sealed): at most the chunk size.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Encrypts the next `data` and appends the ciphertext of every chunk completed so far to
    /// `out` (whole chunks only: `ct || tag`). Full chunks are encrypted straight from `data`
    /// into `out`; only a trailing partial (or possibly final) chunk is copied into the buffer.
    ///
    /// # Errors
    /// [`AttachmentError::TooLarge`] if the attachment would exceed [`MAX_CHUNKS`] chunks;
    /// nothing is consumed or written then.
    pub fn update(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let len = u64::try_from(data.len()).map_err(|_| AttachmentError::TooLarge)?;
        let size = self
            .size
            .checked_add(len)
            .filter(|&s| s <= max_size(self.chunk_size))
            .ok_or(AttachmentError::TooLarge)?;
        let c = usize::try_from(self.chunk_size).map_err(|_| AttachmentError::TooLarge)?;
        let mut data = data;
        while !data.is_empty() {
            if self.buffer.len() >= c {
                // More data follows, so the buffered chunk is not the final one.
                self.sealer.seal(false, &self.buffer, out);
                self.buffer.clear();
            }
            if self.buffer.is_empty() && data.len() > c {
                // A whole chunk with more data after it: encrypt it straight into `out`, no copy.
                let (chunk, rest) = data.split_at_checked(c).unwrap_or((data, &[]));
                self.sealer.seal(false, chunk, out);
                data = rest;
            } else {
                if self.buffer.capacity() == 0 {
                    // Once, while empty: the buffer never reallocates, so never leaves copies.
                    self.buffer.reserve_exact(c);
                }
                let take = c.saturating_sub(self.buffer.len()).min(data.len());
                let (head, rest) = data.split_at_checked(take).unwrap_or((data, &[]));
                self.buffer.extend_from_slice(head);
                data = rest;
            }
        }
        self.size = size;
        Ok(())
    }

    /// Seals the final chunk (the buffered plaintext, empty only for an empty file), appends it
    /// to `out` and returns the pointer to send.
    pub fn finish(self, out: &mut Vec<u8>) -> AttachmentPointer {
        let Self {
            key,
            mut sealer,
            chunk_size,
            mut content_type,
            buffer,
            size,
        } = self;
        sealer.seal(true, &buffer, out);
        AttachmentPointer {
            key: *key,
            digest: sealer.hasher.finalize().into(),
            size,
            chunk_size,
            content_type: core::mem::take(&mut *content_type),
        }
    }
}

fn check_args(chunk_size: u32, content_type: &str) -> Result<(), AttachmentError> {
    check_chunk_size(chunk_size)?;
    if content_type.len() > MAX_CONTENT_TYPE_LEN {
        return Err(AttachmentError::InvalidContentType);
    }
    Ok(())
}

impl fmt::Debug for AttachmentEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachmentEncryptor")
            .field("key", &"<redacted>")
            .field("chunk_size", &self.chunk_size)
            .field("next_chunk", &self.sealer.index)
            .field("size", &self.size)
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

/// Encrypts one chunk: `AES-256-GCM(aes_key, nonce_prefix || u32be(index) || flag, "",
/// plaintext) || tag` (PROTOCOL.md §20.2–§20.3). For regenerating chunk `index` of an
/// interrupted upload (PROTOCOL.md §20.5) and for test vectors. `plaintext` must be exactly
/// `chunk_size` bytes for a non-final chunk, and 1 to `chunk_size` bytes for a final one (0 only
/// for index 0, the empty file). **Only for plaintext byte-identical to the original file**: see
/// [`AttachmentEncryptor`].
///
/// # Errors
/// [`AttachmentError::InvalidChunkSize`], [`AttachmentError::InvalidChunkLength`],
/// [`AttachmentError::TooLarge`] (a non-final chunk at index `u32::MAX`).
pub fn encrypt_chunk(
    key: &[u8; KEY_LEN],
    chunk_size: u32,
    index: u32,
    last: bool,
    plaintext: &[u8],
) -> Result<Vec<u8>, AttachmentError> {
    check_chunk_size(chunk_size)?;
    let c = usize::try_from(chunk_size).map_err(|_| AttachmentError::TooLarge)?;
    let fits = if last {
        plaintext.len() <= c && (index == 0 || !plaintext.is_empty())
    } else {
        plaintext.len() == c
    };
    if !fits {
        return Err(AttachmentError::InvalidChunkLength);
    }
    if !last && index == u32::MAX {
        return Err(AttachmentError::TooLarge);
    }
    let mut out = Vec::with_capacity(plaintext.len().saturating_add(TAG_LEN));
    ChunkCipher::new(key, chunk_size).seal_into(index, last, plaintext, &mut out);
    Ok(out)
}

// ---- Streaming decryption (PROTOCOL.md §20.6) ------------------------------------------------

/// Streaming decryption of one attachment with bounded memory (PROTOCOL.md §20.6).
///
/// Feed the ciphertext, exactly as downloaded, in pieces of any size to
/// [`update`](Self::update); it appends the plaintext of every chunk as soon as the chunk is
/// complete and authenticated (the pointer's size fixes every chunk's length and which one is
/// final). [`finish`](Self::finish) then checks that the whole ciphertext arrived and that its
/// SHA-256 equals the pointer's digest.
///
/// **Plaintext is released before the file is known to be complete** (STREAM's online property):
/// each released chunk is authentic and in place, but the file may yet turn out truncated. The
/// caller MUST treat the file as invalid — and discard what it wrote — unless `finish` returns
/// `Ok`. After any error the decryptor is poisoned: every later call fails.
///
/// At most one chunk of ciphertext (`chunk_size + 16` bytes) is buffered. `out` is the caller's:
/// to keep plaintext from lingering in freed memory, pass a buffer with enough capacity (for
/// example a `Zeroizing<Vec<u8>>` drained after every call) so that it never reallocates.
pub struct AttachmentDecryptor {
    cipher: ChunkCipher,
    digest: [u8; DIGEST_LEN],
    chunk_size: u32,
    /// Number of chunks, from the pointer's size.
    chunks: u64,
    /// Ciphertext length of the final chunk (tag included).
    last_len: usize,
    /// Total ciphertext length.
    expected: u64,
    /// Ciphertext bytes received so far.
    received: u64,
    /// Index of the next chunk to open.
    index: u64,
    /// Ciphertext of the current chunk (at most `chunk_size + 16` bytes).
    buffer: Vec<u8>,
    hasher: Sha256,
    failed: bool,
}

impl AttachmentDecryptor {
    /// Starts decrypting the attachment `pointer` describes.
    #[must_use]
    pub fn new(pointer: &AttachmentPointer) -> Self {
        let chunks = pointer.chunk_count();
        let last_len = usize::try_from(pointer.plaintext_len_of(chunks.saturating_sub(1)))
            .unwrap_or(usize::MAX)
            .saturating_add(TAG_LEN);
        Self {
            cipher: ChunkCipher::new(&pointer.key, pointer.chunk_size),
            digest: pointer.digest,
            chunk_size: pointer.chunk_size,
            chunks,
            last_len,
            expected: pointer.ciphertext_len(),
            received: 0,
            index: 0,
            buffer: Vec::new(),
            hasher: Sha256::new(),
            failed: false,
        }
    }

    /// Ciphertext bytes buffered (an incomplete chunk): at most `chunk_size + 16`.
    #[must_use]
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Ciphertext bytes received so far.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Decrypts the next `ciphertext` bytes and appends the plaintext of every chunk completed
    /// and authenticated so far to `out`. Only authenticated plaintext is ever written; on error
    /// `out` is left as it was (bytes appended earlier in this call are wiped and removed).
    ///
    /// # Errors
    /// [`AttachmentError::Unauthenticated`]: a chunk failed to open, or more bytes arrived than
    /// the pointer's size allows. The decryptor is then poisoned.
    pub fn update(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        if self.failed {
            return Err(AttachmentError::Unauthenticated);
        }
        let start = out.len();
        let result = self.update_inner(ciphertext, out);
        if result.is_err() {
            self.failed = true;
            if let Some(tail) = out.get_mut(start..) {
                tail.zeroize();
            }
            out.truncate(start);
        }
        result
    }

    fn update_inner(
        &mut self,
        ciphertext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), AttachmentError> {
        let len = u64::try_from(ciphertext.len()).map_err(|_| AttachmentError::Unauthenticated)?;
        self.received = self
            .received
            .checked_add(len)
            .filter(|&r| r <= self.expected)
            .ok_or(AttachmentError::Unauthenticated)?;
        self.hasher.update(ciphertext);
        let mut data = ciphertext;
        while !data.is_empty() {
            let need = self.current_len()?;
            if self.buffer.is_empty() && data.len() >= need {
                // A whole chunk in the input: decrypt it straight into `out`, no copy.
                let (chunk, rest) = data
                    .split_at_checked(need)
                    .ok_or(AttachmentError::Unauthenticated)?;
                self.open(chunk, out)?;
                data = rest;
            } else {
                if self.buffer.capacity() == 0 {
                    self.buffer.reserve_exact(need);
                }
                let take = need.saturating_sub(self.buffer.len()).min(data.len());
                let (head, rest) = data.split_at_checked(take).unwrap_or((data, &[]));
                self.buffer.extend_from_slice(head);
                data = rest;
                if self.buffer.len() == need {
                    let chunk = core::mem::take(&mut self.buffer);
                    let opened = self.open(&chunk, out);
                    self.buffer = chunk;
                    self.buffer.clear();
                    opened?;
                }
            }
        }
        Ok(())
    }

    /// Ciphertext length of the next chunk; an error once every chunk was opened.
    fn current_len(&self) -> Result<usize, AttachmentError> {
        let next = self.index.saturating_add(1);
        if next < self.chunks {
            usize::try_from(self.chunk_size)
                .map(|c| c.saturating_add(TAG_LEN))
                .map_err(|_| AttachmentError::Unauthenticated)
        } else if next == self.chunks {
            Ok(self.last_len)
        } else {
            Err(AttachmentError::Unauthenticated)
        }
    }

    fn open(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), AttachmentError> {
        let index = u32::try_from(self.index).map_err(|_| AttachmentError::Unauthenticated)?;
        let last = self.index.saturating_add(1) == self.chunks;
        self.cipher.open_into(index, last, chunk, out)?;
        self.index = self.index.saturating_add(1);
        Ok(())
    }

    /// Checks that the final chunk arrived and was the last data, that exactly the pointer's
    /// ciphertext length was received, and that its SHA-256 equals the pointer's digest
    /// (constant-time). Only now is the file valid.
    ///
    /// # Errors
    /// [`AttachmentError::Unauthenticated`] if any check fails or an earlier call failed.
    pub fn finish(self) -> Result<(), AttachmentError> {
        let complete = !self.failed
            && self.index == self.chunks
            && self.buffer.is_empty()
            && self.received == self.expected;
        let digest: [u8; DIGEST_LEN] = self.hasher.finalize().into();
        if complete && bool::from(digest.ct_eq(&self.digest)) {
            Ok(())
        } else {
            Err(AttachmentError::Unauthenticated)
        }
    }
}

impl fmt::Debug for AttachmentDecryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachmentDecryptor")
            .field("key", &"<redacted>")
            .field("chunk_size", &self.chunk_size)
            .field("next_chunk", &self.index)
            .field("chunks", &self.chunks)
            .field("received", &self.received)
            .field("expected", &self.expected)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

// ---- Range decryption (PROTOCOL.md §20.7) ----------------------------------------------------

/// The chunks that cover a plaintext byte range, and where they are (PROTOCOL.md §20.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRange {
    /// Index of the first chunk.
    pub first_chunk: u32,
    /// Index of the last chunk (inclusive).
    pub last_chunk: u32,
    /// The ciphertext bytes of those chunks: fetch exactly these (for example with an HTTP
    /// `Range` request).
    pub ciphertext: Range<u64>,
    /// The plaintext bytes those chunks decrypt to (chunk-aligned; contains the requested range).
    pub plaintext: Range<u64>,
}

/// The chunks covering the plaintext bytes `range` of the attachment (PROTOCOL.md §20.7). An
/// empty range maps to the one chunk at its position (for an empty file, chunk 0).
///
/// # Errors
/// [`AttachmentError::ChunkOutOfRange`] unless `range.start <= range.end <= pointer.size()`.
pub fn chunk_range(
    pointer: &AttachmentPointer,
    range: Range<u64>,
) -> Result<ChunkRange, AttachmentError> {
    if range.start > range.end || range.end > pointer.size {
        return Err(AttachmentError::ChunkOutOfRange);
    }
    let c = u64::from(pointer.chunk_size);
    let chunks = pointer.chunk_count();
    let first = (range.start / c).min(chunks.saturating_sub(1));
    let last = if range.end > range.start {
        (range.end.saturating_sub(1) / c).max(first)
    } else {
        first
    };
    let stride = c.saturating_add(TAG_LEN as u64);
    let ct_end = if last.saturating_add(1) == chunks {
        pointer.ciphertext_len()
    } else {
        last.saturating_add(1).saturating_mul(stride)
    };
    Ok(ChunkRange {
        first_chunk: u32::try_from(first).map_err(|_| AttachmentError::ChunkOutOfRange)?,
        last_chunk: u32::try_from(last).map_err(|_| AttachmentError::ChunkOutOfRange)?,
        ciphertext: first.saturating_mul(stride)..ct_end,
        plaintext: first.saturating_mul(c)
            ..last.saturating_add(1).saturating_mul(c).min(pointer.size),
    })
}

/// Decrypts chunk `index` of the attachment (`ct || tag`, exactly as stored) (PROTOCOL.md
/// §20.7). The pointer's size fixes whether `index` is the final chunk and the length it must
/// have. Each chunk is authenticated with its index and final flag, but the whole-file digest
/// cannot be checked: a valid chunk proves only that it is chunk `index` of this attachment.
///
/// # Errors
/// [`AttachmentError::ChunkOutOfRange`]; [`AttachmentError::Unauthenticated`] for a wrong length
/// or a failed tag.
pub fn decrypt_chunk(
    pointer: &AttachmentPointer,
    index: u32,
    chunk_ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AttachmentError> {
    let mut out = Zeroizing::new(Vec::new());
    open_chunk(
        &ChunkCipher::new(&pointer.key, pointer.chunk_size),
        pointer,
        index,
        chunk_ciphertext,
        &mut out,
    )?;
    Ok(out)
}

/// Opens chunk `index` with `cipher` and appends its plaintext to `out`.
fn open_chunk(
    cipher: &ChunkCipher,
    pointer: &AttachmentPointer,
    index: u32,
    chunk_ciphertext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), AttachmentError> {
    let chunks = pointer.chunk_count();
    if u64::from(index) >= chunks {
        return Err(AttachmentError::ChunkOutOfRange);
    }
    let expected = pointer
        .plaintext_len_of(u64::from(index))
        .saturating_add(TAG_LEN as u64);
    if u64::try_from(chunk_ciphertext.len()).ok() != Some(expected) {
        return Err(AttachmentError::Unauthenticated);
    }
    let last = u64::from(index).saturating_add(1) == chunks;
    cipher.open_into(index, last, chunk_ciphertext, out)
}

/// Decrypts the plaintext bytes `range` from the ciphertext bytes
/// [`chunk_range`]`(pointer, range).ciphertext` (PROTOCOL.md §20.7). Every chunk is
/// authenticated as in [`decrypt_chunk`]; the whole-file digest is not checked. Memory is the
/// covering chunks' plaintext.
///
/// # Errors
/// [`AttachmentError::ChunkOutOfRange`] for a range outside the file;
/// [`AttachmentError::Unauthenticated`] if `ciphertext` is not exactly the covering chunks or a
/// chunk fails to open.
pub fn decrypt_range(
    pointer: &AttachmentPointer,
    range: Range<u64>,
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AttachmentError> {
    let chunks = chunk_range(pointer, range.clone())?;
    let ct_len = chunks
        .ciphertext
        .end
        .saturating_sub(chunks.ciphertext.start);
    if u64::try_from(ciphertext.len()).ok() != Some(ct_len) {
        return Err(AttachmentError::Unauthenticated);
    }
    let cipher = ChunkCipher::new(&pointer.key, pointer.chunk_size);
    let pt_len = chunks.plaintext.end.saturating_sub(chunks.plaintext.start);
    let mut out = Zeroizing::new(Vec::with_capacity(
        usize::try_from(pt_len).map_err(|_| AttachmentError::TooLarge)?,
    ));
    let mut rest = ciphertext;
    for index in chunks.first_chunk..=chunks.last_chunk {
        let len = usize::try_from(pointer.plaintext_len_of(u64::from(index)))
            .map_err(|_| AttachmentError::TooLarge)?
            .saturating_add(TAG_LEN);
        let (chunk, tail) = rest
            .split_at_checked(len)
            .ok_or(AttachmentError::Unauthenticated)?;
        open_chunk(&cipher, pointer, index, chunk, &mut out)?;
        rest = tail;
    }
    let skip = usize::try_from(range.start.saturating_sub(chunks.plaintext.start))
        .map_err(|_| AttachmentError::TooLarge)?;
    let keep = usize::try_from(range.end.saturating_sub(range.start))
        .map_err(|_| AttachmentError::TooLarge)?;
    if out.len() < skip.saturating_add(keep) {
        return Err(AttachmentError::Unauthenticated); // unreachable: the chunks cover `range`
    }
    // Wipe what is cut off, then move the wanted bytes to the front (in place, no copy).
    if let Some(tail) = out.get_mut(skip.saturating_add(keep)..) {
        tail.zeroize();
    }
    out.truncate(skip.saturating_add(keep));
    out.copy_within(skip.., 0);
    if let Some(tail) = out.get_mut(keep..) {
        tail.zeroize();
    }
    out.truncate(keep);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ciphertext_len(0, 1024), Ok(16));
        assert_eq!(ciphertext_len(1, 1024), Ok(17));
        assert_eq!(ciphertext_len(1024, 1024), Ok(1040));
        assert_eq!(ciphertext_len(1025, 1024), Ok(1025 + 32));
        assert_eq!(chunk_count(max_size(1024), 1024), Ok(MAX_CHUNKS));
        assert_eq!(
            chunk_count(max_size(1024) + 1, 1024),
            Err(AttachmentError::TooLarge)
        );
        assert_eq!(
            ciphertext_len(0, 1000),
            Err(AttachmentError::InvalidChunkSize(1000))
        );
        for bad in [0, 512, 1023, 3 * 1024, 32 * 1024 * 1024] {
            assert!(!is_valid_chunk_size(bad), "{bad}");
        }
        assert!(is_valid_chunk_size(MIN_CHUNK_SIZE));
        assert!(is_valid_chunk_size(DEFAULT_CHUNK_SIZE));
        assert!(is_valid_chunk_size(MAX_CHUNK_SIZE));
    }

    #[test]
    fn nonce_layout() {
        let cipher = ChunkCipher::new(&[7; 32], DEFAULT_CHUNK_SIZE);
        let n = cipher.nonce(0x0102_0304, true);
        assert_eq!(&n[..7], &cipher.nonce_prefix[..]);
        assert_eq!(&n[7..], &[1, 2, 3, 4, 1]);
        assert_eq!(cipher.nonce(5, false)[11], 0);
    }

    #[test]
    fn largest_pointer_fits_the_limit() {
        let p = AttachmentPointer::new(
            &[0xff; 32],
            [0xff; 32],
            max_size(MAX_CHUNK_SIZE),
            MAX_CHUNK_SIZE,
            &"x".repeat(MAX_CONTENT_TYPE_LEN),
        )
        .unwrap();
        assert_eq!(p.to_bytes().len(), 342);
        assert!(p.to_bytes().len() <= MAX_POINTER_BYTES);
    }
}
