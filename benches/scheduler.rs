//! Micro-benchmarks of the engine's bookkeeping (no model): the block pool and the scheduler
//! over 10k requests.
//!
//! `cargo bench --bench scheduler`. `block_pool/10k_tables`: allocate and free the block tables
//! of 10k requests (8 blocks each) with prefix-cache registration; `scheduler/10k_requests`: add
//! 10k requests (64-token prompts, 16 output tokens) and run schedule + update with a fake
//! sampler until all finish. Elements are requests.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flint_engine::{
    ids::SeqId,
    kv::{BlockHash, BlockPool},
    scheduler::{NewSeq, Scheduler, SchedulerConfig},
};

const REQUESTS: usize = 10_000;

fn block_pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("block_pool");
    g.throughput(Throughput::Elements(REQUESTS as u64));
    g.bench_function("10k_tables", |b| {
        b.iter(|| {
            let mut pool = BlockPool::new(4096);
            let mut live = std::collections::VecDeque::new();
            for r in 0..REQUESTS {
                if live.len() == 256 {
                    let t: Vec<_> = live.pop_front().expect("not empty");
                    pool.free(t.into_iter().rev());
                }
                let t = pool.allocate(8).expect("room for 256 x 8 blocks");
                for (k, &blk) in t.iter().enumerate() {
                    pool.insert_cached(blk, BlockHash((r * 8 + k) as u128));
                }
                live.push_back(t);
            }
            pool.num_free()
        })
    });
    g.finish();
}

fn scheduler(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler");
    g.sample_size(10);
    g.throughput(Throughput::Elements(REQUESTS as u64));
    g.bench_function("10k_requests", |b| {
        b.iter(|| {
            let mut s = Scheduler::new(SchedulerConfig {
                max_num_seqs: 256,
                max_num_batched_tokens: 8192,
                max_model_len: 4096,
                block_size: 16,
                num_blocks: 8192,
                prefix_caching: true,
        max_loras: 4,
            });
            for r in 0..REQUESTS as u64 {
                let prompt = (0..64u32).map(|i| i.wrapping_mul(2654435761).wrapping_add(r as u32)).collect();
                let seq = NewSeq {
                    id: SeqId(r),
                    prompt,
                    max_tokens: 16,
                    min_tokens: 0,
                    eos_ids: Vec::new().into(),
                    stop_token_ids: Vec::new().into(),
                    adapter: None,
                    cache_salt: None,
                    after: None,
                };
                s.add(seq).expect("fits");
            }
            let mut steps = 0;
            while s.has_work() {
                let out = s.schedule();
                let sampled: Vec<_> = out.seqs.iter().filter(|q| q.samples).map(|q| (q.id, 7u32)).collect();
                s.update(&out, &sampled);
                steps += 1;
            }
            steps
        })
    });
    g.finish();
}

criterion_group!(benches, block_pool, scheduler);
criterion_main!(benches);
