//! Framing of decrypted payloads (PROTOCOL.md §19.5): what a pairwise, fan-out or group
//! plaintext is. The first byte tells: `0x01` an application payload (the application's own
//! format: text, receipts, typing indicators, attachment pointers…), `0x62` a sender-key
//! distribution. The server never sees it: it is inside the encryption.
//!
//! ```
//! use confidant::content::{self, Content};
//! let wire = content::application(b"hello");
//! assert!(matches!(content::parse(&wire)?, Content::Application(b"hello")));
//! # Ok::<(), confidant::DecodeError>(())
//! ```

use crate::codec::DISTRIBUTION_V1;
use crate::error::DecodeError;
use crate::group::SenderKeyDistribution;

/// Leading byte of an application payload.
pub const APPLICATION: u8 = 0x01;

/// A parsed plaintext.
#[derive(Debug)]
#[non_exhaustive]
pub enum Content<'a> {
    /// An application payload (the bytes after the leading byte).
    Application(&'a [u8]),
    /// A sender-key distribution: give it to the group session with the authenticated sender.
    Distribution(Box<SenderKeyDistribution>),
}

/// `0x01 || payload`.
#[must_use]
pub fn application(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + payload.len());
    out.push(APPLICATION);
    out.extend_from_slice(payload);
    out
}

/// Parses a decrypted plaintext.
///
/// # Errors
/// [`DecodeError`] for an empty plaintext, an unknown leading byte or a malformed distribution.
pub fn parse(plaintext: &[u8]) -> Result<Content<'_>, DecodeError> {
    match plaintext.split_first() {
        None => Err(DecodeError::Empty),
        Some((&APPLICATION, payload)) => Ok(Content::Application(payload)),
        Some((&DISTRIBUTION_V1, _)) => {
            SenderKeyDistribution::from_bytes(plaintext).map(|d| Content::Distribution(Box::new(d)))
        }
        Some((&other, _)) => Err(DecodeError::UnsupportedVersion(other)),
    }
}
