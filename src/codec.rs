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

/// Session book snapshot, format version 1.
pub(crate) const SESSION_BOOK_V1: u8 = 0x33;
/// Group session snapshot, format version 1.
pub(crate) const GROUP_SESSION_V1: u8 = 0x34;
/// Signed device list, format version 1.
pub(crate) const DEVICE_LIST_V1: u8 = 0x41;
/// Device link request, format version 1.
pub(crate) const LINK_REQUEST_V1: u8 = 0x42;

/// Sender-key group message, format version 1 (PROTOCOL.md §17.3).
pub(crate) const GROUP_MESSAGE_V1: u8 = 0x61;
/// Sender-key distribution message, format version 1 (PROTOCOL.md §17.4).
pub(crate) const DISTRIBUTION_V1: u8 = 0x62;

/// Envelope, format version 1 (PROTOCOL.md §19.1).
pub(crate) const ENVELOPE_V1: u8 = 0x71;
/// Multi-recipient sealed upload, format version 1 (PROTOCOL.md §19.4).
pub(crate) const SEALED_UPLOAD_V1: u8 = 0x72;
/// Multi-recipient fan-out upload, format version 1 (PROTOCOL.md §19.4).
pub(crate) const FANOUT_UPLOAD_V1: u8 = 0x73;
/// Server certificate, format version 1 (PROTOCOL.md §19.2).
pub(crate) const SERVER_CERTIFICATE_V1: u8 = 0x81;
/// Sender certificate, format version 1 (PROTOCOL.md §19.2).
pub(crate) const SENDER_CERTIFICATE_V1: u8 = 0x82;

/// Checks the size limit and leading byte, then decodes the protobuf body.
pub(crate) fn decode<M: prost::Message + Default>(
    bytes: &[u8],
    expected: u8,
    limit: usize,
) -> Result<M, DecodeError> {
    decode_counted(bytes, expected, limit, &[])
}

/// A bound on a repeated field, checked on the wire bytes before decoding: at most `max`
/// occurrences of field `tag` inside the (possibly nested, via the field numbers in `path`)
/// message. prost would otherwise allocate a struct per occurrence, even an empty one, so a
/// small input could demand far more memory than the counts that `restore` then rejects.
pub(crate) struct RepeatedLimit {
    pub(crate) path: &'static [u32],
    pub(crate) tag: u32,
    pub(crate) max: usize,
    pub(crate) field: &'static str,
}

/// As [`decode`], and enforces every [`RepeatedLimit`] before decoding.
pub(crate) fn decode_counted<M: prost::Message + Default>(
    bytes: &[u8],
    expected: u8,
    limit: usize,
    repeated: &[RepeatedLimit],
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
    decode_body(body, repeated)
}

/// Decodes a protobuf body (no leading byte; the caller bounded its size), enforcing every
/// [`RepeatedLimit`] first.
pub(crate) fn decode_body<M: prost::Message + Default>(
    body: &[u8],
    repeated: &[RepeatedLimit],
) -> Result<M, DecodeError> {
    for r in repeated {
        let count = count_field(body, r.path, r.tag)?;
        if count > r.max {
            return Err(DecodeError::TooMany {
                field: r.field,
                count,
                limit: r.max,
            });
        }
    }
    M::decode(body).map_err(|_| DecodeError::Protobuf)
}

/// Occurrences of field `tag` in a protobuf message, descending into every occurrence of the
/// length-delimited fields named by `path` (prost merges repeated occurrences of a singular
/// message field, so all of them count). Walks the wire format without allocating.
fn count_field(mut body: &[u8], path: &[u32], tag: u32) -> Result<usize, DecodeError> {
    let mut count = 0usize;
    while !body.is_empty() {
        let key = read_varint(&mut body)?;
        let field = u32::try_from(key >> 3).map_err(|_| DecodeError::Protobuf)?;
        match key & 7 {
            0 => {
                read_varint(&mut body)?;
            }
            1 => body = body.get(8..).ok_or(DecodeError::Protobuf)?,
            5 => body = body.get(4..).ok_or(DecodeError::Protobuf)?,
            2 => {
                let len =
                    usize::try_from(read_varint(&mut body)?).map_err(|_| DecodeError::Protobuf)?;
                let value = body.get(..len).ok_or(DecodeError::Protobuf)?;
                body = body.get(len..).ok_or(DecodeError::Protobuf)?;
                match path.split_first() {
                    Some((&next, rest)) if next == field => {
                        count = count.saturating_add(count_field(value, rest, tag)?)
                    }
                    None if field == tag => count = count.saturating_add(1),
                    _ => {}
                }
            }
            _ => return Err(DecodeError::Protobuf),
        }
    }
    Ok(count)
}

fn read_varint(body: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = body.split_first().ok_or(DecodeError::Protobuf)?;
        *body = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::Protobuf)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nested_and_repeated_occurrences() {
        // field 7 (len 4) { field 10 (len 0), field 10 (len 0) }, field 7 { field 10 (len 0) },
        // field 1 varint 300, field 10 at top level (not counted for path [7]).
        let body = [
            0x3a, 4, 0x52, 0, 0x52, 0, 0x3a, 2, 0x52, 0, 0x08, 0xac, 0x02, 0x52, 0,
        ];
        assert_eq!(count_field(&body, &[7], 10), Ok(3));
        assert_eq!(count_field(&body, &[], 10), Ok(1));
        assert_eq!(
            count_field(&[0x3a, 5, 0], &[7], 10),
            Err(DecodeError::Protobuf)
        );
        assert_eq!(count_field(&[0x0b], &[], 1), Err(DecodeError::Protobuf));
    }
}
