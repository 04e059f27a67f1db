//! [`BlockPool`]: every KV block's ref count, the free list and the prefix-cache index.
//!
//! Blocks live in one flat `Vec`; free blocks form a doubly linked list through indices, so a
//! cached block that gets reused can be unlinked from the middle in O(1). Allocation pops from
//! the head (least recently freed first), freeing appends at the tail: that order is the LRU
//! eviction order of cached blocks, which stay findable by hash until they are handed out again.

use std::collections::HashMap;

use crate::ids::BlockId;

/// Hash of a full block's content and everything before it (see `KvManager`): 128 bits of a
/// keyed SHA-256, so a collision (two prompts sharing K/V) is out of reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockHash(pub u128);

const NIL: u32 = u32::MAX;

#[derive(Clone, Debug)]
struct Block {
    ref_count: u32,
    hash: Option<BlockHash>,
    prev: u32,
    next: u32,
}

/// Ref-counted KV blocks with an LRU free list and a hash → block index for prefix caching.
#[derive(Debug)]
pub struct BlockPool {
    blocks: Vec<Block>,
    head: u32,
    tail: u32,
    num_free: usize,
    cached: HashMap<BlockHash, BlockId>,
}

impl BlockPool {
    /// A pool of `num_blocks` blocks; block 0 is the null block, so `num_blocks - 1` are usable.
    pub fn new(num_blocks: usize) -> Self {
        assert!((2..NIL as usize).contains(&num_blocks), "a block pool needs 2..2^32-1 blocks");
        let mut pool = Self {
            blocks: vec![Block { ref_count: 0, hash: None, prev: NIL, next: NIL }; num_blocks],
            head: NIL,
            tail: NIL,
            num_free: 0,
            cached: HashMap::new(),
        };
        // The null block is held forever and never enters the free list.
        pool.blocks[0].ref_count = 1;
        for i in 1..num_blocks as u32 {
            pool.push_tail(i);
        }
        pool
    }

    /// Blocks that can be handed out (including cached blocks nobody uses).
    pub fn num_free(&self) -> usize {
        self.num_free
    }

    /// Usable blocks in total (the null block excluded).
    pub fn num_usable(&self) -> usize {
        self.blocks.len() - 1
    }

    /// Blocks currently indexed by the prefix cache (in use or not).
    pub fn num_cached(&self) -> usize {
        self.cached.len()
    }

    pub fn ref_count(&self, id: BlockId) -> u32 {
        self.blocks[id.0 as usize].ref_count
    }

    /// `n` fresh blocks with ref count 1, evicting the least recently freed cached blocks; `None`
    /// (and no change at all) when fewer than `n` are free.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<BlockId>> {
        if n > self.num_free {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.head;
            self.unlink(i);
            let b = &mut self.blocks[i as usize];
            if let Some(h) = b.hash.take() {
                // Evicted: the block's content is about to be overwritten.
                if self.cached.get(&h) == Some(&BlockId(i)) {
                    self.cached.remove(&h);
                }
            }
            b.ref_count = 1;
            out.push(BlockId(i));
        }
        Some(out)
    }

    /// Takes one more reference to each block (prefix-cache hits); a free block leaves the free
    /// list but keeps its hash.
    pub fn touch(&mut self, ids: &[BlockId]) {
        for &BlockId(i) in ids {
            if self.blocks[i as usize].ref_count == 0 {
                self.unlink(i);
            }
            self.blocks[i as usize].ref_count += 1;
        }
    }

    /// Drops one reference to each block, in the given order; blocks reaching zero join the free
    /// list's tail (callers pass a table back to front, so a sequence's tail blocks, the least
    /// likely to be shared, are evicted first).
    pub fn free(&mut self, ids: impl IntoIterator<Item = BlockId>) {
        for BlockId(i) in ids {
            if i == BlockId::NULL.0 {
                continue;
            }
            let b = &mut self.blocks[i as usize];
            debug_assert!(b.ref_count > 0, "double free of block {i}");
            b.ref_count = b.ref_count.saturating_sub(1);
            if b.ref_count == 0 {
                self.push_tail(i);
            }
        }
    }

    /// The cached block holding content `hash`, if any.
    pub fn lookup(&self, hash: BlockHash) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// Records that `id` (in use, full, computed) holds content `hash`. If another block already
    /// holds the same content (two requests computed it at once), the index keeps the first.
    pub fn insert_cached(&mut self, id: BlockId, hash: BlockHash) {
        if id == BlockId::NULL || self.blocks[id.0 as usize].hash.is_some() {
            return;
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.cached.entry(hash) {
            e.insert(id);
            self.blocks[id.0 as usize].hash = Some(hash);
        }
    }

    /// Forgets every cached hash (e.g. after the weights change); in-use blocks are unaffected.
    pub fn reset_cache(&mut self) {
        self.cached.clear();
        for b in &mut self.blocks {
            b.hash = None;
        }
    }

    fn push_tail(&mut self, i: u32) {
        let b = &mut self.blocks[i as usize];
        b.prev = self.tail;
        b.next = NIL;
        if self.tail == NIL {
            self.head = i;
        } else {
            self.blocks[self.tail as usize].next = i;
        }
        self.tail = i;
        self.num_free += 1;
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = (self.blocks[i as usize].prev, self.blocks[i as usize].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.blocks[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.blocks[next as usize].prev = prev;
        }
        let b = &mut self.blocks[i as usize];
        b.prev = NIL;
        b.next = NIL;
        self.num_free -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_all_or_nothing_and_skips_the_null_block() {
        let mut p = BlockPool::new(5);
        assert_eq!(p.num_free(), 4);
        assert!(p.allocate(5).is_none());
        assert_eq!(p.num_free(), 4, "a failed allocation changes nothing");
        let a = p.allocate(4).unwrap();
        assert!(!a.contains(&BlockId::NULL));
        assert_eq!(p.num_free(), 0);
        assert!(p.allocate(1).is_none());
        p.free(a.iter().rev().copied());
        assert_eq!(p.num_free(), 4);
    }

    #[test]
    fn cached_blocks_are_reused_until_evicted_in_lru_order() {
        let mut p = BlockPool::new(4);
        let a = p.allocate(3).unwrap();
        for (k, &b) in a.iter().enumerate() {
            p.insert_cached(b, BlockHash(k as u128));
        }
        // Freed back to front: a[2] is the first to be evicted.
        p.free(a.iter().rev().copied());
        assert_eq!(p.num_cached(), 3);
        assert_eq!(p.lookup(BlockHash(0)), Some(a[0]));
        p.touch(&[a[0]]);
        assert_eq!(p.ref_count(a[0]), 1);
        assert_eq!(p.num_free(), 2);
        let b = p.allocate(1).unwrap();
        assert_eq!(b, [a[2]], "least recently freed goes first");
        assert_eq!(p.lookup(BlockHash(2)), None, "evicted hash is forgotten");
        assert_eq!(p.lookup(BlockHash(1)), Some(a[1]));
        p.touch(&[a[0]]);
        assert_eq!(p.ref_count(a[0]), 2);
        p.free([a[0], a[0], b[0]]);
        assert_eq!(p.num_free(), 3);
    }

    #[test]
    fn duplicate_content_keeps_the_first_block() {
        let mut p = BlockPool::new(3);
        let a = p.allocate(2).unwrap();
        p.insert_cached(a[0], BlockHash(9));
        p.insert_cached(a[1], BlockHash(9));
        assert_eq!(p.lookup(BlockHash(9)), Some(a[0]));
        p.free(a.iter().rev().copied());
        // Evicting the uncached duplicate must not drop the index entry of the first.
        let _ = p.allocate(1).unwrap();
        assert_eq!(p.lookup(BlockHash(9)), Some(a[0]));
    }
}
