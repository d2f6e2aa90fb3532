"""Extreme integers at every integer argument: Rust and the Python reference agree, and both follow
the contract's ranges (stated here, not imported from ``limits``, so a changed limit is noticed).

Every method's integer argument gets each value of ``EXTREMES`` on a small populated manager (the
largest sequence id, 2**64 - 1, is one of the held ids); both implementations must give the same
result or the same exception type and message and be left in the same state, and a value outside
the argument's range must be a ValueError naming it. Constructors get the same table, except valid
pools too big to build here, which run in a subprocess with a capped address space: MemoryError,
never an abort (an abort would kill the subprocess, not pytest).
"""

import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from p1_helpers import needs_native, outcome

from phase1_rust_memory import reference

pytestmark = needs_native

U32, U64, MAX_BLOCKS = 2**32 - 1, 2**64 - 1, 2**31 - 1
EXTREMES = [-(2**70), -1, 0, 1, 2**16, 2**16 + 1, 2**31 - 1, 2**31, U32, 2**32, 2**63 - 1, 2**63, U64, 2**64,
            10**30]
X = object()  # where the extreme value goes

# (method, arguments, name of the X argument, its valid range)
MANAGER_CALLS = [
    ("can_allocate", (X,), "num_tokens", U64),
    ("allocate", (X, 3), "seq_id", U64),
    ("allocate", (7, X), "num_tokens", U64),
    ("append_slot", (X,), "seq_id", U64),
    ("can_append", ([0, X],), "each of seq_ids", U64),
    ("step", ([X],), "each of seq_ids", U64),
    ("step", ([0, X],), "each of seq_ids", U64),
    ("fork", (X, 9), "parent_id", U64),
    ("fork", (0, X), "child_id", U64),
    ("free", (X,), "seq_id", U64),
    ("swap_out", ([X],), "each of seq_ids", U64),
    ("swap_in", ([X],), "each of seq_ids", U64),
    ("can_swap_in", ([5, X],), "each of seq_ids", U64),
    ("block_table", (X,), "seq_id", U64),
    ("num_tokens", (X,), "seq_id", U64),
    ("is_swapped", (X,), "seq_id", U64),
    ("ref_count", (X,), "block", U32),
    ("__contains__", (X,), "seq_id", U64),
]
ALLOCATOR_CALLS = [
    ("allocate", (X,), "n", U64),
    ("free", (X, 1), "start", U32),
    ("free", (1, X), "n", U64),  # 1 + (2**64 - 1) would wrap to 0 in usize
    ("is_allocated", (X,), "block", U32),
]
# (type name, keyword or position of the size, its valid range)
CONSTRUCTORS = [
    ("BlockManager", "num_gpu_blocks", (1, MAX_BLOCKS)),
    ("BlockManager", "block_size", (1, 2**16)),
    ("BlockManager", "num_cpu_blocks", (0, MAX_BLOCKS)),
    ("BuddyAllocator", "num_blocks", (0, MAX_BLOCKS)),
    ("LifoBlockAllocator", "num_blocks", (0, MAX_BLOCKS)),
]


def populated_manager(mod):
    m = mod.BlockManager(16, 4, num_cpu_blocks=8, watermark=0.0)
    m.allocate(0, 5)
    m.allocate(U64, 3)  # the largest id is a valid one
    m.allocate(5, 4)
    m.swap_out([5])
    return m


def manager_state(m):
    return m.stats(), m.seq_ids(), m.running_seq_ids(), [m.block_table(s) for s in m.seq_ids()]


def populated_allocator(cls):
    a = cls(16)
    a.allocate(1), a.allocate(1)
    return a


def allocator_state(a):
    return a.num_free_blocks, a.free_blocks_per_order(), [a.is_allocated(b) for b in range(a.num_blocks)]


def fill(args, value):
    return tuple(([value if x is X else x for x in a] if isinstance(a, list) else (value if a is X else a))
                 for a in args)


def check_agreement(rust, ref, state, method, args, name, hi, value):
    call = fill(args, value)
    got, want = outcome(getattr(rust, method), *call), outcome(getattr(ref, method), *call)
    assert got == want, f"{method}{call}"
    assert state(rust) == state(ref), f"state after {method}{call}"
    if not 0 <= value <= hi:
        assert got[:2] == ("raised", "ValueError") and got[2].startswith(f"{name} must be an integer in"), got


def table(calls):
    return [pytest.param(*c, v, id=f"{c[0]}-{c[2]}-{v}") for c in calls for v in EXTREMES]


@pytest.mark.parametrize("method, args, name, hi, value", table(MANAGER_CALLS))
def test_block_manager_agrees_on_extreme_ints(method, args, name, hi, value):
    from phase1_rust_memory import solution

    check_agreement(populated_manager(solution), populated_manager(reference), manager_state,
                    method, args, name, hi, value)


@pytest.mark.parametrize("kind", ["BuddyAllocator", "LifoBlockAllocator"])
@pytest.mark.parametrize("method, args, name, hi, value", table(ALLOCATOR_CALLS))
def test_allocators_agree_on_extreme_ints(kind, method, args, name, hi, value):
    from phase1_rust_memory import solution

    rust, ref = populated_allocator(getattr(solution, kind)), populated_allocator(getattr(reference, kind))
    check_agreement(rust, ref, allocator_state, method, args, name, hi, value)


def construct(mod, kind, arg, value):
    if kind != "BlockManager":
        return getattr(mod, kind)(value)
    sizes = {"num_gpu_blocks": 8, "block_size": 4, "num_cpu_blocks": 2, arg: value}
    return mod.BlockManager(sizes["num_gpu_blocks"], sizes["block_size"], num_cpu_blocks=sizes["num_cpu_blocks"])


@pytest.mark.parametrize("kind, arg, bounds", CONSTRUCTORS)
@pytest.mark.parametrize("value", [v for v in EXTREMES if v <= 2**16 or v > MAX_BLOCKS])  # no 16 GiB pools here
def test_constructors_bound_sizes(kind, arg, bounds, value):
    from phase1_rust_memory import solution

    built = [outcome(construct, mod, kind, arg, value) for mod in (solution, reference)]
    errors = [b[:3] if isinstance(b, tuple) else "built" for b in built]
    assert errors[0] == errors[1]
    if bounds[0] <= value <= bounds[1]:
        assert errors[0] == "built"
    else:
        assert errors[0][:2] == ("raised", "ValueError")
        assert errors[0][2].startswith(f"{arg} must be an integer in [{bounds[0]}, {bounds[1]}], got {value}:")


def test_can_allocate_never_wraps():
    from phase1_rust_memory import solution

    for mod in (solution, reference):
        m = mod.BlockManager(8, 1, watermark=0.0)
        assert [m.can_allocate(n) for n in (8, 9, 2**63 - 1, 2**63, U64)] == [True, False, False, False, False]


ANY_INT = st.one_of(st.sampled_from(EXTREMES), st.integers(), st.integers(-3, 3).map(lambda d: 2**64 + d))


@settings(max_examples=150, deadline=None)
@given(call=st.sampled_from(MANAGER_CALLS), value=ANY_INT)
def test_random_ints_agree(call, value):
    from phase1_rust_memory import solution

    check_agreement(populated_manager(solution), populated_manager(reference), manager_state, *call, value)


HUGE_POOLS = """
import resource
from phase1_rust_memory import reference, solution

def first_error(make):
    try:
        make()
    except Exception as e:
        return type(e).__name__
    return "built"

huge = {"gpu": lambda m: m.BlockManager(2**31 - 1), "cpu": lambda m: m.BlockManager(8, num_cpu_blocks=2**31 - 1),
        "buddy": lambda m: m.BuddyAllocator(2**31 - 1), "lifo": lambda m: m.LifoBlockAllocator(2**31 - 1)}
too_big = {"gpu": lambda m: m.BlockManager(2**31), "cpu": lambda m: m.BlockManager(8, num_cpu_blocks=2**40),
           "block": lambda m: m.BlockManager(8, 2**40), "lifo": lambda m: m.LifoBlockAllocator(2**64)}
for name, make in too_big.items():
    print("too_big", name, first_error(lambda: make(solution)), first_error(lambda: make(reference)))
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB: every huge pool below must fail
for name, make in huge.items():
    print("huge", name, first_error(lambda: make(solution)), first_error(lambda: make(reference)))
"""


def test_huge_pools_raise_instead_of_aborting():
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(HUGE_POOLS)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, f"exit {run.returncode} (-6: abort): {run.stderr[-2000:]}"
    lines = run.stdout.split("\n")
    assert [ln for ln in lines if ln.startswith("too_big")] == [
        f"too_big {n} ValueError ValueError" for n in ("gpu", "cpu", "block", "lifo")]
    assert [ln for ln in lines if ln.startswith("huge")] == [
        f"huge {n} MemoryError MemoryError" for n in ("gpu", "cpu", "buddy", "lifo")]
