//! LoRA adapters in the engine, in two pieces with one owner each:
//!
//! - [`AdapterCatalog`] (owned by the [`crate::EngineHandle`], API side): adapter names →
//!   [`AdapterId`]s. Loading reads and checks the files off the engine thread, then registers
//!   the name and sends the weights to the engine thread. Unloading removes the name at once,
//!   so new requests are refused, while requests already using it finish.
//! - [`AdapterSlots`] (owned by the engine thread): the loaded adapters' weights, and which of
//!   the model's `max_loras` LoRA slots holds which adapter. Before each step the adapters of
//!   the batch are made resident, evicting the least recently used adapter that the batch does
//!   not need. Each request holds an [`AdapterLease`]; an unloaded adapter is dropped when its
//!   last lease is.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use flint_models::{LoraAdapter, Model};

use crate::{
    error::{EngineError, Result},
    ids::AdapterId,
};

/// Limits of the LoRA machinery (`--max-loras`, `--max-lora-rank`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoraSettings {
    /// Adapters resident at once, and so distinct adapters in one batch.
    pub max_loras: usize,
    /// Largest adapter rank accepted.
    pub max_lora_rank: usize,
}

impl Default for LoraSettings {
    fn default() -> Self {
        // vLLM's defaults.
        Self { max_loras: 1, max_lora_rank: 16 }
    }
}

/// A loaded adapter as the API sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterInfo {
    pub name: String,
    pub id: AdapterId,
    pub path: PathBuf,
    pub rank: usize,
    /// Unix seconds when it was loaded.
    pub created: u64,
}

/// Adapter names → ids, on the API side.
#[derive(Debug, Default)]
pub(crate) struct AdapterCatalog {
    by_name: HashMap<String, AdapterInfo>,
    next_id: u32,
}

impl AdapterCatalog {
    pub fn get(&self, name: &str) -> Result<&AdapterInfo> {
        self.by_name.get(name).ok_or_else(|| EngineError::UnknownAdapter(name.to_owned()))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Registers `name` under a fresh id (ids are never reused, so a reloaded adapter never
    /// meets KV blocks cached for its predecessor).
    pub fn insert(&mut self, name: &str, path: PathBuf, rank: usize) -> Result<AdapterInfo> {
        if self.by_name.contains_key(name) {
            return Err(EngineError::AdapterExists(name.to_owned()));
        }
        self.next_id += 1;
        let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let info = AdapterInfo { name: name.to_owned(), id: AdapterId(self.next_id), path, rank, created };
        self.by_name.insert(name.to_owned(), info.clone());
        Ok(info)
    }

    pub fn remove(&mut self, name: &str) -> Result<AdapterInfo> {
        self.by_name.remove(name).ok_or_else(|| EngineError::UnknownAdapter(name.to_owned()))
    }

    /// Every adapter, by name.
    pub fn list(&self) -> Vec<AdapterInfo> {
        let mut v: Vec<AdapterInfo> = self.by_name.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// Keeps an adapter loaded while a request uses it.
#[derive(Clone, Debug)]
pub(crate) struct AdapterLease {
    _token: Arc<()>,
}

struct Loaded {
    adapter: Arc<LoraAdapter>,
    /// One strong count per lease, plus this one.
    token: Arc<()>,
    removed: bool,
}

impl Loaded {
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.token) > 1
    }
}

/// The engine thread's adapters and the model's slot table.
pub(crate) struct AdapterSlots {
    loaded: HashMap<AdapterId, Loaded>,
    slots: Vec<Option<AdapterId>>,
    /// Step of each slot's last use (LRU eviction).
    last_used: Vec<u64>,
    tick: u64,
}

impl AdapterSlots {
    pub fn new(num_slots: usize) -> Self {
        Self { loaded: HashMap::new(), slots: vec![None; num_slots], last_used: vec![0; num_slots], tick: 0 }
    }

    pub fn add(&mut self, id: AdapterId, adapter: Arc<LoraAdapter>) {
        self.loaded.insert(id, Loaded { adapter, token: Arc::new(()), removed: false });
    }

    /// Marks an adapter unloaded; it goes once no request holds a lease.
    pub fn remove(&mut self, id: AdapterId) {
        if let Some(l) = self.loaded.get_mut(&id) {
            l.removed = true;
        }
        self.collect();
    }

    /// A lease on a loaded adapter (also one being unloaded: a request the API accepted
    /// before the unload still runs).
    pub fn lease(&self, id: AdapterId) -> Result<AdapterLease> {
        let l = self.loaded.get(&id).ok_or_else(|| EngineError::UnknownAdapter(format!("adapter #{}", id.0)))?;
        Ok(AdapterLease { _token: l.token.clone() })
    }

    /// Drops unloaded adapters nobody uses and frees their slots.
    pub fn collect(&mut self) {
        self.loaded.retain(|_, l| !l.removed || l.in_use());
        for s in &mut self.slots {
            if s.is_some_and(|id| !self.loaded.contains_key(&id)) {
                *s = None;
            }
        }
    }

    /// Makes every adapter of `needed` resident and returns its slot. At most `slots` distinct
    /// adapters may be asked for (the scheduler guarantees it).
    pub fn prepare(&mut self, needed: &[AdapterId], model: &dyn Model) -> Result<HashMap<AdapterId, u32>> {
        self.tick += 1;
        let mut map = HashMap::with_capacity(needed.len());
        for &id in needed {
            if map.contains_key(&id) {
                continue;
            }
            let slot = match self.slots.iter().position(|s| *s == Some(id)) {
                Some(s) => s,
                None => {
                    let adapter = self.loaded.get(&id).map(|l| l.adapter.clone()).ok_or_else(|| {
                        EngineError::StepFailed(format!("adapter #{} is not loaded", id.0))
                    })?;
                    // A free slot, else the least recently used one this batch does not need.
                    let victim = (0..self.slots.len())
                        .filter(|&s| self.slots[s].is_none_or(|a| !needed.contains(&a)))
                        .min_by_key(|&s| (self.slots[s].is_some(), self.last_used[s]))
                        .ok_or_else(|| EngineError::StepFailed("more adapters in one batch than LoRA slots".into()))?;
                    model.set_lora_slot(victim, Some(&adapter))?;
                    self.slots[victim] = Some(id);
                    victim
                }
            };
            self.last_used[slot] = self.tick;
            map.insert(id, slot as u32);
        }
        Ok(map)
    }

    /// Adapters resident in a slot right now.
    pub fn resident(&self) -> usize {
        self.slots.iter().flatten().count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_names_are_unique_and_ids_fresh() {
        let mut c = AdapterCatalog::default();
        let a = c.insert("a", "/x".into(), 8).unwrap();
        assert!(matches!(c.insert("a", "/y".into(), 8), Err(EngineError::AdapterExists(_))));
        c.remove("a").unwrap();
        let again = c.insert("a", "/x".into(), 8).unwrap();
        assert_ne!(a.id, again.id, "a reloaded adapter gets a new id");
        assert!(matches!(c.get("b"), Err(EngineError::UnknownAdapter(_))));
        assert!(matches!(c.remove("b"), Err(EngineError::UnknownAdapter(_))));
        assert_eq!(c.list().len(), 1);
    }
}
