//! The leading version/type byte and size limits around every prost encoding (PROTOCOL.md §8.1).

use zeroize::Zeroizing;

use crate::error::DecodeError;

/// Pairwise initial (prekey) message, format version 1.
pub(crate) const PREKEY_MESSAGE_V1: u8 = 0x11;
/// Pairwise Double Ratchet message, format version 1.
pub(crate) const RATCHET_MESSAGE_V1: u8 = 0x12;
/// Prekey bundle, format version 1.
pub(crate) const BUNDLE_V1: u8 = 0x21;
/// Prekey upload, format version 1.
pub(crate) const UPLOAD_V1: u8 = 0x22;
/// Session snapshot, format version 1.
pub(crate) const SESSION_SNAPSHOT_V1: u8 = 0x31;
/// Prekey-secrets snapshot, format version 1.
pub(crate) const PREKEYS_SNAPSHOT_V1: u8 = 0x32;

/// Checks the size limit and leading byte, then decodes the protobuf body.
pub(crate) fn decode<M: prost::Message + Default>(
    bytes: &[u8],
    expected: u8,
    limit: usize,
) -> Result<M, DecodeError> {
    if bytes.len() > limit {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (&first, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if first != expected {
        return Err(DecodeError::UnsupportedVersion(first));
    }
    M::decode(body).map_err(|_| DecodeError::Protobuf)
}

/// `leading byte || protobuf`.
pub(crate) fn encode<M: prost::Message>(leading: u8, message: &M) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + message.encoded_len());
    out.push(leading);
    message.encode_raw(&mut out);
    out
}

/// As [`encode`], for messages that carry secrets: the buffer is sized exactly, so it never
/// reallocates and leaves no unwiped copy behind.
pub(crate) fn encode_secret<M: prost::Message>(leading: u8, message: &M) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(encode(leading, message))
}

/// A fixed-length byte field.
pub(crate) fn array<const N: usize>(
    bytes: &[u8],
    field: &'static str,
) -> Result<[u8; N], DecodeError> {
    bytes
        .try_into()
        .map_err(|_| DecodeError::InvalidField(field))
}
