//! Property tests of the allocator core: on random operation sequences no block is owned twice,
//! free + used = total after every operation, and freeing everything merges every buddy back.

use proptest::prelude::*;
use titaninfer_kvcache::{
    AllocatorKind, BlockManager, BuddyAllocator, KvError, LifoBlockAllocator, Policy,
};

#[derive(Clone, Debug)]
enum AllocOp {
    Allocate(usize),
    Free(usize, usize), // (which held run, how many of its leading blocks)
}

fn alloc_ops() -> impl Strategy<Value = Vec<AllocOp>> {
    prop::collection::vec(
        prop_oneof![
            (1usize..40).prop_map(AllocOp::Allocate),
            (0usize..64, 1usize..40).prop_map(|(i, k)| AllocOp::Free(i, k))
        ],
        0..200,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn buddy_never_double_allocates_and_merges_back(total in 0usize..300, ops in alloc_ops()) {
        let mut a = BuddyAllocator::new(total).unwrap();
        let initial = a.free_blocks_per_order();
        let mut owner = vec![false; total];
        let mut held: Vec<(u32, usize)> = Vec::new();
        for op in ops {
            match op {
                AllocOp::Allocate(n) => {
                    if let Some(s) = a.allocate(n).unwrap() {
                        let size = n.next_power_of_two();
                        prop_assert_eq!(s as usize % size, 0, "run not aligned to its order");
                        for b in s as usize..s as usize + n {
                            prop_assert!(!owner[b], "block {} owned twice", b);
                            owner[b] = true;
                        }
                        held.push((s, n));
                    } else {
                        prop_assert!(a.largest_free_run() < n);
                    }
                }
                AllocOp::Free(i, k) if !held.is_empty() => {
                    let (s, n) = held.swap_remove(i % held.len());
                    let k = k.min(n);
                    a.free(s, k).unwrap();
                    owner[s as usize..s as usize + k].iter_mut().for_each(|o| *o = false);
                    if k < n {
                        held.push((s + k as u32, n - k));
                    }
                }
                AllocOp::Free(..) => {}
            }
            let used = owner.iter().filter(|&&o| o).count();
            prop_assert_eq!(a.num_free_blocks() + used, total, "free + used != total");
            prop_assert!(a.check_invariants().is_empty(), "{:?}", a.check_invariants());
        }
        for (s, n) in held {
            a.free(s, n).unwrap();
        }
        prop_assert_eq!(a.num_free_blocks(), total);
        prop_assert_eq!(a.free_blocks_per_order(), initial, "not every buddy merged back");
    }

    #[test]
    fn lifo_never_double_allocates(total in 0usize..200, ops in alloc_ops()) {
        let mut a = LifoBlockAllocator::new(total).unwrap();
        let mut owner = vec![false; total];
        let mut held = Vec::new();
        for op in ops {
            match op {
                AllocOp::Allocate(_) => {
                    if let Some(b) = a.allocate(1).unwrap() {
                        prop_assert!(!owner[b as usize]);
                        owner[b as usize] = true;
                        held.push(b);
                    } else {
                        prop_assert_eq!(a.num_free_blocks(), 0);
                    }
                }
                AllocOp::Free(i, _) if !held.is_empty() => {
                    let b = held.swap_remove(i % held.len());
                    a.free(b, 1).unwrap();
                    owner[b as usize] = false;
                    prop_assert!(a.free(b, 1).is_err(), "double free accepted");
                }
                AllocOp::Free(..) => {}
            }
            prop_assert_eq!(a.num_free_blocks() + held.len(), total);
        }
        prop_assert!(matches!(a.allocate(2), Err(KvError::Unsupported(_))));
    }
}

#[derive(Clone, Debug)]
enum MgrOp {
    Allocate(u64, usize),
    Step(Vec<u64>),
    Fork(u64, u64),
    Free(u64),
    SwapOut(Vec<u64>),
    SwapIn(Vec<u64>),
}

fn mgr_ops() -> impl Strategy<Value = Vec<MgrOp>> {
    let id = 0u64..10;
    let group = prop::collection::vec(0u64..10, 0..5);
    prop::collection::vec(
        prop_oneof![
            (id.clone(), 0usize..40).prop_map(|(s, n)| MgrOp::Allocate(s, n)),
            group.clone().prop_map(MgrOp::Step),
            group.clone().prop_map(MgrOp::Step),
            (id.clone(), id.clone()).prop_map(|(p, c)| MgrOp::Fork(p, c)),
            id.prop_map(MgrOp::Free),
            group.clone().prop_map(MgrOp::SwapOut),
            group.prop_map(MgrOp::SwapIn),
        ],
        0..150,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn block_manager_keeps_its_books(
        num_gpu in 1usize..48, block_size in 1usize..5, num_cpu in 0usize..24,
        preempt in any::<bool>(), buddy in any::<bool>(), ops in mgr_ops(),
    ) {
        let policy = if preempt { Policy::Preempt } else { Policy::Refuse };
        let kind = if buddy { AllocatorKind::Buddy } else { AllocatorKind::Lifo };
        let mut m = BlockManager::new(num_gpu, block_size, num_cpu, 0.0, policy, kind).unwrap();
        for op in ops {
            let before = m.stats();
            let result = match &op {
                MgrOp::Allocate(s, n) => m.allocate(*s, *n).map(|_| ()),
                MgrOp::Step(g) => m.step(g).map(|_| ()),
                MgrOp::Fork(p, c) => m.fork(*p, *c),
                MgrOp::Free(s) => m.free(*s),
                MgrOp::SwapOut(g) => m.swap_out(g).map(|_| ()),
                MgrOp::SwapIn(g) => m.swap_in(g).map(|_| ()),
            };
            if result.is_err() {
                prop_assert_eq!(&m.stats(), &before, "a failed {:?} changed the manager", op);
            }
            // Ownership recounted from the tables: every held block is counted by the pool as used.
            let problems = m.check_invariants();
            prop_assert!(problems.is_empty(), "after {:?}: {:?}", op, problems);
            let s = m.stats();
            prop_assert_eq!(s.free_gpu_blocks + s.used_gpu_blocks, num_gpu);
        }
        for id in m.seq_ids() {
            m.free(id).unwrap();
        }
        prop_assert_eq!(m.num_free_gpu_blocks(), num_gpu);
        prop_assert_eq!(m.num_free_cpu_blocks(), num_cpu);
        let fresh = BlockManager::new(num_gpu, block_size, num_cpu, 0.0, policy, kind).unwrap().stats();
        prop_assert_eq!(m.stats().largest_free_run, fresh.largest_free_run, "buddies not merged back");
    }
}
