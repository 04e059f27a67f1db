//! Scheduler tests with a fake model: the "next token" is a hash of all tokens so far, so a
//! sequence's output is fixed by its prompt however it is batched, chunked or preempted.

use std::{collections::HashMap, sync::Arc};

use super::*;

fn cfg(num_blocks: usize, budget: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs: 64,
        max_num_batched_tokens: budget,
        max_model_len: 4096,
        block_size: 4,
        num_blocks,
        prefix_caching: true,
        max_loras: 4,
    }
}

fn seq(id: u64, prompt_len: usize, max_tokens: usize) -> NewSeq {
    NewSeq {
        id: SeqId(id),
        prompt: (0..prompt_len as u32).map(|t| t * 31 + id as u32).collect(),
        max_tokens,
        min_tokens: 0,
        eos_ids: Arc::new([]),
        stop_token_ids: Arc::new([]),
        cache_salt: None,
        adapter: None,
        after: None,
    }
}

fn fake_next(tokens: &[u32]) -> u32 {
    tokens.iter().fold(17u32, |h, &t| h.wrapping_mul(16777619) ^ t) % 1000 + 1000
}

/// Runs the scheduler to completion, checking each step's plan; returns every sequence's output.
fn run(s: &mut Scheduler) -> (HashMap<SeqId, Vec<u32>>, usize) {
    let mut outputs: HashMap<SeqId, Vec<u32>> = HashMap::new();
    let mut steps = 0;
    while s.has_work() {
        steps += 1;
        assert!(steps < 100_000, "scheduler made no progress");
        let out = s.schedule();
        assert!(out.total_tokens <= s.config().max_num_batched_tokens);
        assert!(out.seqs.len() <= s.config().max_num_seqs);
        let mut sampled = vec![];
        for sc in &out.seqs {
            let (prompt, output) = s.tokens(sc.id).unwrap();
            let all: Vec<u32> = prompt.iter().chain(output).copied().collect();
            assert_eq!(&all[sc.num_computed..sc.num_computed + sc.new_tokens.len()], &sc.new_tokens[..]);
            let blocks = (sc.num_computed + sc.new_tokens.len()).div_ceil(4);
            assert!(sc.block_table.len() >= blocks);
            assert!(!sc.block_table[..blocks].contains(&0), "the null block is never used");
            if sc.samples {
                sampled.push((sc.id, fake_next(&all)));
            }
        }
        for st in s.update(&out, &sampled) {
            if st.emitted {
                outputs.entry(st.id).or_default().push(st.token);
            }
        }
    }
    (outputs, steps)
}

fn alone(spec: NewSeq) -> Vec<u32> {
    let mut s = Scheduler::new(cfg(1024, 64));
    let id = spec.id;
    s.add(spec).unwrap();
    run(&mut s).0.remove(&id).unwrap_or_default()
}

#[test]
fn concurrent_sequences_match_their_solo_runs() {
    let specs: Vec<NewSeq> = (0..16).map(|i| seq(i, 3 + 7 * i as usize, 5 + i as usize)).collect();
    let mut s = Scheduler::new(cfg(1024, 32));
    for sp in &specs {
        s.add(sp.clone()).unwrap();
    }
    let (out, _) = run(&mut s);
    for sp in specs {
        let id = sp.id;
        let n = sp.max_tokens;
        let solo = alone(sp);
        assert_eq!(solo.len(), n);
        assert_eq!(out[&id], solo, "{id}");
    }
    let st = s.stats();
    assert_eq!(st.free_blocks, st.usable_blocks, "every block is back in the pool");
}

#[test]
fn decodes_go_first_and_prompts_are_chunked_under_the_budget() {
    let mut s = Scheduler::new(cfg(1024, 8));
    s.add(seq(1, 3, 10)).unwrap();
    let first = s.schedule();
    assert_eq!(first.seqs.len(), 1);
    assert!(first.seqs[0].samples);
    s.update(&first, &[(SeqId(1), 7)]);
    s.add(seq(2, 20, 10)).unwrap();
    let out = s.schedule();
    assert_eq!(out.seqs[0].id, SeqId(1), "the running decode comes first");
    assert_eq!(out.seqs[0].new_tokens, [7]);
    assert_eq!(out.seqs[1].id, SeqId(2));
    assert_eq!(out.seqs[1].new_tokens.len(), 7, "the prompt gets what is left of the budget");
    assert!(!out.seqs[1].samples);
    assert_eq!(out.total_tokens, 8);
}

#[test]
fn a_tiny_cache_preempts_and_recomputes_with_identical_output() {
    let specs: Vec<NewSeq> = (0..8).map(|i| seq(i, 5 + 3 * i as usize, 12)).collect();
    // 13 usable blocks of 4 tokens: far too few for 8 sequences of up to 38 tokens at once.
    let mut s = Scheduler::new(cfg(14, 64));
    for sp in &specs {
        s.add(sp.clone()).unwrap();
    }
    let (out, _) = run(&mut s);
    assert!(s.stats().preemptions > 0, "the cache was small enough to force preemption");
    for sp in specs {
        let id = sp.id;
        assert_eq!(out[&id], alone(sp), "{id}");
    }
    let st = s.stats();
    assert_eq!(st.free_blocks, st.usable_blocks);
}

#[test]
fn a_prompt_larger_than_the_cache_is_refused_up_front() {
    let mut s = Scheduler::new(cfg(5, 64));
    let err = s.add(seq(1, 17, 1)).unwrap_err();
    assert_eq!(err, AdmitError::PromptExceedsCache { prompt: 17, needed: 5, available: 4 });
    assert!(!s.has_work());
    assert!(matches!(s.add(seq(2, 0, 1)), Err(AdmitError::EmptyPrompt)));
    let mut long = seq(3, 10, 4090);
    long.max_tokens = 4087;
    assert!(matches!(s.add(long), Err(AdmitError::ContextTooLong { .. })));
    // A sequence that fits alone but outgrows the cache while generating ends with Length.
    s.add(seq(4, 15, 100)).unwrap();
    let (out, _) = run(&mut s);
    assert_eq!(out[&SeqId(4)].len(), 2, "16 tokens fit in 4 blocks, the 17th does not");
}

#[test]
fn a_repeated_prompt_hits_the_prefix_cache() {
    let mut s = Scheduler::new(cfg(64, 64));
    s.add(seq(1, 10, 3)).unwrap();
    let (a, _) = run(&mut s);
    let mut again = seq(1, 10, 3);
    again.id = SeqId(2);
    s.add(again).unwrap();
    let out = s.schedule();
    assert_eq!(out.started, [(SeqId(2), 8)]);
    assert_eq!(out.seqs[0].num_computed, 8);
    assert_eq!(out.seqs[0].new_tokens.len(), 2);
    assert_eq!(s.stats().prefix_cache, PrefixCacheStats { queries: 20, hits: 8 });
    let sampled = [(SeqId(2), fake_next(s.tokens(SeqId(2)).unwrap().0))];
    s.update(&out, &sampled);
    let (b, _) = run(&mut s);
    let mut b2 = vec![sampled[0].1];
    b2.extend(&b[&SeqId(2)]);
    assert_eq!(a[&SeqId(1)], b2);
}

#[test]
fn abort_frees_blocks_at_once() {
    let mut s = Scheduler::new(cfg(64, 64));
    s.add(seq(1, 30, 10)).unwrap();
    s.add(seq(2, 30, 10)).unwrap();
    let out = s.schedule();
    assert_eq!(out.seqs.len(), 2);
    assert!(s.stats().free_blocks < s.stats().usable_blocks);
    assert!(s.abort(SeqId(1)));
    assert!(s.abort(SeqId(2)));
    assert!(!s.abort(SeqId(2)));
    assert_eq!(s.stats().free_blocks, s.stats().usable_blocks);
    assert!(!s.has_work());
}

#[test]
fn stop_tokens_and_min_tokens() {
    let mut s = Scheduler::new(cfg(64, 64));
    let mut a = seq(1, 4, 10);
    a.eos_ids = Arc::new([5]);
    a.stop_token_ids = Arc::new([6]);
    a.min_tokens = 1;
    s.add(a).unwrap();
    let out = s.schedule();
    // Below min_tokens an end-of-sequence token is just a token.
    let st = s.update(&out, &[(SeqId(1), 5)]);
    assert_eq!(st[0], SeqStep { id: SeqId(1), token: 5, emitted: true, finish: None });
    let out = s.schedule();
    let st = s.update(&out, &[(SeqId(1), 6)]);
    let finish = Finish { reason: FinishReason::Stop, stop: Some(StopReason::TokenId(6)) };
    assert_eq!(st[0], SeqStep { id: SeqId(1), token: 6, emitted: false, finish: Some(finish) });
    assert!(!s.has_work());
}

#[test]
fn parallel_samples_share_the_prompt_blocks() {
    let mut s = Scheduler::new(cfg(64, 64));
    s.add(seq(1, 18, 2)).unwrap();
    let mut sib = seq(1, 18, 2);
    sib.id = SeqId(2);
    sib.after = Some(SeqId(1));
    s.add(sib).unwrap();
    let out = s.schedule();
    assert_eq!(out.seqs.len(), 1, "the sibling waits for the shared prompt");
    let t = fake_next(s.tokens(SeqId(1)).unwrap().0);
    s.update(&out, &[(SeqId(1), t)]);
    let out = s.schedule();
    assert_eq!(out.started, [(SeqId(2), 16)]);
    let st = s.stats();
    assert_eq!(st.usable_blocks - st.free_blocks, 5 + 1, "4 shared full blocks, 2 partial ones");
}

#[test]
fn max_num_seqs_caps_the_running_set() {
    let mut c = cfg(256, 1000);
    c.max_num_seqs = 3;
    let mut s = Scheduler::new(c);
    for i in 0..5 {
        s.add(seq(i, 4, 2)).unwrap();
    }
    let out = s.schedule();
    assert_eq!(out.seqs.len(), 3);
    assert_eq!(s.stats().waiting, 2);
}

#[test]
fn distinct_adapters_per_step_never_exceed_max_loras() {
    let mut c = cfg(512, 256);
    c.max_loras = 2;
    let mut s = Scheduler::new(c);
    // Six sequences over four adapters plus two on the base model.
    for (i, a) in [Some(1), Some(2), Some(3), None, Some(1), Some(4), None].into_iter().enumerate() {
        let mut n = seq(i as u64, 6, 5);
        n.adapter = a.map(AdapterId);
        s.add(n).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut outputs = 0;
    while s.has_work() {
        let out = s.schedule();
        let mut distinct: Vec<AdapterId> = out.seqs.iter().filter_map(|x| x.adapter).collect();
        distinct.sort_by_key(|a| a.0);
        distinct.dedup();
        assert!(distinct.len() <= 2, "{distinct:?}");
        seen.extend(distinct);
        let sampled: Vec<(SeqId, u32)> = out.seqs.iter().filter(|x| x.samples).map(|x| (x.id, 7)).collect();
        outputs += s.update(&out, &sampled).iter().filter(|st| st.finish.is_some()).count();
    }
    assert_eq!(outputs, 7, "every sequence finishes");
    assert_eq!(seen.len(), 4, "every adapter got its turn");
}

#[test]
fn aborting_many_sequences_one_by_one_is_linear_and_keeps_fcfs_order() {
    // 100k queued sequences aborted one at a time (every other one, then the rest from the
    // back): quadratic removal would take minutes.
    const N: u64 = 100_000;
    let mut s = Scheduler::new(cfg(1 << 16, 64));
    for i in 0..N {
        s.add(seq(i, 2, 1)).unwrap();
    }
    let t = std::time::Instant::now();
    for i in (0..N).step_by(2) {
        assert!(s.abort(SeqId(i)));
    }
    assert_eq!(s.stats().waiting, N as usize / 2);
    for i in (N / 2..N).rev().filter(|i| i % 2 == 1) {
        assert!(s.abort(SeqId(i)));
    }
    assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
    assert_eq!(s.stats().waiting, N as usize / 4);
    // What is left is admitted first come, first served.
    let out = s.schedule();
    let ids: Vec<u64> = out.seqs.iter().map(|x| x.id.0).collect();
    assert_eq!(ids, (0..N / 2).filter(|i| i % 2 == 1).take(ids.len()).collect::<Vec<_>>());
    assert_eq!(ids.len(), 32, "64 tokens of budget, 2 per prompt");
    assert_eq!(s.stats().running, 32);
    // Running sequences leave as cheaply, and the blocks all come back.
    for id in ids {
        assert!(s.abort(SeqId(id)));
    }
    while s.has_work() {
        let out = s.schedule();
        for x in &out.seqs {
            s.abort(x.id);
        }
    }
    let st = s.stats();
    assert_eq!((st.running, st.waiting, st.free_blocks), (0, 0, st.usable_blocks));
}

#[test]
fn aborts_amid_preemptions_leave_the_others_untouched() {
    let specs: Vec<NewSeq> = (0..24).map(|i| seq(i, 5 + 3 * (i % 8) as usize, 12)).collect();
    let mut s = Scheduler::new(cfg(20, 64));
    for sp in &specs {
        s.add(sp.clone()).unwrap();
    }
    // A few steps under memory pressure, then every third sequence goes, wherever it is.
    for _ in 0..6 {
        let out = s.schedule();
        let sampled: Vec<(SeqId, u32)> = out
            .seqs
            .iter()
            .filter(|x| x.samples)
            .map(|x| {
                let (p, o) = s.tokens(x.id).unwrap();
                (x.id, fake_next(&p.iter().chain(o).copied().collect::<Vec<_>>()))
            })
            .collect();
        s.update(&out, &sampled);
    }
    for i in (0..24).step_by(3) {
        s.abort(SeqId(i));
    }
    // Output so far (the survivors' runs continue from it).
    let before: HashMap<SeqId, Vec<u32>> =
        specs.iter().filter_map(|sp| s.tokens(sp.id).map(|(_, o)| (sp.id, o.to_vec()))).collect();
    let (out, _) = run(&mut s);
    for sp in specs.into_iter().filter(|sp| sp.id.0 % 3 != 0) {
        let id = sp.id;
        let mut got = before.get(&id).cloned().unwrap_or_default();
        got.extend(out.get(&id).cloned().unwrap_or_default());
        assert_eq!(got, alone(sp), "{id}");
    }
    let st = s.stats();
    assert!(st.preemptions > 0);
    assert_eq!((st.running, st.waiting, st.free_blocks), (0, 0, st.usable_blocks));
}
