//! Prefix caching in the Rust core: the hash chain names whole prefixes, hits reuse blocks, released
//! cached blocks are evicted least recently released first (a sequence's tail before its head), and
//! the books hold on random operation sequences (invariants after every call, all blocks free at the end).

use proptest::prelude::*;
use titaninfer_kvcache::block_manager::{block_hash, ROOT_HASH};
use titaninfer_kvcache::{AllocatorKind, BlockManager, KvError, Policy};

fn cached(gpu: usize, bs: usize) -> BlockManager {
    BlockManager::new(gpu, bs, 0, 0.0, Policy::Refuse, AllocatorKind::Buddy)
        .unwrap()
        .with_prefix_caching()
        .unwrap()
}

#[test]
fn the_chain_names_the_whole_prefix() {
    let (a, b) = ([1u32, 2, 3, 4], [5u32, 6, 7, 8]);
    let h = block_hash(ROOT_HASH, &a);
    assert_eq!(h, block_hash(ROOT_HASH, &a), "deterministic");
    // The same block after different parents is a different prefix.
    assert_ne!(block_hash(h, &b), block_hash(block_hash(ROOT_HASH, &b), &b));
    assert_ne!(block_hash(h, &b), block_hash(ROOT_HASH, &b));
    // One token differs -> the hash differs (each step is a bijection of the state).
    assert_ne!(block_hash(ROOT_HASH, &[1, 2, 3, 5]), h);
}

#[test]
fn hits_reuse_blocks_but_never_the_last_tokens_block() {
    let mut m = cached(16, 4);
    let prompt: Vec<u32> = (0..12).collect();
    let (t0, hit) = m.allocate_cached(0, &prompt).unwrap();
    assert_eq!(hit, 0);
    assert_eq!(m.cache_full_blocks(0, &prompt).unwrap(), 3);
    let (t1, hit) = m.allocate_cached(1, &prompt).unwrap();
    assert_eq!(
        hit, 8,
        "12 tokens: the third block holds the last token and is recomputed"
    );
    assert_eq!(&t1[..2], &t0[..2]);
    assert_ne!(t1[2], t0[2]);
    assert_eq!(m.ref_count(t0[0]).unwrap(), 2);
    let p = m.prefix_stats().unwrap();
    assert_eq!((p.queries, p.hits, p.cached_blocks), (24, 8, 3));
    assert!(m.check_invariants().is_empty());
}

#[test]
fn eviction_is_least_recently_released_tail_first() {
    let mut m = cached(6, 1);
    let a = [10u32, 11, 12, 13];
    m.allocate_cached(0, &a).unwrap();
    m.cache_full_blocks(0, &a).unwrap();
    m.free(0).unwrap(); // released 13, 12, 11, 10: four evictable, two in the allocator
    assert_eq!(m.num_free_gpu_blocks(), 6);
    m.allocate(1, 3).unwrap(); // the allocator's two, then evicts the block of token 13
    m.free(1).unwrap(); // uncached blocks go straight back to the allocator
    let (_, hit) = m.allocate_cached(2, &a).unwrap(); // 10, 11, 12 still cached
    assert_eq!(hit, 3);
    let p = m.prefix_stats().unwrap();
    assert_eq!(
        (p.evictions, p.evictable_blocks, p.cached_blocks),
        (1, 0, 3)
    );
    assert!(matches!(
        m.allocate(3, 3),
        Err(KvError::OutOfBlocks {
            needed: 3,
            free: 2,
            ..
        })
    ));
    assert!(m.check_invariants().is_empty());
}

#[derive(Clone, Debug)]
enum Op {
    Cached(u64, usize, usize), // (id, which prompt, length)
    Register(u64),
    Step(Vec<u64>),
    Fork(u64, u64),
    Free(u64),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let id = 0u64..6;
    prop::collection::vec(
        prop_oneof![
            (id.clone(), 0usize..3, 1usize..30).prop_map(|(s, p, n)| Op::Cached(s, p, n)),
            id.clone().prop_map(Op::Register),
            prop::collection::vec(0u64..6, 0..4).prop_map(Op::Step),
            (id.clone(), id.clone()).prop_map(|(p, c)| Op::Fork(p, c)),
            id.clone().prop_map(Op::Free),
            id.prop_map(Op::Free),
        ],
        0..120,
    )
}

fn prompt(which: usize, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| if i < 8 { i } else { i * (which as u32 + 1) })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn prefix_cache_keeps_its_books(gpu in 2usize..24, bs in 1usize..5, ops in ops()) {
        let mut m = cached(gpu, bs);
        let mut tokens = std::collections::HashMap::new();
        for op in ops {
            let before = m.stats();
            let result = match &op {
                Op::Cached(s, p, n) => m.allocate_cached(*s, &prompt(*p, *n)).map(|(t, hit)| {
                    assert!(hit <= (n - 1) / bs * bs && t.len() == n.div_ceil(bs));
                    tokens.insert(*s, prompt(*p, *n));
                }),
                Op::Register(s) => {
                    let t = tokens.get(s).cloned().unwrap_or_default();
                    m.cache_full_blocks(*s, &t).map(|_| ())
                }
                Op::Step(g) => m.step(g).map(|_| ()),
                Op::Fork(p, c) => m.fork(*p, *c),
                Op::Free(s) => m.free(*s),
            };
            if result.is_err() {
                prop_assert_eq!(&m.stats(), &before, "a failed {:?} changed the manager", op);
            }
            let problems = m.check_invariants();
            prop_assert!(problems.is_empty(), "after {:?}: {:?}", op, problems);
        }
        for id in m.seq_ids() {
            m.free(id).unwrap();
        }
        prop_assert_eq!(m.num_free_gpu_blocks(), gpu);
        let p = m.prefix_stats().unwrap();
        prop_assert_eq!(p.evictable_blocks, p.cached_blocks);
    }
}
