//! Extreme sizes and counts: pools bounded before anything is allocated, no integer wraps.

use titaninfer_kvcache::limits::{MAX_BLOCKS, MAX_BLOCK_SIZE};
use titaninfer_kvcache::{
    AllocatorKind, BlockManager, BuddyAllocator, KvError, LifoBlockAllocator, Policy,
};

fn manager(gpu: usize, block_size: usize, cpu: usize) -> Result<BlockManager, KvError> {
    BlockManager::new(
        gpu,
        block_size,
        cpu,
        0.0,
        Policy::Refuse,
        AllocatorKind::Buddy,
    )
}

fn invalid_naming(result: Result<BlockManager, KvError>, name: &str) {
    match result {
        Err(KvError::InvalidArgument(msg)) => assert!(msg.starts_with(name), "{msg}"),
        Err(e) => panic!("expected InvalidArgument naming {name}, got {e:?}"),
        Ok(_) => panic!("expected InvalidArgument naming {name}, got a manager"),
    }
}

#[test]
fn pool_sizes_are_bounded_before_allocating() {
    let over = MAX_BLOCKS as usize + 1;
    invalid_naming(manager(0, 16, 0), "num_gpu_blocks");
    invalid_naming(manager(over, 16, 0), "num_gpu_blocks");
    invalid_naming(manager(usize::MAX, 16, 0), "num_gpu_blocks");
    invalid_naming(manager(4, 0, 0), "block_size");
    invalid_naming(manager(4, MAX_BLOCK_SIZE as usize + 1, 0), "block_size");
    invalid_naming(manager(4, 16, over), "num_cpu_blocks");
    invalid_naming(manager(4, 16, usize::MAX), "num_cpu_blocks");
    assert!(manager(1, MAX_BLOCK_SIZE as usize, 0).is_ok());
    assert!(BuddyAllocator::new(over).is_err());
    assert!(LifoBlockAllocator::new(over).is_err());
}

#[test]
fn huge_token_counts_do_not_wrap() {
    let mut m = manager(8, 1, 0).unwrap();
    for n in [usize::MAX, usize::MAX / 2, i64::MAX as usize + 1, 9] {
        assert!(!m.can_allocate(n), "can_allocate({n})");
        assert!(matches!(
            m.allocate(1, n),
            Err(KvError::OutOfBlocks { free: 8, .. })
        ));
    }
    assert!(m.can_allocate(8));
    assert_eq!(m.stats().used_gpu_blocks, 0);
}

#[test]
fn huge_run_lengths_are_out_of_range_not_wrapped() {
    let mut a = BuddyAllocator::new(8).unwrap();
    let start = a.allocate(4).unwrap().unwrap();
    assert_eq!(a.allocate(usize::MAX).unwrap(), None);
    for n in [usize::MAX, usize::MAX - start as usize] {
        assert!(matches!(
            a.free(start + 1, n),
            Err(KvError::InvalidArgument(_))
        ));
    }
    assert_eq!(
        a.num_free_blocks(),
        4,
        "a rejected free changed the allocator"
    );
    let mut l = LifoBlockAllocator::new(8).unwrap();
    l.allocate(1).unwrap();
    assert!(matches!(
        l.free(0, usize::MAX),
        Err(KvError::InvalidArgument(_))
    ));
    assert!(matches!(
        l.free(u32::MAX, 1),
        Err(KvError::InvalidArgument(_))
    ));
    assert_eq!(l.num_free_blocks(), 7);
}
