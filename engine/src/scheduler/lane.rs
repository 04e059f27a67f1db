//! [`Lane`]: an ordered list of sequence ids (the waiting queue, the running set) where a
//! sequence leaves from anywhere in O(1) amortized: its entry stays behind as a tombstone,
//! recognised because its epoch no longer matches the sequence's, and tombstones are dropped
//! at the ends at once and everywhere else when they outnumber the live entries. So aborting
//! the thousands of samples of one request one by one costs linear time, not quadratic.

use std::collections::{HashMap, VecDeque};

use super::request::Seq;
use crate::ids::SeqId;

/// Whether the entry `(id, epoch)` is still its sequence's place.
pub(crate) fn is_live(seqs: &HashMap<SeqId, Seq>, (id, epoch): (SeqId, u64)) -> bool {
    seqs.get(&id).is_some_and(|s| s.epoch == epoch)
}

#[derive(Debug, Default)]
pub(crate) struct Lane {
    entries: VecDeque<(SeqId, u64)>,
    live: usize,
}

impl Lane {
    /// Live entries.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn push_back(&mut self, entry: (SeqId, u64)) {
        self.entries.push_back(entry);
        self.live += 1;
    }

    pub fn push_front(&mut self, entry: (SeqId, u64)) {
        self.entries.push_front(entry);
        self.live += 1;
    }

    /// Entries, tombstones included, for index scans.
    pub fn raw_len(&self) -> usize {
        self.entries.len()
    }

    pub fn raw(&self, i: usize) -> (SeqId, u64) {
        self.entries[i]
    }

    /// One live entry became a tombstone (its sequence left, or moved to another lane).
    pub fn forget(&mut self) {
        self.live -= 1;
    }

    /// The last live entry, dropping tombstones behind it.
    pub fn last_live(&mut self, seqs: &HashMap<SeqId, Seq>) -> Option<SeqId> {
        while let Some(&e) = self.entries.back() {
            if is_live(seqs, e) {
                return Some(e.0);
            }
            self.entries.pop_back();
        }
        None
    }

    /// Drops tombstones at the ends, and everywhere once they outnumber the live entries
    /// (each compaction pays for the removals since the last).
    pub fn tidy(&mut self, seqs: &HashMap<SeqId, Seq>) {
        while self.entries.front().is_some_and(|&e| !is_live(seqs, e)) {
            self.entries.pop_front();
        }
        while self.entries.back().is_some_and(|&e| !is_live(seqs, e)) {
            self.entries.pop_back();
        }
        if self.entries.len() > 2 * self.live + 16 {
            self.entries.retain(|&e| is_live(seqs, e));
        }
    }

    /// Live ids in order.
    pub fn iter_live<'a>(&'a self, seqs: &'a HashMap<SeqId, Seq>) -> impl Iterator<Item = SeqId> + 'a {
        self.entries.iter().filter(|&&e| is_live(seqs, e)).map(|e| e.0)
    }
}
