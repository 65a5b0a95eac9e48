//! The skipped-message-key store `MKSKIPPED` (PROTOCOL.md §5.4): a map from `(ratchet key, n)`
//! to a message key, bounded by `MAX_STORED_SKIPPED` with the oldest insertion evicted first.
//!
//! Two ordered indexes make every operation `O(log n)`, so a full store costs an in-order
//! decrypt one short lookup, not a scan. Keys are public header values; ordered maps keep
//! iteration deterministic (snapshots are byte-stable) and are immune to hash flooding.

use std::collections::BTreeMap;

use crate::kdf::MessageKey;
use crate::limits::MAX_STORED_SKIPPED;

type Id = ([u8; 32], u32);

#[derive(Default)]
pub(crate) struct SkippedKeys {
    /// `(dh, n)` → (insertion sequence number, key).
    by_id: BTreeMap<Id, (u64, MessageKey)>,
    /// Insertion sequence number → `(dh, n)`; the first entry is the oldest.
    order: BTreeMap<u64, Id>,
    next_seq: u64,
}

impl SkippedKeys {
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }

    pub(crate) fn get(&self, dh: &[u8; 32], n: u32) -> Option<&MessageKey> {
        self.by_id.get(&(*dh, n)).map(|(_, key)| key)
    }

    pub(crate) fn remove(&mut self, dh: &[u8; 32], n: u32) -> Option<MessageKey> {
        let (seq, key) = self.by_id.remove(&(*dh, n))?;
        self.order.remove(&seq);
        Some(key)
    }

    /// `MKSKIPPED[dh, n] = key`: a new entry is the newest; assigning an existing entry replaces
    /// its key and keeps its age (map semantics). Then evicts the oldest beyond the limit.
    pub(crate) fn insert(&mut self, dh: [u8; 32], n: u32, key: MessageKey) {
        if let Some(entry) = self.by_id.get_mut(&(dh, n)) {
            entry.1 = key;
        } else {
            let seq = self.next_seq;
            self.next_seq = self.next_seq.saturating_add(1);
            self.by_id.insert((dh, n), (seq, key));
            self.order.insert(seq, (dh, n));
        }
        while self.by_id.len() > MAX_STORED_SKIPPED {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.by_id.remove(&oldest);
        }
    }

    /// Entries, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8; 32], u32, &MessageKey)> {
        self.order
            .values()
            .filter_map(|id| self.by_id.get(id).map(|(_, key)| (&id.0, id.1, key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> MessageKey {
        MessageKey::from_bytes([b; 32])
    }

    #[test]
    fn evicts_oldest_insertion_and_overwrites_in_place() {
        let mut s = SkippedKeys::default();
        for n in 0..u32::try_from(MAX_STORED_SKIPPED).unwrap() {
            s.insert([1; 32], n, key(1));
        }
        // Overwriting entry 0 keeps it the oldest.
        s.insert([1; 32], 0, key(2));
        assert_eq!(s.get(&[1; 32], 0).map(|k| k.as_bytes()[0]), Some(2));
        s.insert([2; 32], 0, key(3));
        assert_eq!(s.len(), MAX_STORED_SKIPPED);
        assert!(s.get(&[1; 32], 0).is_none());
        assert!(s.get(&[1; 32], 1).is_some());
        assert_eq!(
            s.iter().next().map(|(dh, n, _)| (*dh, n)),
            Some(([1; 32], 1))
        );
        assert_eq!(
            s.iter().last().map(|(dh, n, _)| (*dh, n)),
            Some(([2; 32], 0))
        );
        assert!(s.remove(&[1; 32], 5).is_some());
        assert!(s.remove(&[1; 32], 5).is_none());
        assert_eq!(s.len(), MAX_STORED_SKIPPED - 1);
        assert_eq!(s.iter().count(), MAX_STORED_SKIPPED - 1);
    }
}
