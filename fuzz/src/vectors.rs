//! The frozen test vectors (`../test-vectors/*.json`) the fixtures build on, compiled in so a
//! fuzz binary needs no files at run time.

use serde_json::Value;

/// `sealed.json`: sealed-sender envelopes, uploads and certificates, with every seed.
pub const SEALED: &str = include_str!("../../test-vectors/sealed.json");
/// `attachment.json`: pointers, plaintexts and ciphertexts.
pub const ATTACHMENT: &str = include_str!("../../test-vectors/attachment.json");
/// `device_list.json`: signed device lists and link requests with their account keys.
pub const DEVICE_LIST: &str = include_str!("../../test-vectors/device_list.json");
/// `safety_number.json`: safety numbers and their scannable forms.
pub const SAFETY_NUMBER: &str = include_str!("../../test-vectors/safety_number.json");

/// The `vectors` array of a vector document.
///
/// # Panics
/// If the document is not a vector file (a fixture bug: they are compiled in).
#[must_use]
pub fn vectors(document: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(document).expect("test-vector JSON");
    doc.get("vectors")
        .and_then(Value::as_array)
        .cloned()
        .expect("a `vectors` array")
}

/// A hex field as bytes (`None` if absent or `null`).
#[must_use]
pub fn hex_opt(v: &Value, key: &str) -> Option<Vec<u8>> {
    v.get(key)?.as_str().map(|s| hex::decode(s).expect("hex"))
}

/// A hex field as bytes.
///
/// # Panics
/// If it is absent.
#[must_use]
pub fn hex(v: &Value, key: &str) -> Vec<u8> {
    hex_opt(v, key).unwrap_or_else(|| panic!("vector field {key}"))
}

/// A 32-byte hex field.
///
/// # Panics
/// If it is absent or not 32 bytes.
#[must_use]
pub fn hex32(v: &Value, key: &str) -> [u8; 32] {
    hex(v, key).try_into().expect("32 bytes")
}

/// An integer field.
///
/// # Panics
/// If it is absent.
#[must_use]
pub fn int(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("vector field {key}"))
}
