//! Attachments (PROTOCOL.md §20), through the public API only: round trips at every edge size,
//! arbitrary slicing, 100 MiB streamed with bounded memory, every truncation, reordering,
//! duplication, cross-file chunk swap and single-bit flip rejected, range decryption, resume,
//! and the known-answer vectors `test-vectors/attachment.json` (profile
//! `confidant-attachment/v1`), re-derived byte for byte and opened independently with the
//! `aes-gcm`, `hkdf` and `sha2` crates.
//!
//! Regenerate the vectors (a protocol change: say so in the CHANGELOG) with
//! `cargo test --test attachments -- --ignored regenerate_attachment_vectors`.
//! Throughput: `cargo test --release --test attachments -- --ignored --nocapture throughput`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::ops::Range;
use std::path::PathBuf;
use std::time::Instant;

use confidant::attachment::{
    ATTACHMENT_PROFILE_ID, AttachmentDecryptor, AttachmentEncryptor, AttachmentError,
    AttachmentPointer, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_CONTENT_TYPE_LEN, MAX_POINTER_BYTES,
    MIN_CHUNK_SIZE, TAG_LEN, chunk_count, chunk_range, ciphertext_len, decrypt_chunk,
    decrypt_range, encrypt_chunk,
};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_core::Rng;
use serde_json::{Value, json};
use sha2::Digest;

const C: u32 = 1024;
const CU: usize = C as usize;

// ---------------------------------------------------------------------------------------------
// Helpers

fn seeded(label: &str) -> ChaCha20Rng {
    let mut seed = [0u8; 32];
    let bytes = label.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        seed[i % 32] ^= b.wrapping_add(u8::try_from(i % 251).unwrap());
    }
    ChaCha20Rng::from_seed(seed)
}

fn random_bytes(rng: &mut ChaCha20Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

fn below(rng: &mut ChaCha20Rng, n: usize) -> usize {
    usize::try_from(rng.next_u64() % u64::try_from(n).unwrap()).unwrap()
}

fn sha256(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

/// Encrypts `plaintext` in one `update` under `key`.
fn encrypt(key: &[u8; 32], chunk_size: u32, plaintext: &[u8]) -> (AttachmentPointer, Vec<u8>) {
    let mut enc =
        AttachmentEncryptor::with_key(key, chunk_size, "application/octet-stream").unwrap();
    let mut ct = Vec::new();
    enc.update(plaintext, &mut ct).unwrap();
    let pointer = enc.finish(&mut ct);
    (pointer, ct)
}

/// Decrypts `pieces` in order; `Err` if `update` or `finish` rejects. Checks that released
/// plaintext is always a prefix of `expected` (authentic and in place) when given.
fn decrypt_pieces(
    pointer: &AttachmentPointer,
    pieces: &[&[u8]],
    expected: Option<&[u8]>,
) -> Result<Vec<u8>, AttachmentError> {
    let mut dec = AttachmentDecryptor::new(pointer);
    let mut out = Vec::new();
    let mut result = Ok(());
    for piece in pieces {
        let before = out.len();
        result = dec.update(piece, &mut out);
        assert!(dec.buffered_len() <= pointer.chunk_size() as usize + TAG_LEN);
        if result.is_err() {
            assert_eq!(out.len(), before, "a failed update leaves `out` unchanged");
            // Poisoned: later calls fail too.
            assert_eq!(
                dec.update(&[], &mut out),
                Err(AttachmentError::Unauthenticated)
            );
            break;
        }
    }
    if let Some(expected) = expected {
        assert!(out.len() <= expected.len() && out[..] == expected[..out.len()]);
    }
    result?;
    dec.finish()?;
    Ok(out)
}

fn decrypt_all(pointer: &AttachmentPointer, ct: &[u8]) -> Result<Vec<u8>, AttachmentError> {
    decrypt_pieces(pointer, &[ct], None)
}

/// Splits `data` at random points (seeded), including empty pieces.
fn random_pieces<'a>(rng: &mut ChaCha20Rng, data: &'a [u8], max_piece: usize) -> Vec<&'a [u8]> {
    let mut pieces = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = below(rng, max_piece.min(rest.len()) + 1);
        let (head, tail) = rest.split_at(n);
        pieces.push(head);
        rest = tail;
    }
    pieces
}

/// The ciphertext chunks of an attachment, in order.
fn chunks_of<'a>(pointer: &AttachmentPointer, ct: &'a [u8]) -> Vec<&'a [u8]> {
    let stride = pointer.chunk_size() as usize + TAG_LEN;
    let chunks: Vec<&[u8]> = ct.chunks(stride).collect();
    assert_eq!(chunks.len() as u64, pointer.chunk_count());
    chunks
}

// ---------------------------------------------------------------------------------------------
// Round trips

/// 0 B, 1 B, chunk − 1, exactly one chunk, one chunk + 1, two chunks, two chunks + 1, many
/// chunks — at 1 KiB and at the default 64 KiB chunk size, fed whole and byte-aligned.
#[test]
fn round_trip_edge_sizes() {
    let mut rng = seeded("round-trip-edge-sizes");
    for chunk_size in [C, DEFAULT_CHUNK_SIZE] {
        let c = chunk_size as usize;
        for size in [0, 1, c - 1, c, c + 1, 2 * c, 2 * c + 1, 7 * c + 13] {
            let plaintext = random_bytes(&mut rng, size);
            let mut enc = AttachmentEncryptor::new(&mut rng, chunk_size, "image/png").unwrap();
            let mut ct = Vec::new();
            enc.update(&plaintext, &mut ct).unwrap();
            assert!(enc.buffered_len() <= c);
            assert_eq!(enc.size(), size as u64);
            let pointer = enc.finish(&mut ct);
            assert_eq!(
                ct.len() as u64,
                ciphertext_len(size as u64, chunk_size).unwrap()
            );
            assert_eq!(ct.len() as u64, pointer.ciphertext_len());
            assert_eq!(
                pointer.chunk_count(),
                chunk_count(size as u64, chunk_size).unwrap()
            );
            assert_eq!(
                pointer.chunk_count(),
                (size as u64).div_ceil(c as u64).max(1)
            );
            assert_eq!(pointer.size(), size as u64);
            assert_eq!(pointer.chunk_size(), chunk_size);
            assert_eq!(pointer.content_type(), "image/png");
            assert_eq!(pointer.digest(), &sha256(&ct));

            let decoded = AttachmentPointer::from_bytes(&pointer.to_bytes()).unwrap();
            assert_eq!(&decoded.to_bytes()[..], &pointer.to_bytes()[..]);
            assert_eq!(decoded.key(), pointer.key());
            assert_eq!(
                decrypt_all(&decoded, &ct).unwrap(),
                plaintext,
                "size {size}"
            );
        }
    }
}

/// Many chunks with random `update` split points on both sides (seeded), including empty
/// updates: the ciphertext is independent of the slicing and buffering stays within one chunk.
#[test]
fn random_slicing_is_irrelevant() {
    let mut rng = seeded("random-slicing");
    for round in 0..20 {
        let size = 40 * CU + below(&mut rng, 3 * CU);
        let plaintext = random_bytes(&mut rng, size);
        let key: [u8; 32] = random_bytes(&mut rng, 32).try_into().unwrap();
        let (reference, reference_ct) = encrypt(&key, C, &plaintext);

        let max_piece = [1, 7, 100, CU - 1, CU, CU + 1, 5 * CU][round % 7];
        let mut enc = AttachmentEncryptor::with_key(&key, C, "application/octet-stream").unwrap();
        let mut ct = Vec::new();
        for piece in random_pieces(&mut rng, &plaintext, max_piece) {
            enc.update(piece, &mut ct).unwrap();
            enc.update(&[], &mut ct).unwrap();
            assert!(enc.buffered_len() <= CU);
            assert_eq!(
                ct.len() % (CU + TAG_LEN),
                0,
                "only whole chunks are emitted"
            );
        }
        let pointer = enc.finish(&mut ct);
        assert_eq!(ct, reference_ct, "round {round}");
        assert_eq!(&pointer.to_bytes()[..], &reference.to_bytes()[..]);

        let pieces = random_pieces(&mut rng, &ct, max_piece);
        assert_eq!(
            decrypt_pieces(&pointer, &pieces, Some(&plaintext)).unwrap(),
            plaintext
        );
    }
}

/// 100 MiB from a seeded RNG in 1 MiB pieces, each split at a random point, through the
/// encryptor straight into the decryptor: nothing holds the file, the buffers stay within one
/// chunk, and the SHA-256 of the plaintext in equals that of the plaintext out.
#[test]
fn hundred_mib_streamed_with_bounded_memory() {
    const PIECE: usize = 1 << 20;
    const PIECES: usize = 100;
    let mut rng = seeded("hundred-mib");
    let mut split = seeded("hundred-mib/split");
    let mut enc = AttachmentEncryptor::new(&mut rng, DEFAULT_CHUNK_SIZE, "video/mp4").unwrap();
    let c = DEFAULT_CHUNK_SIZE as usize;
    let mut piece = vec![0u8; PIECE];
    let mut ct = Vec::with_capacity(PIECE + 32 * TAG_LEN);
    let mut pt_out = Vec::with_capacity(PIECE + c);
    let mut hash_in = sha2::Sha256::new();
    let mut hash_out = sha2::Sha256::new();
    let mut ct_total = 0u64;

    // The decryptor needs the pointer, which exists only at the end: run the encryption once
    // for the pointer, then a second identical pass (`with_key`) in lockstep with the
    // decryptor. Neither pass keeps more than a piece.
    let mut pass = |enc: &mut AttachmentEncryptor,
                    dec: Option<&mut AttachmentDecryptor>,
                    rng: &mut ChaCha20Rng,
                    split: &mut ChaCha20Rng,
                    hash_in: &mut sha2::Sha256,
                    hash_out: &mut sha2::Sha256|
     -> u64 {
        let mut dec = dec;
        let mut total = 0u64;
        for _ in 0..PIECES {
            rng.fill_bytes(&mut piece);
            hash_in.update(&piece);
            let at = below(split, PIECE);
            ct.clear();
            enc.update(&piece[..at], &mut ct).unwrap();
            enc.update(&piece[at..], &mut ct).unwrap();
            assert!(enc.buffered_len() <= c);
            assert!(ct.len() <= PIECE + c + 32 * TAG_LEN);
            total += ct.len() as u64;
            if let Some(dec) = dec.as_deref_mut() {
                let at = below(split, ct.len() + 1);
                pt_out.clear();
                dec.update(&ct[..at], &mut pt_out).unwrap();
                dec.update(&ct[at..], &mut pt_out).unwrap();
                assert!(dec.buffered_len() <= c + TAG_LEN);
                assert!(pt_out.len() <= PIECE + c);
                hash_out.update(&pt_out);
            }
        }
        total
    };

    let key = *enc.key();
    ct_total += pass(
        &mut enc,
        None,
        &mut rng.clone(),
        &mut split.clone(),
        &mut sha2::Sha256::new(),
        &mut sha2::Sha256::new(),
    );
    let mut tail = Vec::new();
    let pointer = enc.finish(&mut tail);
    ct_total += tail.len() as u64;
    assert_eq!(
        ct_total,
        ciphertext_len((PIECES * PIECE) as u64, DEFAULT_CHUNK_SIZE).unwrap()
    );
    assert_eq!(pointer.size(), (PIECES * PIECE) as u64);

    let mut enc = AttachmentEncryptor::with_key(&key, DEFAULT_CHUNK_SIZE, "video/mp4").unwrap();
    let mut dec = AttachmentDecryptor::new(&pointer);
    pass(
        &mut enc,
        Some(&mut dec),
        &mut rng,
        &mut split,
        &mut hash_in,
        &mut hash_out,
    );
    let mut tail2 = Vec::new();
    let again = enc.finish(&mut tail2);
    assert_eq!(tail2, tail);
    assert_eq!(&again.to_bytes()[..], &pointer.to_bytes()[..]);
    pt_out.clear();
    dec.update(&tail2, &mut pt_out).unwrap();
    hash_out.update(&pt_out);
    assert_eq!(dec.received(), ct_total);
    dec.finish().unwrap();
    assert_eq!(hash_in.finalize(), hash_out.finalize());
    assert!(ct.capacity() <= 2 * PIECE && pt_out.capacity() <= 2 * PIECE);
}

// ---------------------------------------------------------------------------------------------
// Tampering

/// Every truncation of a multi-chunk ciphertext — at every chunk boundary and mid-chunk, to
/// nothing included — is rejected, fed whole or in pieces; so is every extension.
#[test]
fn every_truncation_and_extension_rejected() {
    let mut rng = seeded("truncation");
    for size in [0, 1, CU, 3 * CU, 3 * CU + 500] {
        let plaintext = random_bytes(&mut rng, size);
        let key: [u8; 32] = random_bytes(&mut rng, 32).try_into().unwrap();
        let (pointer, ct) = encrypt(&key, C, &plaintext);
        for len in 0..ct.len() {
            let prefix = &ct[..len];
            assert_eq!(
                decrypt_pieces(&pointer, &[prefix], Some(&plaintext)),
                Err(AttachmentError::Unauthenticated),
                "size {size}, truncated to {len}"
            );
            if len % 97 == 0 {
                let pieces = random_pieces(&mut rng, prefix, 300);
                assert!(decrypt_pieces(&pointer, &pieces, Some(&plaintext)).is_err());
            }
        }
        for extra in [&[0u8][..], &[0; 16], &ct[..ct.len().min(CU + TAG_LEN)]] {
            let mut longer = ct.clone();
            longer.extend_from_slice(extra);
            assert_eq!(
                decrypt_all(&pointer, &longer),
                Err(AttachmentError::Unauthenticated)
            );
            // Extra bytes are rejected by the `update` that carries them.
            let mut dec = AttachmentDecryptor::new(&pointer);
            let mut out = Vec::new();
            dec.update(&ct, &mut out).unwrap();
            assert_eq!(
                dec.update(extra, &mut out),
                Err(AttachmentError::Unauthenticated)
            );
        }
        assert_eq!(decrypt_all(&pointer, &ct).unwrap(), plaintext);
    }
}

/// Every sequence of 1 to 5 of a 4-chunk file's chunks other than the genuine one — every
/// reordering, duplication, omission and repetition — is rejected.
#[test]
fn every_reorder_and_duplication_rejected() {
    let mut rng = seeded("reorder");
    let plaintext = random_bytes(&mut rng, 3 * CU + 100);
    let key: [u8; 32] = random_bytes(&mut rng, 32).try_into().unwrap();
    let (pointer, ct) = encrypt(&key, C, &plaintext);
    let chunks = chunks_of(&pointer, &ct);
    assert_eq!(chunks.len(), 4);
    let mut tried = 0;
    for len in 1..=5u32 {
        for code in 0..4usize.pow(len) {
            let order: Vec<usize> = (0..len).map(|d| code / 4usize.pow(d) % 4).collect();
            if order == [0, 1, 2, 3] {
                continue;
            }
            let forged: Vec<u8> = order.iter().flat_map(|&i| chunks[i].to_vec()).collect();
            assert_eq!(
                decrypt_pieces(&pointer, &[&forged], Some(&plaintext)),
                Err(AttachmentError::Unauthenticated),
                "{order:?}"
            );
            tried += 1;
        }
    }
    assert_eq!(tried, 4 + 16 + 64 + 256 + 1024 - 1);
    assert_eq!(decrypt_all(&pointer, &ct).unwrap(), plaintext);
}

/// A chunk of another file with the same chunk size and length, at the same or another index,
/// is rejected — streamed and by `decrypt_chunk`.
#[test]
fn chunk_swaps_between_files_rejected() {
    let mut rng = seeded("swap");
    let size = 4 * CU + 10;
    let pa = random_bytes(&mut rng, size);
    let pb = random_bytes(&mut rng, size);
    let (a, ct_a) = encrypt(&random_bytes(&mut rng, 32).try_into().unwrap(), C, &pa);
    let (b, ct_b) = encrypt(&random_bytes(&mut rng, 32).try_into().unwrap(), C, &pb);
    let (ca, cb) = (chunks_of(&a, &ct_a), chunks_of(&b, &ct_b));
    for i in 0..ca.len() {
        for (j, &other) in cb.iter().enumerate() {
            if ca[i].len() != other.len() {
                continue;
            }
            let mut forged = ca.clone();
            forged[i] = other;
            let forged: Vec<u8> = forged.concat();
            assert_eq!(
                decrypt_pieces(&a, &[&forged], Some(&pa)),
                Err(AttachmentError::Unauthenticated),
                "chunk {j} of B as chunk {i} of A"
            );
            assert_eq!(
                decrypt_chunk(&a, u32::try_from(i).unwrap(), other).map(|_| ()),
                Err(AttachmentError::Unauthenticated)
            );
        }
    }
}

/// Every single-bit flip of a 3-chunk ciphertext is rejected by `update` or `finish`; released
/// plaintext is always an authentic prefix, and nothing of the flipped chunk is released.
#[test]
fn every_bit_flip_rejected() {
    let mut rng = seeded("bit-flips");
    let plaintext = random_bytes(&mut rng, 2 * CU + 10);
    let key: [u8; 32] = random_bytes(&mut rng, 32).try_into().unwrap();
    let (pointer, ct) = encrypt(&key, C, &plaintext);
    let stride = CU + TAG_LEN;
    for bit in 0..ct.len() * 8 {
        let mut forged = ct.clone();
        forged[bit / 8] ^= 1 << (bit % 8);
        // Fed whole: rejected, nothing released.
        let mut dec = AttachmentDecryptor::new(&pointer);
        let mut out = Vec::new();
        assert_eq!(
            dec.update(&forged, &mut out),
            Err(AttachmentError::Unauthenticated),
            "bit {bit}"
        );
        assert!(out.is_empty());
        assert_eq!(dec.finish(), Err(AttachmentError::Unauthenticated));
        // Fed chunk by chunk: the chunks before the flipped one are released, then the flipped
        // one is rejected and nothing of it is released.
        let mut dec = AttachmentDecryptor::new(&pointer);
        let mut out = Vec::new();
        let flipped = bit / 8 / stride;
        for (i, piece) in forged.chunks(stride).enumerate() {
            let result = dec.update(piece, &mut out);
            if i < flipped {
                result.unwrap();
            } else {
                assert_eq!(result, Err(AttachmentError::Unauthenticated), "bit {bit}");
                break;
            }
        }
        assert_eq!(out[..], plaintext[..flipped * CU]);
        assert_eq!(dec.finish(), Err(AttachmentError::Unauthenticated));
    }
}

/// Flipping any bit of the pointer's key, digest or size makes decryption fail (or, for a size
/// that is out of range, the pointer is refused); flips of the encoded pointer are refused by
/// the decoder, fail decryption, or touch only the content type.
#[test]
fn pointer_bit_flips_rejected() {
    let mut rng = seeded("pointer-flips");
    let plaintext = random_bytes(&mut rng, 2 * CU + 77);
    let key: [u8; 32] = random_bytes(&mut rng, 32).try_into().unwrap();
    let (pointer, ct) = encrypt(&key, C, &plaintext);
    let rebuild = |key: &[u8; 32], digest: [u8; 32], size: u64| {
        AttachmentPointer::new(key, digest, size, C, pointer.content_type())
    };
    assert_eq!(
        decrypt_all(
            &rebuild(&key, *pointer.digest(), pointer.size()).unwrap(),
            &ct
        )
        .unwrap(),
        plaintext
    );
    for bit in 0..256 {
        let mut k = key;
        k[bit / 8] ^= 1 << (bit % 8);
        let p = rebuild(&k, *pointer.digest(), pointer.size()).unwrap();
        assert_eq!(decrypt_all(&p, &ct), Err(AttachmentError::Unauthenticated));
        let mut d = *pointer.digest();
        d[bit / 8] ^= 1 << (bit % 8);
        let p = rebuild(&key, d, pointer.size()).unwrap();
        // The chunks all authenticate; only the digest check at `finish` fails.
        let mut dec = AttachmentDecryptor::new(&p);
        let mut out = Vec::new();
        dec.update(&ct, &mut out).unwrap();
        assert_eq!(dec.finish(), Err(AttachmentError::Unauthenticated));
    }
    for bit in 0..64 {
        let size = pointer.size() ^ (1 << bit);
        match rebuild(&key, *pointer.digest(), size) {
            Ok(p) => assert_eq!(decrypt_all(&p, &ct), Err(AttachmentError::Unauthenticated)),
            Err(e) => assert_eq!(e, AttachmentError::TooLarge),
        }
    }
    let encoded = pointer.to_bytes();
    for bit in 0..encoded.len() * 8 {
        let mut forged = encoded.to_vec();
        forged[bit / 8] ^= 1 << (bit % 8);
        let Ok(p) = AttachmentPointer::from_bytes(&forged) else {
            continue;
        };
        let same = p.key() == pointer.key()
            && p.digest() == pointer.digest()
            && p.size() == pointer.size()
            && p.chunk_size() == pointer.chunk_size();
        if same {
            assert_ne!(p.content_type(), pointer.content_type(), "bit {bit}");
            assert_eq!(decrypt_all(&p, &ct).unwrap(), plaintext);
        } else {
            assert!(decrypt_all(&p, &ct).is_err(), "bit {bit}");
        }
    }
}

/// A final chunk sealed as non-final, and a non-final chunk sealed as final, do not open —
/// streamed, and through pointers whose size moves the final chunk.
#[test]
fn wrong_final_flag_rejected() {
    let mut rng = seeded("final-flag");
    let key: [u8; 32] = random_bytes(&mut rng, 32).try_into().unwrap();
    let plaintext = random_bytes(&mut rng, 2 * CU);
    let (pointer, ct) = encrypt(&key, C, &plaintext);
    let chunks = chunks_of(&pointer, &ct);
    // Reference: chunk 0 non-final, chunk 1 final.
    assert_eq!(
        encrypt_chunk(&key, C, 0, false, &plaintext[..CU]).unwrap(),
        chunks[0]
    );
    assert_eq!(
        encrypt_chunk(&key, C, 1, true, &plaintext[CU..]).unwrap(),
        chunks[1]
    );
    // Final chunk sealed as non-final.
    let bad_last = encrypt_chunk(&key, C, 1, false, &plaintext[CU..]).unwrap();
    let forged = [chunks[0], &bad_last[..]].concat();
    assert_eq!(
        decrypt_all(&pointer, &forged),
        Err(AttachmentError::Unauthenticated)
    );
    assert_eq!(
        decrypt_chunk(&pointer, 1, &bad_last).map(|_| ()),
        Err(AttachmentError::Unauthenticated)
    );
    // First chunk sealed as final.
    let bad_first = encrypt_chunk(&key, C, 0, true, &plaintext[..CU]).unwrap();
    let forged = [&bad_first[..], chunks[1]].concat();
    assert_eq!(
        decrypt_all(&pointer, &forged),
        Err(AttachmentError::Unauthenticated)
    );
    // A pointer claiming a longer file expects chunk 1 to be non-final; one claiming a shorter
    // file expects chunk 0 to be final (the truncation attack with a forged size).
    let longer = AttachmentPointer::new(&key, *pointer.digest(), 3 * CU as u64, C, "").unwrap();
    assert_eq!(
        decrypt_chunk(&longer, 1, chunks[1]).map(|_| ()),
        Err(AttachmentError::Unauthenticated)
    );
    assert_eq!(
        &decrypt_chunk(&longer, 0, chunks[0]).unwrap()[..],
        &plaintext[..CU]
    );
    let shorter = AttachmentPointer::new(&key, *pointer.digest(), CU as u64, C, "").unwrap();
    assert_eq!(
        decrypt_chunk(&shorter, 0, chunks[0]).map(|_| ()),
        Err(AttachmentError::Unauthenticated)
    );
    assert_eq!(
        decrypt_all(&shorter, chunks[0]),
        Err(AttachmentError::Unauthenticated)
    );
}

// ---------------------------------------------------------------------------------------------
// Range decryption and resume

/// `chunk_range` + `decrypt_range` give exactly the plaintext slice for every edge range and
/// random ranges; `decrypt_chunk` gives each chunk.
#[test]
fn range_decryption_matches_plaintext() {
    let mut rng = seeded("ranges");
    for size in [0usize, 1, CU, CU + 1, 10 * CU + 333] {
        let plaintext = random_bytes(&mut rng, size);
        let key: [u8; 32] = random_bytes(&mut rng, 32).try_into().unwrap();
        let (pointer, ct) = encrypt(&key, C, &plaintext);
        let mut ranges: Vec<Range<usize>> = vec![0..0, 0..size, size..size];
        for b in (0..=size).step_by(CU) {
            for s in [b.saturating_sub(1), b, b + 1] {
                for e in [s, s + 1, b + CU - 1, b + CU, b + CU + 1, size] {
                    ranges.push(s..e);
                }
            }
        }
        for _ in 0..200 {
            let s = below(&mut rng, size + 1);
            ranges.push(s..s + below(&mut rng, size - s + 1));
        }
        for r in ranges {
            if r.start > r.end || r.end > size {
                continue;
            }
            let range = r.start as u64..r.end as u64;
            let cr = chunk_range(&pointer, range.clone()).unwrap();
            assert!(cr.plaintext.start <= range.start && range.end <= cr.plaintext.end);
            assert_eq!(cr.plaintext.start, u64::from(cr.first_chunk) * u64::from(C));
            assert_eq!(
                cr.ciphertext.start,
                u64::from(cr.first_chunk) * (u64::from(C) + TAG_LEN as u64)
            );
            let fetched = &ct[cr.ciphertext.start as usize..cr.ciphertext.end as usize];
            assert_eq!(
                fetched.len() as u64,
                cr.plaintext.end - cr.plaintext.start
                    + TAG_LEN as u64 * u64::from(cr.last_chunk - cr.first_chunk + 1)
            );
            let got = decrypt_range(&pointer, range.clone(), fetched).unwrap();
            assert_eq!(&got[..], &plaintext[r.clone()], "size {size}, range {r:?}");
            // The fetched bytes must be exactly the covering chunks.
            if !fetched.is_empty() {
                assert_eq!(
                    decrypt_range(&pointer, range.clone(), &fetched[1..]).map(|_| ()),
                    Err(AttachmentError::Unauthenticated)
                );
            }
        }
        for (i, chunk) in chunks_of(&pointer, &ct).iter().enumerate() {
            let got = decrypt_chunk(&pointer, u32::try_from(i).unwrap(), chunk).unwrap();
            assert_eq!(
                &got[..],
                &plaintext[(i * CU).min(size)..((i + 1) * CU).min(size)]
            );
        }
        let n = u32::try_from(pointer.chunk_count()).unwrap();
        assert_eq!(
            decrypt_chunk(&pointer, n, &[0; 16]).map(|_| ()),
            Err(AttachmentError::ChunkOutOfRange)
        );
        let s = size as u64;
        for bad in [0..s + 1, s + 1..s + 1, Range { start: 1, end: 0 }] {
            if bad.start <= bad.end && bad.end <= s {
                continue;
            }
            assert_eq!(
                chunk_range(&pointer, bad.clone()),
                Err(AttachmentError::ChunkOutOfRange),
                "{bad:?}"
            );
        }
    }
}

/// Resume: the stream's chunks equal `encrypt_chunk`'s, and an encryptor rebuilt with the same
/// key from the same plaintext reproduces the uploaded prefix and the same pointer.
#[test]
fn resume_regenerates_identical_ciphertext() {
    let mut rng = seeded("resume");
    let plaintext = random_bytes(&mut rng, 9 * CU + 1);
    let mut enc = AttachmentEncryptor::new(&mut rng, C, "text/plain").unwrap();
    let key = *enc.key();
    let mut ct = Vec::new();
    enc.update(&plaintext[..4 * CU + 7], &mut ct).unwrap();
    let uploaded = ct.len(); // interrupted here: 4 chunks sent
    assert_eq!(uploaded, 4 * (CU + TAG_LEN));
    enc.update(&plaintext[4 * CU + 7..], &mut ct).unwrap();
    let pointer = enc.finish(&mut ct);

    let n = plaintext.len().div_ceil(CU);
    for (i, chunk) in plaintext.chunks(CU).enumerate() {
        let c = encrypt_chunk(&key, C, u32::try_from(i).unwrap(), i + 1 == n, chunk).unwrap();
        assert_eq!(c[..], ct[i * (CU + TAG_LEN)..][..c.len()]);
    }

    let mut resumed = AttachmentEncryptor::with_key(&key, C, "text/plain").unwrap();
    let mut out = Vec::new();
    resumed.update(&plaintext, &mut out).unwrap();
    let again = resumed.finish(&mut out);
    assert_eq!(
        out[..uploaded],
        ct[..uploaded],
        "the uploaded prefix is regenerated"
    );
    assert_eq!(out[uploaded..], ct[uploaded..]);
    assert_eq!(&again.to_bytes()[..], &pointer.to_bytes()[..]);
}

// ---------------------------------------------------------------------------------------------
// Arguments, decoding, redaction

#[test]
fn arguments_are_validated() {
    let mut rng = seeded("arguments");
    let key = [1u8; 32];
    for bad in [
        0,
        1,
        512,
        MIN_CHUNK_SIZE - 1,
        3000,
        MAX_CHUNK_SIZE * 2,
        u32::MAX,
    ] {
        assert_eq!(
            AttachmentEncryptor::new(&mut rng, bad, "").map(|_| ()),
            Err(AttachmentError::InvalidChunkSize(bad))
        );
        assert_eq!(
            encrypt_chunk(&key, bad, 0, true, b"").map(|_| ()),
            Err(AttachmentError::InvalidChunkSize(bad))
        );
        assert_eq!(
            ciphertext_len(1, bad),
            Err(AttachmentError::InvalidChunkSize(bad))
        );
    }
    // Nothing is drawn before the arguments are checked.
    let mut a = seeded("arguments/rng");
    let b = a.clone();
    let long = "x".repeat(MAX_CONTENT_TYPE_LEN + 1);
    assert_eq!(
        AttachmentEncryptor::new(&mut a, C, &long).map(|_| ()),
        Err(AttachmentError::InvalidContentType)
    );
    assert_eq!(a, b);
    assert!(AttachmentEncryptor::new(&mut a, C, &long[1..]).is_ok());
    assert_eq!(
        AttachmentPointer::new(&key, [0; 32], 0, C, &long).map(|_| ()),
        Err(AttachmentError::InvalidContentType)
    );
    assert_eq!(
        AttachmentPointer::new(&key, [0; 32], (1u64 << 32) * 1024 + 1, C, "").map(|_| ()),
        Err(AttachmentError::TooLarge)
    );
    assert!(AttachmentPointer::new(&key, [0; 32], (1u64 << 32) * 1024, C, "").is_ok());

    // encrypt_chunk lengths: non-final exactly C, final 1..=C (0 only at index 0).
    for (index, last, len, ok) in [
        (0, true, 0, true),
        (1, true, 0, false),
        (0, true, CU, true),
        (0, true, CU + 1, false),
        (3, false, CU, true),
        (3, false, CU - 1, false),
        (3, false, 0, false),
    ] {
        assert_eq!(
            encrypt_chunk(&key, C, index, last, &vec![0; len]).is_ok(),
            ok,
            "{index} {last} {len}"
        );
    }
    assert_eq!(
        encrypt_chunk(&key, C, 3, false, &[0; 1]).map(|_| ()),
        Err(AttachmentError::InvalidChunkLength)
    );
    assert_eq!(
        encrypt_chunk(&key, C, u32::MAX, false, &[0; CU]).map(|_| ()),
        Err(AttachmentError::TooLarge)
    );
    assert!(encrypt_chunk(&key, C, u32::MAX, true, &[0; CU]).is_ok());
}

#[test]
fn pointer_decoding_is_strict() {
    let key = [7u8; 32];
    let p = AttachmentPointer::new(&key, [9; 32], 5000, C, "image/gif").unwrap();
    let bytes = p.to_bytes();
    let err = |b: &[u8]| match AttachmentPointer::from_bytes(b) {
        Err(AttachmentError::Malformed(e)) => e,
        other => panic!("{other:?}"),
    };
    assert_eq!(err(&[]), confidant::DecodeError::Empty);
    let mut wrong = bytes.to_vec();
    wrong[0] = 0x12;
    assert_eq!(
        err(&wrong),
        confidant::DecodeError::UnsupportedVersion(0x12)
    );
    let mut big = bytes.to_vec();
    big.resize(MAX_POINTER_BYTES + 1, 0);
    assert_eq!(
        err(&big),
        confidant::DecodeError::TooLarge {
            len: MAX_POINTER_BYTES + 1,
            limit: MAX_POINTER_BYTES
        }
    );
    assert_eq!(err(&[0x91, 0x0a]), confidant::DecodeError::Protobuf);
    // Hand-built bodies: field validation in tag order.
    let body = |key: &[u8], digest: &[u8], size: u64, chunk: u32, ct: &[u8]| {
        let mut b = vec![0x91, 0x0a, key.len() as u8];
        b.extend_from_slice(key);
        b.extend_from_slice(&[0x12, digest.len() as u8]);
        b.extend_from_slice(digest);
        b.push(0x18);
        varint(&mut b, size);
        b.push(0x20);
        varint(&mut b, u64::from(chunk));
        b.extend_from_slice(&[0x2a, ct.len() as u8]);
        b.extend_from_slice(ct);
        b
    };
    let good = body(&key, &[9; 32], 5000, C, b"image/gif");
    assert_eq!(good, bytes.to_vec(), "canonical encoding");
    assert_eq!(
        err(&body(&key[..31], &[9; 32], 5000, C, b"")),
        confidant::DecodeError::InvalidField("key")
    );
    assert_eq!(
        err(&body(&key, &[9; 33], 5000, C, b"")),
        confidant::DecodeError::InvalidField("digest")
    );
    assert_eq!(
        err(&body(&key, &[9; 32], 5000, 1000, b"")),
        confidant::DecodeError::InvalidField("chunk_size")
    );
    assert_eq!(
        err(&body(&key, &[9; 32], 5000, 0, b"")),
        confidant::DecodeError::InvalidField("chunk_size")
    );
    assert_eq!(
        err(&body(&key, &[9; 32], (1 << 42) + 1, C, b"")),
        confidant::DecodeError::InvalidField("size")
    );
    assert_eq!(
        err(&body(&key, &[9; 32], 5000, C, &[0xff])),
        confidant::DecodeError::Protobuf
    );
    let mut long = body(&key, &[9; 32], 5000, C, b"");
    long.truncate(long.len() - 2);
    long.extend_from_slice(&[0x2a, 0x80, 0x02]);
    long.extend_from_slice(&[b'x'; 256]);
    assert_eq!(
        err(&long),
        confidant::DecodeError::InvalidField("content_type")
    );
    // Unknown fields are skipped.
    let mut unknown = good.clone();
    unknown.extend_from_slice(&[0x38, 0x01]);
    assert_eq!(
        &AttachmentPointer::from_bytes(&unknown).unwrap().to_bytes()[..],
        &bytes[..]
    );
    // Empty file, empty content type: the defaults are omitted.
    let empty = AttachmentPointer::new(&key, [9; 32], 0, C, "").unwrap();
    assert_eq!(empty.to_bytes().len(), 1 + 34 + 34 + 3);
    assert_eq!(
        AttachmentPointer::from_bytes(&empty.to_bytes())
            .unwrap()
            .size(),
        0
    );
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

#[test]
fn debug_redacts_the_key() {
    let key = [0xabu8; 32];
    let mut enc = AttachmentEncryptor::with_key(&key, C, "a/b").unwrap();
    let mut ct = Vec::new();
    enc.update(b"secret", &mut ct).unwrap();
    let enc_debug = format!("{enc:?}");
    let pointer = enc.finish(&mut ct);
    let dec = AttachmentDecryptor::new(&pointer);
    for text in [enc_debug, format!("{pointer:?}"), format!("{dec:?}")] {
        assert!(text.contains("redacted"), "{text}");
        assert!(!text.contains("171") && !text.contains("ab, ") && !text.contains("abab"));
        assert!(!text.contains("secret"));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any size, any slicing on both sides, any range: round trip and range decryption agree
    /// with the plaintext.
    #[test]
    fn prop_round_trip_and_ranges(
        size in 0usize..6000,
        seed in proptest::prelude::any::<u64>(),
        max_piece in 1usize..3000,
        a in 0usize..6001,
        b in 0usize..6001,
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let plaintext = random_bytes(&mut rng, size);
        let mut enc = AttachmentEncryptor::new(&mut rng, C, "").unwrap();
        let mut ct = Vec::new();
        for piece in random_pieces(&mut rng, &plaintext, max_piece) {
            enc.update(piece, &mut ct).unwrap();
        }
        let pointer = enc.finish(&mut ct);
        let pieces = random_pieces(&mut rng, &ct, max_piece);
        proptest::prop_assert_eq!(
            decrypt_pieces(&pointer, &pieces, Some(&plaintext)).unwrap(),
            plaintext.clone()
        );
        let (s, e) = (a.min(b).min(size), a.max(b).min(size));
        let cr = chunk_range(&pointer, s as u64..e as u64).unwrap();
        let fetched = &ct[cr.ciphertext.start as usize..cr.ciphertext.end as usize];
        let got = decrypt_range(&pointer, s as u64..e as u64, fetched).unwrap();
        proptest::prop_assert_eq!(&got[..], &plaintext[s..e]);
    }
}

// ---------------------------------------------------------------------------------------------
// Known-answer vectors (PROTOCOL.md §20.11)

fn vectors_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("test-vectors/attachment.json")
}

fn h(v: &Value, key: &str) -> Vec<u8> {
    hex::decode(v[key].as_str().unwrap_or_else(|| panic!("missing {key}"))).unwrap()
}

/// Every vector re-derived byte for byte through the crate (stream, `encrypt_chunk`, pointer
/// encoding), and independently: HKDF with the `hkdf` crate, nonces assembled by hand, every
/// chunk opened with `aes-gcm` directly, the digest with `sha2`, the pointer's protobuf by hand.
#[test]
fn attachment_vectors() {
    use aes_gcm::aead::{Aead, KeyInit, Nonce, Payload};

    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(vectors_path()).unwrap()).unwrap();
    assert_eq!(doc["profile"], ATTACHMENT_PROFILE_ID);
    assert_eq!(doc["type"], "attachment");
    let vectors = doc["vectors"].as_array().unwrap();
    let mut sizes: Vec<usize> = Vec::new();
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let key: [u8; 32] = h(v, "key").try_into().unwrap();
        let chunk_size = u32::try_from(v["chunk_size"].as_u64().unwrap()).unwrap();
        let content_type = v["content_type"].as_str().unwrap();
        let plaintext = h(v, "plaintext");
        let ciphertext = h(v, "ciphertext");
        sizes.push(plaintext.len());

        // Through the crate.
        let mut enc = AttachmentEncryptor::with_key(&key, chunk_size, content_type).unwrap();
        let mut ct = Vec::new();
        enc.update(&plaintext, &mut ct).unwrap();
        let pointer = enc.finish(&mut ct);
        assert_eq!(
            hex::encode(&ct),
            v["ciphertext"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            hex::encode(pointer.digest()),
            v["digest"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            hex::encode(&pointer.to_bytes()[..]),
            v["pointer"].as_str().unwrap(),
            "{name}"
        );
        let decoded = AttachmentPointer::from_bytes(&h(v, "pointer")).unwrap();
        assert_eq!(decoded.key(), &key);
        assert_eq!(decoded.size(), plaintext.len() as u64);
        assert_eq!(decoded.content_type(), content_type);
        assert_eq!(
            decrypt_all(&decoded, &ciphertext).unwrap(),
            plaintext,
            "{name}"
        );

        // Independently.
        let mut okm = [0u8; 39];
        hkdf::Hkdf::<sha2::Sha256>::new(Some(&[0u8; 32]), &key)
            .expand(
                &[
                    b"confidant/attachment/v1".as_slice(),
                    &chunk_size.to_be_bytes(),
                ]
                .concat(),
                &mut okm,
            )
            .unwrap();
        assert_eq!(
            hex::encode(&okm[..32]),
            v["aes_key"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            hex::encode(&okm[32..]),
            v["nonce_prefix"].as_str().unwrap(),
            "{name}"
        );
        let cipher = aes_gcm::Aes256Gcm::new(&<[u8; 32]>::try_from(&okm[..32]).unwrap().into());
        let chunks = v["chunks"].as_array().unwrap();
        let n = plaintext.len().div_ceil(chunk_size as usize).max(1);
        assert_eq!(chunks.len(), n, "{name}");
        let mut rest = &ciphertext[..];
        let mut opened = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == n;
            let mut nonce = okm[32..].to_vec();
            nonce.extend_from_slice(&u32::try_from(i).unwrap().to_be_bytes());
            nonce.push(u8::from(last));
            assert_eq!(
                hex::encode(&nonce),
                chunk["nonce"].as_str().unwrap(),
                "{name}"
            );
            assert_eq!(chunk["index"].as_u64(), Some(i as u64));
            assert_eq!(chunk["last"].as_bool(), Some(last));
            let pt_len = if last {
                plaintext.len() - i * chunk_size as usize
            } else {
                chunk_size as usize
            };
            let (this, tail) = rest.split_at(pt_len + 16);
            rest = tail;
            assert_eq!(
                hex::encode(this),
                chunk["ciphertext"].as_str().unwrap(),
                "{name}"
            );
            let nonce = Nonce::<aes_gcm::Aes256Gcm>::try_from(&nonce[..]).unwrap();
            opened.extend(
                cipher
                    .decrypt(
                        &nonce,
                        Payload {
                            msg: this,
                            aad: b"",
                        },
                    )
                    .unwrap(),
            );
            assert_eq!(
                encrypt_chunk(
                    &key,
                    chunk_size,
                    u32::try_from(i).unwrap(),
                    last,
                    &plaintext[i * chunk_size as usize..][..pt_len]
                )
                .unwrap(),
                this
            );
        }
        assert!(rest.is_empty());
        assert_eq!(opened, plaintext, "{name}");
        assert_eq!(
            hex::encode(sha256(&ciphertext)),
            v["digest"].as_str().unwrap()
        );
        let mut pointer_bytes = vec![0x91, 0x0a, 32];
        pointer_bytes.extend_from_slice(&key);
        pointer_bytes.extend_from_slice(&[0x12, 32]);
        pointer_bytes.extend_from_slice(&sha256(&ciphertext));
        if !plaintext.is_empty() {
            pointer_bytes.push(0x18);
            varint(&mut pointer_bytes, plaintext.len() as u64);
        }
        pointer_bytes.push(0x20);
        varint(&mut pointer_bytes, u64::from(chunk_size));
        if !content_type.is_empty() {
            pointer_bytes.extend_from_slice(&[0x2a, u8::try_from(content_type.len()).unwrap()]);
            pointer_bytes.extend_from_slice(content_type.as_bytes());
        }
        assert_eq!(
            hex::encode(&pointer_bytes),
            v["pointer"].as_str().unwrap(),
            "{name}"
        );
    }
    for size in [0, 1, 1023, 1024, 1025, 3000] {
        assert!(sizes.contains(&size), "no vector of {size} bytes");
    }
}

const VECTOR_CASES: [(&str, usize, &str); 6] = [
    ("attachment-empty", 0, ""),
    ("attachment-1-byte", 1, "text/plain"),
    ("attachment-1023-bytes", 1023, "application/octet-stream"),
    ("attachment-one-chunk", 1024, "image/jpeg"),
    ("attachment-one-chunk-plus-one", 1025, "application/pdf"),
    ("attachment-3000-bytes", 3000, "audio/ogg; codecs=opus"),
];

#[test]
#[ignore = "rewrites the frozen vectors; run on purpose and review the diff"]
fn regenerate_attachment_vectors() {
    let vectors: Vec<Value> = VECTOR_CASES
        .iter()
        .map(|&(name, size, content_type)| {
            let mut rng = seeded(name);
            let mut key = [0u8; 32];
            rng.fill_bytes(&mut key);
            let plaintext = random_bytes(&mut rng, size);
            let mut enc = AttachmentEncryptor::with_key(&key, C, content_type).unwrap();
            let mut ct = Vec::new();
            enc.update(&plaintext, &mut ct).unwrap();
            let pointer = enc.finish(&mut ct);
            let mut okm = [0u8; 39];
            hkdf::Hkdf::<sha2::Sha256>::new(Some(&[0u8; 32]), &key)
                .expand(
                    &[b"confidant/attachment/v1".as_slice(), &C.to_be_bytes()].concat(),
                    &mut okm,
                )
                .unwrap();
            let n = size.div_ceil(CU).max(1);
            let chunks: Vec<Value> = (0..n)
                .map(|i| {
                    let last = i + 1 == n;
                    let mut nonce = okm[32..].to_vec();
                    nonce.extend_from_slice(&u32::try_from(i).unwrap().to_be_bytes());
                    nonce.push(u8::from(last));
                    let start = i * (CU + TAG_LEN);
                    let end = if last { ct.len() } else { start + CU + TAG_LEN };
                    json!({
                        "index": i,
                        "last": last,
                        "nonce": hex::encode(nonce),
                        "ciphertext": hex::encode(&ct[start..end]),
                    })
                })
                .collect();
            json!({
                "name": name,
                "key": hex::encode(key),
                "chunk_size": C,
                "content_type": content_type,
                "plaintext": hex::encode(&plaintext),
                "aes_key": hex::encode(&okm[..32]),
                "nonce_prefix": hex::encode(&okm[32..]),
                "chunks": chunks,
                "ciphertext": hex::encode(&ct),
                "digest": hex::encode(pointer.digest()),
                "pointer": hex::encode(&pointer.to_bytes()[..]),
            })
        })
        .collect();
    let doc = json!({"profile": ATTACHMENT_PROFILE_ID, "type": "attachment", "vectors": vectors});
    std::fs::write(
        vectors_path(),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Throughput (measure with --release)

#[test]
#[ignore = "timing; run with --release --nocapture"]
fn throughput() {
    const SIZE: usize = 64 << 20;
    let mut rng = seeded("throughput");
    let plaintext = random_bytes(&mut rng, SIZE);
    for chunk_size in [DEFAULT_CHUNK_SIZE, 1 << 20] {
        let mut best = (f64::MAX, f64::MAX);
        let mut ct = Vec::with_capacity(SIZE + SIZE / 64);
        let mut out = Vec::with_capacity(SIZE);
        for _ in 0..5 {
            ct.clear();
            let t = Instant::now();
            let mut enc = AttachmentEncryptor::new(&mut rng, chunk_size, "").unwrap();
            for piece in plaintext.chunks(1 << 20) {
                enc.update(piece, &mut ct).unwrap();
            }
            let pointer = enc.finish(&mut ct);
            let e = t.elapsed().as_secs_f64();
            out.clear();
            let t = Instant::now();
            let mut dec = AttachmentDecryptor::new(&pointer);
            for piece in ct.chunks(1 << 20) {
                dec.update(piece, &mut out).unwrap();
            }
            dec.finish().unwrap();
            let d = t.elapsed().as_secs_f64();
            assert_eq!(out.len(), SIZE);
            best = (best.0.min(e), best.1.min(d));
        }
        let mb = SIZE as f64 / 1e6;
        println!(
            "chunk {:>7} B: encrypt {:.0} MB/s, decrypt {:.0} MB/s (64 MiB, best of 5)",
            chunk_size,
            mb / best.0,
            mb / best.1
        );
    }
    // The primitives alone, for comparison.
    let cipher = {
        use aes_gcm::aead::KeyInit;
        aes_gcm::Aes256Gcm::new(&[7u8; 32].into())
    };
    let mut buf = plaintext.clone();
    let t = Instant::now();
    for chunk in buf.chunks_mut(DEFAULT_CHUNK_SIZE as usize) {
        use aes_gcm::AeadInOut;
        let _ = cipher
            .encrypt_inout_detached(
                &aes_gcm::aead::Nonce::<aes_gcm::Aes256Gcm>::from([0u8; 12]),
                &[],
                chunk.into(),
            )
            .unwrap();
    }
    let g = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let d = sha256(&buf);
    let s = t.elapsed().as_secs_f64();
    println!(
        "raw AES-256-GCM {:.0} MB/s, raw SHA-256 {:.0} MB/s ({})",
        SIZE as f64 / 1e6 / g,
        SIZE as f64 / 1e6 / s,
        d[0]
    );
}
