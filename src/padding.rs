//! Length-hiding padding of message content (PROTOCOL.md §18): every fan-out body and group
//! message pads its content before encryption, so the server learns a size bucket, not a
//! length.
//!
//! `pad(content) = content || 0x80 || 0x00^k`, padded to `padded_len(len(content))`: at least
//! [`MIN_PADDED_LEN`] bytes, above that the Padmé length (Nikitin et al., "Reducing Metadata
//! Leakage from Encrypted Files and Communication with PURBs", PETS 2019), which costs at most
//! 12 % and leaks `O(log log L)` bits of a length `L`.
//!
//! ```
//! use confidant::padding::{pad, padded_len, unpad};
//! let padded = pad(b"hi");
//! assert_eq!(padded.len(), 256);
//! assert_eq!(padded_len(1000), 1024);
//! assert_eq!(&unpad(&padded).unwrap()[..], b"hi");
//! ```

use zeroize::Zeroizing;

use crate::limits::MAX_PLAINTEXT;

/// The smallest padded length: every content up to 255 bytes pads to 256, so chat messages,
/// receipts and typing indicators all look alike.
pub const MIN_PADDED_LEN: usize = 256;

/// The padded length of the largest content ([`MAX_PLAINTEXT`]); the decoders' size limits
/// leave room for it.
pub const MAX_PADDED_LEN: usize = padded_len(MAX_PLAINTEXT);

// Padmé costs at most 12 %: the decoders' limits rely on it.
const _: () = assert!(MAX_PADDED_LEN <= MAX_PLAINTEXT + MAX_PLAINTEXT / 8);

/// The padding delimiter.
const DELIMITER: u8 = 0x80;

/// The Padmé length of `len` bytes (`len >= 2`): `len` rounded up so that only its top
/// `floor(log2(floor(log2 len))) + 1` significant bits may be non-zero.
const fn padme(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let e = usize::BITS - 1 - len.leading_zeros(); // floor(log2 len)
    let s = u32::BITS - 1 - e.leading_zeros() + 1; // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1usize << last_bits) - 1;
    (len + mask) & !mask
}

/// The padded length of a content of `len` bytes: `max(MIN_PADDED_LEN, Padmé(len + 1))`
/// (the `+ 1` is the delimiter).
#[must_use]
pub const fn padded_len(len: usize) -> usize {
    let with_delimiter = len.saturating_add(1);
    if with_delimiter <= MIN_PADDED_LEN {
        MIN_PADDED_LEN
    } else {
        padme(with_delimiter)
    }
}

/// `content || 0x80 || 0x00…` of length [`padded_len`]`(content.len())`.
#[must_use]
pub fn pad(content: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(padded_len(content.len())));
    out.extend_from_slice(content);
    out.push(DELIMITER);
    out.resize(padded_len(content.len()), 0);
    out
}

/// The content of a padded plaintext: everything before the last `0x80` that is followed only
/// by zeros. `None` when there is no such delimiter (the callers report that as an
/// authentication failure: padding is checked only after the AEAD tag verified, so only a
/// misbehaving sender can produce it). Any amount of padding is accepted, so a sender may
/// choose a larger bucket.
#[must_use]
pub fn unpad(padded: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let end = padded.iter().rposition(|&b| b != 0)?;
    if padded.get(end) != Some(&DELIMITER) {
        return None;
    }
    padded.get(..end).map(|c| Zeroizing::new(c.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padme_matches_the_paper() {
        // Values from the PURBs paper's definition, and its 12 % overhead bound.
        assert_eq!(padme(2), 2);
        assert_eq!(padme(9), 10);
        assert_eq!(padme(100), 104);
        assert_eq!(padme(1000), 1024);
        assert_eq!(padme(1025), 1088);
        assert_eq!(padme(65_537), 67_584);
        for len in 2..200_000usize {
            let p = padme(len);
            assert!(p >= len && (p - len) * 100 <= len * 12, "{len} -> {p}");
        }
    }

    #[test]
    fn round_trips_and_buckets() {
        for len in [0usize, 1, 255, 256, 257, 1000, 5000, MAX_PLAINTEXT] {
            let content: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let padded = pad(&content);
            assert_eq!(padded.len(), padded_len(len));
            assert_eq!(&unpad(&padded).unwrap()[..], &content[..]);
        }
        assert_eq!(padded_len(0), 256);
        assert_eq!(padded_len(255), 256);
        assert_eq!(padded_len(256), 272);
    }

    #[test]
    fn malformed_padding_is_rejected() {
        assert!(unpad(&[]).is_none());
        assert!(unpad(&[0; 256]).is_none());
        assert!(unpad(&[1, 2, 3, 0, 0]).is_none());
        assert_eq!(&unpad(&[1, 0x80]).unwrap()[..], &[1]);
        assert_eq!(&unpad(&[0x80, 0x80, 0]).unwrap()[..], &[0x80]);
    }
}
