//! KV block bookkeeping (no tensors here): [`BlockPool`] hands out ref-counted blocks and keeps
//! the prefix-cache index; [`KvManager`] holds each sequence's block table and decides which
//! blocks a new sequence can share.

pub mod manager;
pub mod pool;

pub use manager::{block_hash, CachedPrefix, KvManager, PrefixCacheStats};
pub use pool::{BlockHash, BlockPool};
