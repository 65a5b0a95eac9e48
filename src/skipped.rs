//! The skipped-message-key store `MKSKIPPED` (PROTOCOL.md §5.4): a map from `(ratchet key, n)`
//! to a message key, bounded by `MAX_STORED_SKIPPED` with the oldest insertion evicted first.
//!
//! Keys are grouped by chain (ratchet key), and an insertion-ordered index drives eviction, so
//! every operation is `O(log n)`. A lookup for a chain with no stored keys, the common case of an
//! in-order message, touches only the small per-chain map, however full the store is. Ordered maps
//! keep iteration deterministic (snapshots are byte-stable) and are immune to hash flooding; the
//! keys are public header values.

use std::collections::BTreeMap;

use crate::kdf::MessageKey;
use crate::limits::MAX_STORED_SKIPPED;

/// Generic over the chain identifier `C`: the ratchet public key for pairwise sessions, the
/// sender-key id for groups (PROTOCOL.md §17.5).
pub(crate) struct SkippedKeys<C = [u8; 32]> {
    /// Chain → n → (insertion sequence number, key). No chain maps to an empty map.
    by_chain: BTreeMap<C, BTreeMap<u32, (u64, MessageKey)>>,
    /// Insertion sequence number → `(chain, n)`; the first entry is the oldest.
    order: BTreeMap<u64, (C, u32)>,
    next_seq: u64,
}

impl<C> Default for SkippedKeys<C> {
    fn default() -> Self {
        Self {
            by_chain: BTreeMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
        }
    }
}

impl<C: Ord + Copy> SkippedKeys<C> {
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn get(&self, dh: &C, n: u32) -> Option<&MessageKey> {
        self.by_chain.get(dh)?.get(&n).map(|(_, key)| key)
    }

    pub(crate) fn remove(&mut self, dh: &C, n: u32) -> Option<MessageKey> {
        let chain = self.by_chain.get_mut(dh)?;
        let (seq, key) = chain.remove(&n)?;
        if chain.is_empty() {
            self.by_chain.remove(dh);
        }
        self.order.remove(&seq);
        Some(key)
    }

    /// `MKSKIPPED[dh, n] = key`: a new entry is the newest; assigning an existing entry replaces
    /// its key and keeps its age (map semantics). Then evicts the oldest beyond the limit.
    pub(crate) fn insert(&mut self, dh: C, n: u32, key: MessageKey) {
        let chain = self.by_chain.entry(dh).or_default();
        if let Some(entry) = chain.get_mut(&n) {
            entry.1 = key;
        } else {
            let seq = self.next_seq;
            self.next_seq = self.next_seq.saturating_add(1);
            chain.insert(n, (seq, key));
            self.order.insert(seq, (dh, n));
        }
        while self.order.len() > MAX_STORED_SKIPPED {
            let Some((_, (old_dh, old_n))) = self.order.pop_first() else {
                break;
            };
            if let Some(chain) = self.by_chain.get_mut(&old_dh) {
                chain.remove(&old_n);
                if chain.is_empty() {
                    self.by_chain.remove(&old_dh);
                }
            }
        }
    }

    /// Drops every key of chain `dh`.
    pub(crate) fn remove_chain(&mut self, dh: &C) {
        if let Some(chain) = self.by_chain.remove(dh) {
            for (seq, _) in chain.values() {
                self.order.remove(seq);
            }
        }
    }

    /// Whether chain `dh` has stored keys.
    #[allow(dead_code)]
    pub(crate) fn has_chain(&self, dh: &C) -> bool {
        self.by_chain.contains_key(dh)
    }

    /// Entries, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&C, u32, &MessageKey)> {
        self.order.values().filter_map(|(dh, n)| {
            let (stored_dh, chain) = self.by_chain.get_key_value(dh)?;
            chain.get(n).map(|(_, key)| (stored_dh, *n, key))
        })
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
        // Emptied chains disappear.
        assert!(s.remove(&[2; 32], 0).is_some());
        assert!(!s.by_chain.contains_key(&[2; 32]));
    }
}
