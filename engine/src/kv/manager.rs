//! [`KvManager`]: per-sequence block tables on top of the [`BlockPool`], with prefix caching.
//!
//! A full, computed block is identified by a hash chained over everything before it:
//! `hash(key, parent block hash, the block's token ids, adapter id)`, and for the first block
//! the request's cache salt in place of a parent. Two sequences with the same first
//! `k * block_size` tokens (and the same adapter and salt) therefore share those `k` blocks; a
//! different adapter changes every K/V, and a different salt (one per tenant, say) changes the
//! whole chain, so neither cached-token counts nor timing tell one tenant about another's
//! prompts. The hash is SHA-256 keyed with a random per-manager key, cut to 128 bits: nobody
//! can craft a prompt whose blocks collide with another's (vLLM's CVE-2025-25183).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use super::pool::{BlockHash, BlockPool};
use crate::ids::{AdapterId, BlockId, SeqId};

/// The secret mixed into every block hash, drawn once per [`KvManager`] (hashes never leave it).
#[derive(Clone, Copy, Debug)]
pub struct HashKey([u8; 16]);

impl HashKey {
    pub fn random() -> Self {
        Self(rand::random())
    }
}

/// The hash of one full block given its parent's hash; `salt` counts for the first block only
/// (its hash is every later block's ancestor). Every field is tagged or length-prefixed, so
/// no two different inputs encode alike.
pub fn block_hash(
    key: &HashKey,
    parent: Option<BlockHash>,
    tokens: &[u32],
    adapter: Option<AdapterId>,
    salt: Option<&str>,
) -> BlockHash {
    let mut h = Sha256::new();
    h.update(key.0);
    match (parent, salt) {
        (Some(p), _) => {
            h.update([1]);
            h.update(p.0.to_le_bytes());
        }
        (None, Some(s)) => {
            h.update([2]);
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        (None, None) => h.update([0]),
    }
    match adapter {
        Some(a) => {
            h.update([1]);
            h.update(a.0.to_le_bytes());
        }
        None => h.update([0]),
    }
    h.update((tokens.len() as u64).to_le_bytes());
    let mut buf = [0u8; 256];
    for chunk in tokens.chunks(buf.len() / 4) {
        for (b, t) in buf.chunks_exact_mut(4).zip(chunk) {
            b.copy_from_slice(&t.to_le_bytes());
        }
        h.update(&buf[..chunk.len() * 4]);
    }
    let digest = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    BlockHash(u128::from_le_bytes(first))
}

/// Blocks found in the prefix cache for a sequence that is about to start.
#[derive(Clone, Debug, Default)]
pub struct CachedPrefix {
    blocks: Vec<BlockId>,
    hashes: Vec<BlockHash>,
    block_size: usize,
}

impl CachedPrefix {
    /// Tokens whose K/V the prefix already holds.
    pub fn num_tokens(&self) -> usize {
        self.blocks.len() * self.block_size
    }
}

/// Prefix-cache counters, in tokens (as vLLM reports them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefixCacheStats {
    /// Prompt tokens of sequences that started.
    pub queries: u64,
    /// Of those, tokens found in the cache.
    pub hits: u64,
}

#[derive(Debug, Default)]
struct SeqBlocks {
    blocks: Vec<BlockId>,
    /// Hashes of the first `hashes.len()` blocks (full and computed).
    hashes: Vec<BlockHash>,
}

/// Owns the block pool and every sequence's block table.
#[derive(Debug)]
pub struct KvManager {
    pool: BlockPool,
    block_size: usize,
    prefix_caching: bool,
    seqs: HashMap<SeqId, SeqBlocks>,
    stats: PrefixCacheStats,
    key: HashKey,
}

impl KvManager {
    pub fn new(num_blocks: usize, block_size: usize, prefix_caching: bool) -> Self {
        assert!(block_size > 0, "block_size must be > 0");
        Self {
            pool: BlockPool::new(num_blocks),
            block_size,
            prefix_caching,
            seqs: HashMap::new(),
            stats: Default::default(),
            key: HashKey::random(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn pool(&self) -> &BlockPool {
        &self.pool
    }

    pub fn stats(&self) -> PrefixCacheStats {
        self.stats
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// The longest run of cached full blocks at the start of `tokens` (cached for the same
    /// adapter and salt). At least one token is always left to compute, because the last
    /// prompt token's logits are needed to sample.
    pub fn find_cached_prefix(&self, tokens: &[u32], adapter: Option<AdapterId>, salt: Option<&str>) -> CachedPrefix {
        let mut prefix = CachedPrefix { block_size: self.block_size, ..Default::default() };
        if !self.prefix_caching || tokens.is_empty() {
            return prefix;
        }
        let max_blocks = (tokens.len() - 1) / self.block_size;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let h = block_hash(&self.key, prefix.hashes.last().copied(), chunk, adapter, salt);
            match self.pool.lookup(h) {
                Some(b) => {
                    prefix.blocks.push(b);
                    prefix.hashes.push(h);
                }
                None => break,
            }
        }
        prefix
    }

    /// Makes `seq` hold blocks for `total_tokens` tokens. A sequence seen for the first time
    /// starts from `prefix` (`None`: no shared blocks). Returns false, changing nothing, when
    /// the pool is short.
    pub fn allocate(&mut self, seq: SeqId, prefix: Option<CachedPrefix>, total_tokens: usize) -> bool {
        let want = self.blocks_for(total_tokens);
        match self.seqs.get_mut(&seq) {
            Some(s) => {
                let need = want.saturating_sub(s.blocks.len());
                if need == 0 {
                    return true;
                }
                match self.pool.allocate(need) {
                    Some(new) => {
                        s.blocks.extend(new);
                        true
                    }
                    None => false,
                }
            }
            None => {
                let prefix = prefix.unwrap_or_default();
                let need = want.saturating_sub(prefix.blocks.len());
                // Cached blocks nobody holds are counted as free; taking them uses that room.
                let reclaimed = prefix.blocks.iter().filter(|&&b| self.pool.ref_count(b) == 0).count();
                if self.pool.num_free() < need + reclaimed {
                    return false;
                }
                self.pool.touch(&prefix.blocks);
                let new = self.pool.allocate(need).expect("room was checked above");
                let mut blocks = prefix.blocks;
                blocks.extend(new);
                self.seqs.insert(seq, SeqBlocks { blocks, hashes: prefix.hashes });
                true
            }
        }
    }

    /// Counts one new sequence's prompt lookup in the prefix-cache stats.
    pub fn record_lookup(&mut self, prompt_tokens: usize, hit_tokens: usize) {
        self.stats.queries += prompt_tokens as u64;
        self.stats.hits += hit_tokens as u64;
    }

    /// Registers the blocks of `seq` that became full and computed (its first `num_computed` of
    /// `tokens` have K/V now) in the prefix cache.
    pub fn cache_computed(
        &mut self,
        seq: SeqId,
        tokens: &[u32],
        num_computed: usize,
        adapter: Option<AdapterId>,
        salt: Option<&str>,
    ) {
        if !self.prefix_caching {
            return;
        }
        let Some(s) = self.seqs.get_mut(&seq) else { return };
        let full = (num_computed.min(tokens.len()) / self.block_size).min(s.blocks.len());
        for i in s.hashes.len()..full {
            let chunk = &tokens[i * self.block_size..(i + 1) * self.block_size];
            let h = block_hash(&self.key, s.hashes.last().copied(), chunk, adapter, salt);
            self.pool.insert_cached(s.blocks[i], h);
            s.hashes.push(h);
        }
    }

    /// Returns every block of `seq` to the pool (back to front, for eviction order).
    pub fn free(&mut self, seq: SeqId) {
        if let Some(s) = self.seqs.remove(&seq) {
            self.pool.free(s.blocks.into_iter().rev());
        }
    }

    pub fn block_table(&self, seq: SeqId) -> &[BlockId] {
        self.seqs.get(&seq).map_or(&[], |s| &s.blocks)
    }

    /// Sequences currently holding blocks.
    pub fn num_seqs(&self) -> usize {
        self.seqs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn a_repeated_prompt_reuses_full_blocks() {
        let mut m = KvManager::new(16, 4, true);
        let prompt = toks(10, 1);
        let p = m.find_cached_prefix(&prompt, None, None);
        assert_eq!(p.num_tokens(), 0);
        assert!(m.allocate(SeqId(1), Some(p), 10));
        m.record_lookup(10, 0);
        assert_eq!(m.block_table(SeqId(1)).len(), 3);
        m.cache_computed(SeqId(1), &prompt, 10, None, None);
        let first: Vec<_> = m.block_table(SeqId(1))[..2].to_vec();
        m.free(SeqId(1));
        assert_eq!(m.pool().num_free(), 15);

        let p = m.find_cached_prefix(&prompt, None, None);
        assert_eq!(p.num_tokens(), 8);
        let hit = p.num_tokens();
        assert!(m.allocate(SeqId(2), Some(p), 10));
        m.record_lookup(10, hit);
        assert_eq!(&m.block_table(SeqId(2))[..2], &first[..]);
        assert_eq!(m.stats(), PrefixCacheStats { queries: 20, hits: 8 });
        // Another adapter or another first block shares nothing.
        assert_eq!(m.find_cached_prefix(&prompt, Some(AdapterId(1)), None).num_tokens(), 0);
        let mut other = prompt.clone();
        other[0] += 1;
        assert_eq!(m.find_cached_prefix(&other, None, None).num_tokens(), 0);
    }

    #[test]
    fn at_least_one_token_is_left_to_compute() {
        let mut m = KvManager::new(8, 4, true);
        let prompt = toks(8, 3);
        assert!(m.allocate(SeqId(1), None, 8));
        m.cache_computed(SeqId(1), &prompt, 8, None, None);
        assert_eq!(m.find_cached_prefix(&prompt, None, None).num_tokens(), 4);
    }

    #[test]
    fn a_short_pool_changes_nothing_and_shared_blocks_are_ref_counted() {
        let mut m = KvManager::new(5, 4, true);
        let prompt = toks(9, 0);
        assert!(m.allocate(SeqId(1), None, 9));
        m.cache_computed(SeqId(1), &prompt, 9, None, None);
        let p = m.find_cached_prefix(&prompt, None, None);
        assert_eq!(p.num_tokens(), 8);
        // 1 free block; the second sequence needs 1 new one on top of the 2 shared.
        assert!(m.allocate(SeqId(2), Some(p.clone()), 9));
        assert_eq!(m.pool().num_free(), 0);
        assert!(!m.allocate(SeqId(2), None, 13));
        assert_eq!(m.block_table(SeqId(2)).len(), 3);
        m.free(SeqId(1));
        assert_eq!(m.pool().num_free(), 1, "shared blocks stay with sequence 2");
        m.free(SeqId(2));
        assert_eq!(m.pool().num_free(), 4);
    }

    #[test]
    fn evictable_cached_blocks_count_against_the_room_they_take() {
        let mut m = KvManager::new(4, 2, true);
        let prompt = toks(5, 0);
        assert!(m.allocate(SeqId(1), None, 5));
        m.cache_computed(SeqId(1), &prompt, 5, None, None);
        m.free(SeqId(1));
        let p = m.find_cached_prefix(&prompt, None, None);
        assert_eq!(p.num_tokens(), 4);
        // 3 free blocks, 2 of them the prefix itself: 7 tokens need 4 blocks → 2 new + 2 cached.
        assert!(!m.allocate(SeqId(2), Some(p.clone()), 7));
        assert_eq!(m.pool().num_free(), 3);
        assert!(m.allocate(SeqId(2), Some(p), 6));
        assert_eq!(m.pool().num_free(), 0);
    }

    #[test]
    fn a_cache_salt_isolates_the_whole_chain() {
        let mut m = KvManager::new(32, 4, true);
        let prompt = toks(13, 5);
        assert!(m.allocate(SeqId(1), None, 13));
        m.cache_computed(SeqId(1), &prompt, 13, None, Some("tenant-a"));
        assert_eq!(m.find_cached_prefix(&prompt, None, Some("tenant-a")).num_tokens(), 12, "same salt: shared");
        assert_eq!(m.find_cached_prefix(&prompt, None, Some("tenant-b")).num_tokens(), 0, "other salt: nothing");
        assert_eq!(m.find_cached_prefix(&prompt, None, None).num_tokens(), 0, "no salt: nothing");
        // Only the first block takes the salt, yet every later one differs too (the chain).
        let key = m.key;
        let first = |salt| block_hash(&key, None, &prompt[..4], None, salt);
        let second = |salt| block_hash(&key, Some(first(salt)), &prompt[4..8], None, salt);
        assert_ne!(second(Some("tenant-a")), second(Some("tenant-b")));
        assert_eq!(block_hash(&key, Some(first(None)), &prompt[4..8], None, Some("x")), second(None));
        // Another manager has another key: its hashes say nothing about this one's.
        assert_ne!(block_hash(&KvManager::new(4, 4, true).key, None, &prompt[..4], None, None), first(None));
    }
}
