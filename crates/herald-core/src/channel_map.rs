//! A sharded table of channels whose every operation hashes the channel id once.
//!
//! The hub (subscribers) and the in-memory history both keep their channels in shards, one
//! lock per shard, and are looked up on every publish and every subscribe. With a `HashMap`
//! per shard, a lookup hashed the id twice: once to pick the shard, once again inside the
//! shard's map. Here [`ChannelHasher::hash`] is computed once and both picks the shard and
//! finds the entry. The hash keeps a per-process random key: channel ids come from clients,
//! and a keyed hash is what keeps them from flooding one bucket.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

use crate::channel::ChannelId;

/// The keyed hash of channel ids, one per table set.
#[derive(Debug, Default)]
pub struct ChannelHasher(RandomState);

/// One channel id's hash, from [`ChannelHasher::hash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelHash(u64);

impl ChannelHasher {
    /// A hasher with a fresh random key.
    pub fn new() -> Self {
        Self::default()
    }

    /// The hash of `cid`.
    pub fn hash(&self, cid: &ChannelId) -> ChannelHash {
        ChannelHash(self.0.hash_one(cid))
    }
}

impl ChannelHash {
    /// The shard (of `shards`) the channel lives in. Taken from bits the table does not use
    /// to place entries (it uses the lowest bits and the top seven), so the entries of one
    /// shard still spread over all its buckets.
    pub fn shard(self, shards: usize) -> usize {
        ((self.0 >> 32) as usize) % shards
    }
}

/// One shard's channels and their values.
#[derive(Debug)]
pub struct ChannelMap<V> {
    table: HashTable<(ChannelId, V)>,
}

impl<V> Default for ChannelMap<V> {
    fn default() -> Self {
        Self {
            table: HashTable::new(),
        }
    }
}

impl<V> ChannelMap<V> {
    /// The value of `cid`, whose hash is `hash`.
    pub fn get(&self, hash: ChannelHash, cid: &ChannelId) -> Option<&V> {
        self.table
            .find(hash.0, |(key, _)| key == cid)
            .map(|(_, value)| value)
    }

    /// The value of `cid`, whose hash is `hash`, to change.
    pub fn get_mut(&mut self, hash: ChannelHash, cid: &ChannelId) -> Option<&mut V> {
        self.table
            .find_mut(hash.0, |(key, _)| key == cid)
            .map(|(_, value)| value)
    }

    /// Adds `cid` (hash `hash`, not in the map) with `value`. `hasher` rehashes the other
    /// entries if the table grows.
    pub fn insert_new(
        &mut self,
        hasher: &ChannelHasher,
        hash: ChannelHash,
        cid: ChannelId,
        value: V,
    ) {
        debug_assert!(
            self.get(hash, &cid).is_none(),
            "{cid} is already in the map"
        );
        self.table
            .insert_unique(hash.0, (cid, value), |(key, _)| hasher.hash(key).0);
    }

    /// Removes `cid` (hash `hash`); its value, if it was there.
    pub fn remove(&mut self, hash: ChannelHash, cid: &ChannelId) -> Option<V> {
        self.table
            .find_entry(hash.0, |(key, _)| key == cid)
            .ok()
            .map(|entry| entry.remove().0 .1)
    }

    /// Keeps only the channels for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&ChannelId, &mut V) -> bool) {
        self.table.retain(|(cid, value)| keep(cid, value));
    }

    /// Number of channels.
    pub fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cid(text: &str) -> ChannelId {
        ChannelId::parse(text).expect("valid id")
    }

    #[test]
    fn finds_what_was_inserted_and_forgets_what_was_removed() {
        let hasher = ChannelHasher::new();
        let mut map = ChannelMap::default();
        let ids: Vec<ChannelId> = (0..1000).map(|i| cid(&format!("ch{i}"))).collect();
        for (i, id) in ids.iter().enumerate() {
            let hash = hasher.hash(id);
            assert_eq!(map.get(hash, id), None);
            map.insert_new(&hasher, hash, id.clone(), i);
            *map.get_mut(hash, id).expect("just inserted") += 1;
        }
        assert_eq!(map.len(), 1000);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(map.get(hasher.hash(id), id), Some(&(i + 1)), "{id}");
        }
        // Equal text is the same channel, whatever allocation holds it.
        assert_eq!(map.get(hasher.hash(&cid("ch7")), &cid("ch7")), Some(&8));
        for id in ids.iter().step_by(2) {
            assert!(map.remove(hasher.hash(id), id).is_some());
            assert!(map.remove(hasher.hash(id), id).is_none());
        }
        map.retain(|id, _| id.as_str() != "ch1");
        assert_eq!(map.len(), 499);
        assert!(map.get(hasher.hash(&ids[1]), &ids[1]).is_none());
        assert!(map.get_mut(hasher.hash(&ids[3]), &ids[3]).is_some());
    }

    #[test]
    fn shards_are_all_used() {
        let hasher = ChannelHasher::new();
        let mut used = [0usize; 64];
        for i in 0..6400 {
            used[hasher.hash(&cid(&format!("c{i}"))).shard(64)] += 1;
        }
        assert!(used.iter().all(|&n| n > 40), "{used:?}");
    }
}
