"""Prefix caching in the block manager: Rust vs the reference, and both vs an independent model of the cache.

- Differential (hypothesis): random operation sequences mixing ``allocate_cached`` / ``cache_full_blocks``
  with every other call (fork, copy-on-write, swap, preemption, exhaustion) give the same answers, errors
  and ``stats()`` in Rust and in the reference, and ``check_invariants()`` is empty after every call.
- Model: a cache keyed by the whole token prefix (no hashing at all: a dict prefix -> block and an LRU
  list of unreferenced cached blocks) predicts every hit length, registration count, eviction count and
  which cached prefixes survive; both implementations must agree with it.
- Direct cases: the block of the last token is never reused, copy-on-write of a shared partial block
  under caching, eviction order (least recently released, a sequence's tail first), off by default.
"""

from collections import OrderedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from p1_helpers import needs_native, outcome

from phase1_rust_memory import OutOfBlocks, reference
from phase1_rust_memory.reference_prefix_cache import OFF

pytestmark = needs_native

# Three token streams sharing their first 12 tokens: prompts cut from them share prefixes of many lengths.
BASES = [[7, 3, 9, 1, 4, 4, 8, 2, 6, 5, 0, 3] + tail for tail in
         ([11 + i for i in range(40)], [90 - i for i in range(40)], [11 + i for i in range(20)] + [5] * 20)]


def tokens(base: int, n: int) -> list[int]:
    return BASES[base][:n]


def impls(kind: str, *args, **kwargs):
    from phase1_rust_memory import solution

    return (solution if kind == "rust" else reference).BlockManager(*args, **kwargs)


IDS = st.integers(0, 5)
GROUP = st.lists(IDS, min_size=0, max_size=4)
PROMPT = st.tuples(st.integers(0, 2), st.integers(0, 30))
OPS = st.one_of(
    st.tuples(st.just("allocate_cached"), IDS, PROMPT),
    st.tuples(st.just("allocate_cached"), IDS, PROMPT),
    st.tuples(st.just("cache_full_blocks"), IDS, st.integers(0, 40)),
    st.tuples(st.just("cache_full_blocks"), IDS, st.integers(0, 40)),
    st.tuples(st.just("allocate"), IDS, st.integers(0, 30)),
    st.tuples(st.just("step"), GROUP),
    st.tuples(st.just("append_slot"), IDS),
    st.tuples(st.just("fork"), IDS, IDS),
    st.tuples(st.just("free"), IDS),
    st.tuples(st.just("free"), IDS),
    st.tuples(st.just("swap_out"), GROUP),
    st.tuples(st.just("swap_in"), GROUP),
    st.tuples(st.just("can_allocate"), st.integers(0, 60)),
    st.tuples(st.just("can_append"), GROUP),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(num_gpu=st.integers(1, 24), block_size=st.integers(1, 5), num_cpu=st.integers(0, 12),
       policy=st.sampled_from(["refuse", "preempt"]), allocator=st.sampled_from(["buddy", "lifo"]),
       ops=st.lists(OPS, min_size=10, max_size=60))
def test_prefix_caching_matches_reference(num_gpu, block_size, num_cpu, policy, allocator, ops):
    kwargs = dict(num_cpu_blocks=num_cpu, watermark=0.0, policy=policy, allocator=allocator, prefix_caching=True)
    run_differential(num_gpu, block_size, kwargs, ops)


def run_differential(num_gpu, block_size, kwargs, ops):
    rust, ref = impls("rust", num_gpu, block_size, **kwargs), impls("reference", num_gpu, block_size, **kwargs)
    known: dict[int, list[int]] = {}  # each sequence's prompt, so cache_full_blocks mostly passes real tokens
    for name, *args in ops:
        if name == "allocate_cached":
            args = [args[0], tokens(*args[1])]
        elif name == "cache_full_blocks":
            args = [args[0], known.get(args[0], BASES[0])[:args[1]]]
        got, want = outcome(getattr(rust, name), *args), outcome(getattr(ref, name), *args)
        assert got == want, f"{name}{tuple(args)}"
        if name == "allocate_cached" and got[0] != "raised":
            known[args[0]] = args[1]
        assert rust.stats() == ref.stats(), f"stats after {name}{tuple(args)}"
        assert rust.check_invariants() == [] and ref.check_invariants() == [], f"after {name}{tuple(args)}"
        assert rust.num_free_gpu_blocks == ref.num_free_gpu_blocks
    assert rust.seq_ids() == ref.seq_ids() and rust.running_seq_ids() == ref.running_seq_ids()


def random_ops(rng, n: int) -> list[tuple]:
    """Longer runs than hypothesis favours: the pool fills, cached blocks are released, revived, evicted."""
    ops = []
    for _ in range(n):
        name = rng.choice(["allocate_cached"] * 3 + ["cache_full_blocks"] * 3 + ["free"] * 3 + [
            "step", "step", "fork", "swap_out", "swap_in", "allocate"])
        sid = rng.randrange(6)
        if name == "allocate_cached":
            ops.append((name, sid, (rng.randrange(3), rng.randint(1, 30))))
        elif name == "cache_full_blocks":
            ops.append((name, sid, rng.randint(0, 40)))
        elif name in ("step", "swap_out", "swap_in"):
            ops.append((name, rng.sample(range(6), rng.randint(0, 4))))
        elif name == "fork":
            ops.append((name, sid, rng.randrange(6)))
        elif name == "allocate":
            ops.append((name, sid, rng.randint(0, 20)))
        else:
            ops.append((name, sid))
    return ops


@pytest.mark.parametrize("seed", range(30))
def test_long_random_sequences_match_reference(seed):
    import random

    rng = random.Random(seed)
    kwargs = dict(num_cpu_blocks=rng.randint(0, 16), watermark=0.0, policy=rng.choice(["refuse", "preempt"]),
                  allocator=rng.choice(["buddy", "lifo"]), prefix_caching=True)
    run_differential(rng.randint(6, 30), rng.randint(1, 4), kwargs, random_ops(rng, 300))


class Model:
    """The cache as a dict keyed by the whole token prefix a block ends, plus an LRU of unreferenced blocks."""

    def __init__(self, num_blocks: int, bs: int):
        self.n, self.bs = num_blocks, bs
        self.seqs: dict[int, dict] = {}  # id -> tokens, table, number of leading full blocks hashed
        self.cache: dict[tuple, int] = {}
        self.key_of: dict[int, tuple] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.evictions = self.hits = self.queries = 0

    def refs(self, b: int) -> int:
        return sum(s["table"].count(b) for s in self.seqs.values())

    def allocator_free(self) -> int:
        held = {b for s in self.seqs.values() for b in s["table"]} | set(self.cache.values())
        return self.n - len(held)

    def evict(self, n: int) -> None:
        for _ in range(n):
            b, _ = self.lru.popitem(last=False)
            del self.cache[self.key_of.pop(b)]
            self.evictions += 1

    def allocate_cached(self, m, sid: int, toks: list[int]):
        bs, hit = self.bs, []
        for i in range(max(len(toks) - 1, 0) // bs):
            b = self.cache.get(tuple(toks[:(i + 1) * bs]))
            if b is None:
                break
            hit.append(b)
        fresh = -(-len(toks) // bs) - len(hit)
        revived = sum(1 for b in hit if b in self.lru)
        before = m.stats()
        if sid in self.seqs or fresh + revived > self.allocator_free() + len(self.lru):
            with pytest.raises(ValueError if sid in self.seqs else OutOfBlocks):
                m.allocate_cached(sid, toks)
            assert m.stats() == before, "a refused call changed the manager"
            return
        for b in hit:
            self.lru.pop(b, None)
        self.evict(max(fresh - self.allocator_free(), 0))
        table, cached = m.allocate_cached(sid, toks)
        assert table[:len(hit)] == hit and cached == len(hit) * bs
        assert not set(table[len(hit):]) & set(self.cache.values()), "a fresh block is still cached"
        self.queries, self.hits = self.queries + len(toks), self.hits + cached
        self.seqs[sid] = dict(tokens=list(toks), table=table, hashed=len(hit))

    def cache_full_blocks(self, m, sid: int) -> None:
        s, bs, expect = self.seqs[sid], self.bs, 0
        for i in range(s["hashed"], len(s["tokens"]) // bs):
            key, b = tuple(s["tokens"][:(i + 1) * bs]), s["table"][i]
            if b not in self.key_of and key not in self.cache:
                self.cache[key], self.key_of[b] = b, key
                expect += 1
        s["hashed"] = max(s["hashed"], len(s["tokens"]) // bs)
        assert m.cache_full_blocks(sid, s["tokens"]) == expect

    def append(self, m, sid: int, base: int) -> None:
        s = self.seqs[sid]
        if len(s["tokens"]) % self.bs == 0:  # a new block: from the allocator, else the LRU's front
            if self.allocator_free() + len(self.lru) == 0:
                return
            if self.allocator_free() == 0:
                self.evict(1)
        m.step([sid])
        s["table"] = m.block_table(sid)
        s["tokens"].append(BASES[base][len(s["tokens"])] if len(s["tokens"]) < len(BASES[base]) else 1)

    def free(self, m, sid: int) -> None:
        s = self.seqs.pop(sid)
        m.free(sid)
        for b in reversed(s["table"]):
            if self.refs(b) == 0 and b in self.key_of:
                self.lru[b] = None

    def check(self, m) -> None:
        stats = m.stats()
        assert (stats["cached_blocks"], stats["evictable_blocks"], stats["evictions"]) == (
            len(self.cache), len(self.lru), self.evictions)
        assert (stats["prefix_hits"], stats["prefix_queries"]) == (self.hits, self.queries)
        assert m.num_free_gpu_blocks == self.allocator_free() + len(self.lru)
        assert m.check_invariants() == []


@pytest.mark.parametrize("kind", ["rust", "reference"])
@pytest.mark.parametrize("seed", range(20))
def test_hits_and_evictions_match_an_independent_model(kind, seed):
    import random

    rng = random.Random(seed)
    num_gpu, bs = rng.randint(4, 24), rng.randint(1, 4)
    m = impls(kind, num_gpu, bs, watermark=0.0, prefix_caching=True)
    model = Model(num_gpu, bs)
    for _ in range(200):
        op, sid = rng.choice(["alloc", "alloc", "cache", "cache", "append", "free", "free"]), rng.randrange(5)
        base, n = rng.randrange(3), rng.randint(1, 30)
        if op == "alloc":
            model.allocate_cached(m, sid, tokens(base, n))
        elif sid in model.seqs and op == "cache":
            model.cache_full_blocks(m, sid)
        elif sid in model.seqs and op == "append":
            model.append(m, sid, base)
        elif sid in model.seqs:
            model.free(m, sid)
        model.check(m)


@pytest.mark.parametrize("kind", ["rust", "reference"])
def test_last_token_block_is_never_reused_and_cow_still_copies(kind):
    bs = 4
    m = impls(kind, 16, bs, watermark=0.0, prefix_caching=True)
    prompt = tokens(0, 8)  # exactly two full blocks
    table, cached = m.allocate_cached(0, prompt)
    assert cached == 0 and m.cache_full_blocks(0, prompt) == 2
    again, cached = m.allocate_cached(1, prompt)
    assert cached == 4, "the block holding the last token must be recomputed"
    assert again[0] == table[0] and again[1] != table[1] and m.ref_count(again[1]) == 1
    m.free(1)
    # A fork shares a partly filled block: the first writer copies it, cached full blocks stay shared.
    longer = tokens(0, 10)
    t2, cached = m.allocate_cached(2, longer)
    assert cached == 8 and t2[:2] == table
    m.fork(2, 3)
    res = m.step([3])
    assert res.copies == [(t2[2], res.new_blocks[0][1])] and m.block_table(3)[:2] == table
    assert m.ref_count(table[0]) == 3 and m.stats()["cow_copies"] == 1
    assert m.check_invariants() == []


@pytest.mark.parametrize("kind", ["rust", "reference"])
def test_eviction_takes_the_least_recently_released_tail_first(kind):
    bs = 2
    m = impls(kind, 6, bs, watermark=0.0, prefix_caching=True)
    a, b = tokens(1, 6), tokens(2, 6)[:2] + [50, 51, 52, 53]  # share their first block
    ta, _ = m.allocate_cached(0, a)
    m.cache_full_blocks(0, a)
    m.free(0)  # released tail first: LRU = ta[2], ta[1], ta[0]
    tb, cached = m.allocate_cached(1, b)  # hits ta[0]; needs 2 fresh: 3 free in the allocator
    assert cached == 2 and tb[0] == ta[0] and m.stats()["evictions"] == 0
    m.allocate(2, 2)  # 1 allocator block left, takes it; the next allocation must evict
    m.allocate(3, 2)
    assert m.stats()["evictions"] == 1
    m.free(2)
    _, cached = m.allocate_cached(4, a)  # ta[2] was evicted first (the tail); ta[0], ta[1] still cached
    assert cached == 4
    assert m.check_invariants() == []


def test_prefix_caching_is_off_by_default():
    for kind in ("rust", "reference"):
        m = impls(kind, 8, 4)
        assert not m.prefix_caching and "prefix_hits" not in m.stats()
        assert outcome(m.allocate_cached, 0, [1, 2, 3]) == ("raised", "ValueError", OFF, ())
        m.allocate(0, 3)
        assert outcome(m.cache_full_blocks, 0, [1, 2, 3]) == ("raised", "ValueError", OFF, ())


@pytest.mark.parametrize("bad", [[1, -1], [2**32], [1, 2**64]])
def test_out_of_range_token_ids_are_the_same_error(bad):
    got = [outcome(impls(k, 8, 4, prefix_caching=True).allocate_cached, 0, bad) for k in ("rust", "reference")]
    assert got[0] == got[1] and got[0][1] == "ValueError" and "token_ids" in got[0][2]
