//! `attachment_decrypt`: chunked attachment encryption (PROTOCOL.md §20).
//!
//! The fixed attachments are the test vectors' (pointer, plaintext, ciphertext). Input:
//! `mode || vector || parameters || bytes`, the mode taken modulo 4:
//!
//! * 0, streaming: `piece || ciphertext` fed to an [`AttachmentDecryptor`] in pieces of
//!   `piece * 17 + 1` bytes, then `finish`;
//! * 1, one chunk: `index (1) || chunk ciphertext` to [`decrypt_chunk`];
//! * 2, a range: `start (2) || end (2) || ciphertext` to [`chunk_range`] and [`decrypt_range`];
//! * 3, round trip: `split (1) || split (1) || plaintext`, encrypted with an
//!   [`AttachmentEncryptor`] in pieces (chunk size from the vector byte), then decrypted in
//!   other pieces, by chunk and by range.
//!
//! Invariants: only authentic plaintext is ever released, in place (every output is a prefix
//! of the true plaintext; a failed update leaves the output as it was and poisons the
//! decryptor); `finish`, a chunk or a range succeeds only for exactly the true ciphertext (and
//! always does for it); encryption is independent of how the input is split, has the
//! advertised length, and round-trips through the decryptor, [`decrypt_chunk`],
//! [`decrypt_range`] and the pointer encoding.

use std::sync::OnceLock;

use confidant::attachment::{
    AttachmentDecryptor, AttachmentEncryptor, AttachmentPointer, chunk_range, ciphertext_len,
    decrypt_chunk, decrypt_range, encrypt_chunk,
};

use crate::vectors::{self, hex};

/// One test-vector attachment.
pub struct Vector {
    /// The encoded pointer.
    pub pointer: Vec<u8>,
    /// The file.
    pub plaintext: Vec<u8>,
    /// Its ciphertext.
    pub ciphertext: Vec<u8>,
    /// Each chunk's ciphertext.
    pub chunks: Vec<Vec<u8>>,
}

fn build() -> Vec<Vector> {
    vectors::vectors(vectors::ATTACHMENT)
        .iter()
        .map(|v| Vector {
            pointer: hex(v, "pointer"),
            plaintext: hex(v, "plaintext"),
            ciphertext: hex(v, "ciphertext"),
            chunks: v
                .get("chunks")
                .and_then(serde_json::Value::as_array)
                .expect("chunks")
                .iter()
                .map(|c| hex(c, "ciphertext"))
                .collect(),
        })
        .collect()
}

/// The vectors, parsed once per process.
pub fn fixture() -> &'static [Vector] {
    static F: OnceLock<Vec<Vector>> = OnceLock::new();
    F.get_or_init(build)
}

fn pointer(v: &Vector) -> AttachmentPointer {
    AttachmentPointer::from_bytes(&v.pointer).expect("vector pointer parses")
}

/// Streams `ciphertext` through a decryptor in `piece`-byte pieces; returns whether `finish`
/// succeeded and the released plaintext, checking the online invariants on the way.
fn stream(p: &AttachmentPointer, ciphertext: &[u8], piece: usize, truth: &[u8]) -> (bool, Vec<u8>) {
    let mut dec = AttachmentDecryptor::new(p);
    let mut out = Vec::new();
    for chunk in ciphertext.chunks(piece.max(1)) {
        let before = out.clone();
        if dec.update(chunk, &mut out).is_err() {
            assert!(out == before, "a failed update changed the output");
            let mut more = Vec::new();
            assert!(
                dec.update(&[0], &mut more).is_err() && more.is_empty(),
                "a decryptor kept working after an error"
            );
            return (false, out);
        }
        assert!(
            truth.starts_with(&out),
            "the decryptor released plaintext that is not the file's prefix"
        );
    }
    let finished = dec.finish().is_ok();
    if finished {
        assert!(
            out == truth,
            "finish succeeded but the plaintext is not the file"
        );
    }
    (finished, out)
}

fn streaming(v: &Vector, piece: u8, ciphertext: &[u8]) {
    let p = pointer(v);
    let (finished, _) = stream(&p, ciphertext, usize::from(piece) * 17 + 1, &v.plaintext);
    assert_eq!(
        finished,
        ciphertext == v.ciphertext,
        "finish must succeed exactly for the true ciphertext"
    );
}

fn one_chunk(v: &Vector, index: u8, bytes: &[u8]) {
    let p = pointer(v);
    let index_usize = usize::from(index);
    let result = decrypt_chunk(&p, u32::from(index), bytes);
    let genuine = v.chunks.get(index_usize).is_some_and(|c| c == bytes);
    match result {
        Ok(plaintext) => {
            assert!(genuine, "a chunk that is not the true chunk decrypted");
            let c = usize::try_from(p.chunk_size()).expect("chunk size");
            let start = index_usize * c;
            assert!(
                v.plaintext.get(start..start + plaintext.len()) == Some(&plaintext[..]),
                "a chunk decrypted to the wrong plaintext"
            );
        }
        Err(e) => assert!(!genuine, "the true chunk failed to decrypt: {e:?}"),
    }
}

fn range(v: &Vector, start: u64, end: u64, ciphertext: &[u8]) {
    let p = pointer(v);
    let Ok(cr) = chunk_range(&p, start..end) else {
        assert!(
            start > end || end > p.size(),
            "chunk_range refused a range inside the file"
        );
        let _ = decrypt_range(&p, start..end, ciphertext);
        return;
    };
    assert!(
        cr.first_chunk <= cr.last_chunk
            && cr.plaintext.start <= start
            && end <= cr.plaintext.end
            && cr.plaintext.end <= p.size()
            && cr.ciphertext.start <= cr.ciphertext.end
            && cr.ciphertext.end <= p.ciphertext_len(),
        "chunk_range does not cover the range: {cr:?} for {start}..{end}"
    );
    let span = usize::try_from(cr.ciphertext.start).expect("small")
        ..usize::try_from(cr.ciphertext.end).expect("small");
    let genuine = v.ciphertext.get(span) == Some(ciphertext);
    match decrypt_range(&p, start..end, ciphertext) {
        Ok(plaintext) => {
            assert!(
                genuine,
                "a range decrypted from ciphertext that is not the file's"
            );
            let want = usize::try_from(start).expect("small")..usize::try_from(end).expect("small");
            assert!(
                v.plaintext.get(want) == Some(&plaintext[..]),
                "a range decrypted to the wrong plaintext"
            );
        }
        Err(e) => assert!(!genuine, "the true range failed to decrypt: {e:?}"),
    }
}

fn round_trip(chunk_shift: u8, split: u8, split2: u8, plaintext: &[u8]) {
    let key = [0x42u8; 32];
    let chunk_size = 1024u32 << (chunk_shift % 3);
    let content_type = "application/x-fuzz";
    let piece = usize::from(split) * 13 + 1;
    let mut enc = AttachmentEncryptor::with_key(&key, chunk_size, content_type).expect("encryptor");
    let mut ciphertext = Vec::new();
    for part in plaintext.chunks(piece) {
        enc.update(part, &mut ciphertext).expect("update");
    }
    let p = enc.finish(&mut ciphertext);
    let mut whole =
        AttachmentEncryptor::with_key(&key, chunk_size, content_type).expect("encryptor");
    let mut once = Vec::new();
    whole.update(plaintext, &mut once).expect("update");
    let p_once = whole.finish(&mut once);
    assert!(
        ciphertext == once,
        "ciphertext depends on how the plaintext was split"
    );
    assert!(
        *p.to_bytes() == *p_once.to_bytes(),
        "pointer depends on the split"
    );
    let size = u64::try_from(plaintext.len()).expect("small");
    assert_eq!(p.size(), size, "pointer size");
    assert_eq!(
        ciphertext_len(size, chunk_size).ok(),
        Some(u64::try_from(ciphertext.len()).expect("small")),
        "ciphertext length differs from ciphertext_len"
    );
    let parsed = AttachmentPointer::from_bytes(&p.to_bytes()).expect("pointer parses");
    assert!(
        *parsed.to_bytes() == *p.to_bytes(),
        "pointer does not round-trip"
    );

    let (finished, out) = stream(
        &parsed,
        &ciphertext,
        usize::from(split2) * 29 + 1,
        plaintext,
    );
    assert!(
        finished && out == plaintext,
        "round trip through the decryptor failed"
    );

    let c = usize::try_from(chunk_size).expect("chunk size");
    let stride = c + 16;
    let chunks = usize::try_from(p.chunk_count()).expect("small");
    for index in [0, chunks / 2, chunks - 1] {
        let start = index * stride;
        let end = (start + stride).min(ciphertext.len());
        let bytes = &ciphertext[start..end];
        let pt = decrypt_chunk(&p, u32::try_from(index).expect("small"), bytes)
            .expect("a true chunk decrypts");
        let pstart = index * c;
        assert!(
            plaintext.get(pstart..pstart + pt.len()) == Some(&pt[..]),
            "chunk plaintext"
        );
        let again = encrypt_chunk(
            &key,
            chunk_size,
            u32::try_from(index).expect("small"),
            index + 1 == chunks,
            &pt,
        )
        .expect("encrypt_chunk");
        assert!(
            again == bytes,
            "encrypt_chunk differs from the encryptor's chunk"
        );
    }
    let a = usize::from(split) * plaintext.len() / 256;
    let b = a + (usize::from(split2) * (plaintext.len() - a)) / 256;
    let (a, b) = (
        u64::try_from(a).expect("small"),
        u64::try_from(b).expect("small"),
    );
    let cr = chunk_range(&p, a..b).expect("range inside the file");
    let span = usize::try_from(cr.ciphertext.start).expect("small")
        ..usize::try_from(cr.ciphertext.end).expect("small");
    let pt = decrypt_range(&p, a..b, &ciphertext[span]).expect("a true range decrypts");
    assert!(
        pt[..] == plaintext[usize::try_from(a).expect("small")..usize::try_from(b).expect("small")],
        "range plaintext"
    );
}

/// The `attachment_decrypt` target.
pub fn run(data: &[u8]) {
    let vs = fixture();
    let [mode, vector, rest @ ..] = data else {
        return;
    };
    let v = &vs[usize::from(*vector) % vs.len()];
    match mode % 4 {
        0 => {
            if let [piece, ciphertext @ ..] = rest {
                streaming(v, *piece, ciphertext);
            }
        }
        1 => {
            if let [index, bytes @ ..] = rest {
                one_chunk(v, *index, bytes);
            }
        }
        2 => {
            if let [s0, s1, e0, e1, ciphertext @ ..] = rest {
                let start = u64::from(u16::from_be_bytes([*s0, *s1]));
                let end = u64::from(u16::from_be_bytes([*e0, *e1]));
                range(v, start, end, ciphertext);
            }
        }
        _ => {
            if let [split, split2, plaintext @ ..] = rest {
                round_trip(*vector, *split, *split2, plaintext);
            }
        }
    }
}

/// Seeds: each vector's ciphertext streamed, each chunk, a range of each, a round trip.
#[must_use]
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, v) in fixture().iter().enumerate() {
        let i8 = u8::try_from(i).unwrap_or(0);
        out.push((
            format!("stream-{i}"),
            [&[0, i8, 3][..], &v.ciphertext].concat(),
        ));
        for (j, c) in v.chunks.iter().enumerate() {
            let j8 = u8::try_from(j).unwrap_or(0);
            out.push((format!("chunk-{i}-{j}"), [&[1, i8, j8][..], c].concat()));
        }
        let size = u16::try_from(v.plaintext.len()).unwrap_or(0);
        let p = pointer(v);
        if let Ok(cr) = chunk_range(&p, u64::from(size / 3)..u64::from(size)) {
            let span = usize::try_from(cr.ciphertext.start).unwrap_or(0)
                ..usize::try_from(cr.ciphertext.end).unwrap_or(0);
            let mut seed = vec![2, i8];
            seed.extend_from_slice(&(size / 3).to_be_bytes());
            seed.extend_from_slice(&size.to_be_bytes());
            seed.extend_from_slice(&v.ciphertext[span]);
            out.push((format!("range-{i}"), seed));
        }
        out.push((
            format!("round-trip-{i}"),
            [&[3, i8, 5, 9][..], &v.plaintext].concat(),
        ));
    }
    out
}
