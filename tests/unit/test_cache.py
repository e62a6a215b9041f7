"""The waterfall cache (cache.Hierarchy) with LRU eviction.

Besides worked examples, a property test drives random lookups and placements the way the
engine does and carries every plan out on a model of the tiers' slots, stage by stage,
checking that no step reads data that is not (or no longer) there and no write lands on
data still to be read.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mpi_kvbench.engine.cache import Hierarchy, Move, Plan, watermark_levels
from mpi_kvbench.eviction.lru import LruPolicy

OBJ = 4096
NAMES = ("hbm", "dram", "storage")


def hierarchy(slots: list[int], high: float = 1.0, low: float = 1.0) -> Hierarchy:
    levels = watermark_levels(NAMES[:len(slots)], slots, high, low, [LruPolicy() for _ in slots])
    return Hierarchy(levels, OBJ)


def where(h: Hierarchy, key: int) -> tuple[int, int] | None:
    e = h.index.get(key)
    return None if e is None else (e.level, e.slot)


def put(h: Hierarchy, *keys: int) -> Plan:
    return h.place(list(keys), pinned=set())


def contents(h: Hierarchy) -> dict[tuple[int, int], int]:
    return {(e.level, e.slot): k for k, e in h.index.items()}


# ---- worked examples ----------------------------------------------------------------------


def test_new_objects_land_in_the_top_tier() -> None:
    h = hierarchy([3, 3])
    plan = put(h, 1, 2)
    assert [p.level for p in plan.placements] == [0, 0]
    assert plan.stages == [] and plan.promotions == []
    assert h.used_bytes() == [2 * OBJ, 0]


def test_lru_victim_order_and_access_refreshes() -> None:
    h = hierarchy([3, 10])
    for k in (1, 2, 3):
        put(h, k)
    assert [k for k, _ in h.lookup([1])] == [1]          # 1 is now the most recent
    slot2 = where(h, 2)[1]
    plan = put(h, 4)
    assert plan.stages == [[Move(2, 0, slot2, 1, where(h, 2)[1])]]
    assert where(h, 2)[0] == 1
    assert {k for k, e in h.index.items() if e.level == 0} == {1, 3, 4}
    put(h, 5)                                            # next LRU is 3, then 1
    assert where(h, 3)[0] == 1
    put(h, 6)
    assert where(h, 1)[0] == 1
    assert {k for k, e in h.index.items() if e.level == 0} == {4, 5, 6}


def test_lookup_is_a_prefix_and_counts_only_the_prefix() -> None:
    h = hierarchy([3, 10])
    put(h, 1)
    put(h, 2)
    put(h, 3)
    assert [k for k, _ in h.lookup([1, 99, 2])] == [1]   # stops at the first miss
    # 2 was not touched by that lookup, so it is now the LRU
    put(h, 4)
    assert where(h, 2)[0] == 1


def test_watermarks_demote_from_high_down_to_low() -> None:
    h = hierarchy([10, 20], high=0.8, low=0.5)           # demote when over 8 used, down to 5
    lv = h.levels[0]
    assert (lv.high, lv.low) == (8, 5)
    for k in range(8):
        plan = put(h, k)
        assert plan.stages == []
    assert lv.used == 8
    plan = put(h, 8)                                     # would be 9 > 8
    moved = [m.key for stage in plan.stages for m in stage]
    assert moved == [0, 1, 2, 3]                         # the four least recently used
    assert all(m.src_level == 0 and m.dst_level == 1 for m in plan.stages[0])
    assert lv.used == 5 <= lv.low
    assert h.levels[1].used == 4


def test_demotions_go_one_tier_down_and_the_bottom_drops() -> None:
    h = hierarchy([1, 1, 1])
    put(h, 1)
    put(h, 2)
    put(h, 3)
    assert [where(h, k)[0] for k in (3, 2, 1)] == [0, 1, 2]
    before = {k: where(h, k) for k in (1, 2, 3)}
    plan = put(h, 4)
    # deepest stage first: drop 1 from the bottom, then 2 -> storage, then 3 -> dram
    assert plan.stages == [
        [Move(1, 2, before[1][1], None, None)],
        [Move(2, 1, before[2][1], 2, before[1][1])],
        [Move(3, 0, before[3][1], 1, before[2][1])],
    ]
    assert 1 not in h
    assert [where(h, k)[0] for k in (4, 3, 2)] == [0, 1, 2]
    assert plan.placements[0].key == 4 and plan.placements[0].level == 0


def test_promotion_moves_a_hit_to_the_top_and_frees_its_slot_after_the_plan() -> None:
    h = hierarchy([2, 4])
    for k in (1, 2, 3):
        put(h, k)                                        # 1 demoted to dram
    src = where(h, 1)
    assert src[0] == 1
    hits = h.lookup([1])
    plan = h.place([], pinned={k for k, _ in hits}, promote=[1])
    assert len(plan.promotions) == 1
    mv = plan.promotions[0]
    assert (mv.key, mv.src_level, mv.src_slot, mv.dst_level) == (1, 1, src[1], 0)
    assert where(h, 1) == (0, mv.dst_slot)
    # top was full: its LRU (2) went down, and not into the slot the promotion still reads
    assert [m.key for s in plan.stages for m in s] == [2]
    assert where(h, 2)[0] == 1 and where(h, 2)[1] != src[1]
    assert src[1] in h.levels[1].free                     # released once the plan is made
    assert h.levels[1].used == 1


def test_promotion_of_a_top_tier_hit_is_a_no_op() -> None:
    h = hierarchy([2, 4])
    put(h, 1)
    plan = h.place([], pinned={1}, promote=[1])
    assert plan.promotions == [] and plan.stages == []
    assert where(h, 1)[0] == 0


def test_pinned_objects_stay_and_new_ones_go_lower() -> None:
    h = hierarchy([2, 2])
    put(h, 1, 2)
    plan = h.place([3], pinned={1, 2})
    assert plan.stages == []
    assert plan.placements[0].level == 1
    assert where(h, 1)[0] == where(h, 2)[0] == 0


def test_no_room_anywhere_places_nothing() -> None:
    h = hierarchy([1, 1])
    put(h, 1)
    put(h, 2)                                           # 1 -> dram
    plan = h.place([3], pinned={1, 2})
    assert plan.placements == [] and 3 not in h


def test_a_tier_without_slots_is_skipped() -> None:
    h = hierarchy([0, 2])
    plan = put(h, 1)
    assert plan.placements[0].level == 1
    h = hierarchy([2, 0, 2])
    put(h, 1, 2)
    plan = put(h, 3)
    assert plan.stages[0][0].dst_level == 2


def test_watermark_levels() -> None:
    levels = watermark_levels(["a", "b", "c"], [100, 1, 0], 0.95, 0.85,
                              [LruPolicy(), LruPolicy(), LruPolicy()])
    assert [(lv.slots, lv.high, lv.low) for lv in levels] == [(100, 95, 85), (1, 1, 0), (0, 0, 0)]
    assert sorted(levels[0].free) == list(range(100))


# ---- random sequences against a model of the slots ------------------------------------------


def carry_out(before: dict[tuple[int, int], int], plan: Plan,
              hit_reads: list[tuple[int, int, int]]) -> dict[tuple[int, int], int]:
    """Runs the plan as the engine does: stages in order (each stage's moves at once), then
    hit reads and promotions at once, then the new objects' writes."""
    store = dict(before)
    written: set[tuple[int, int]] = set()
    moved: list[int] = []
    for stage in plan.stages:
        assert stage, "empty stage"
        reads = [(m.src_level, m.src_slot) for m in stage]
        writes = [(m.dst_level, m.dst_slot) for m in stage if m.dst_level is not None]
        assert len(set(reads)) == len(reads) and len(set(writes)) == len(writes)
        assert not set(reads) & set(writes), "a stage writes a slot it also reads"
        assert not set(reads) & written, "a stage reads a slot an earlier stage wrote"
        for m in stage:
            assert m.dst_level is None or m.dst_level > m.src_level     # stages only demote
            assert store.get((m.src_level, m.src_slot)) == m.key, "read of data not there"
        for m in stage:
            del store[(m.src_level, m.src_slot)]
            moved.append(m.key)
        for m in stage:
            if m.dst_level is not None:
                assert (m.dst_level, m.dst_slot) not in store, "write over unread data"
                store[(m.dst_level, m.dst_slot)] = m.key
        written |= set(writes)
    assert len(set(moved)) == len(moved), "an object moved twice in one plan"
    # hit reads and promotions run together after the stages
    for key, lv, slot in hit_reads:
        assert store.get((lv, slot)) == key
        assert (lv, slot) not in written
    reads = {(lv, slot) for _, lv, slot in hit_reads}
    for p in plan.promotions:
        assert p.dst_level < p.src_level
        assert store.get((p.src_level, p.src_slot)) == p.key
        assert (p.src_level, p.src_slot) not in written
        reads.add((p.src_level, p.src_slot))
    pwrites = [(p.dst_level, p.dst_slot) for p in plan.promotions]
    assert len(set(pwrites)) == len(pwrites)
    assert not set(pwrites) & reads, "a promotion writes a slot read in the same stage"
    for p in plan.promotions:
        assert (p.dst_level, p.dst_slot) not in store
        store[(p.dst_level, p.dst_slot)] = p.key
    for p in plan.promotions:
        del store[(p.src_level, p.src_slot)]
    for pl in plan.placements:
        assert (pl.level, pl.slot) not in store, "a new object overwrites live data"
        store[(pl.level, pl.slot)] = pl.key
    return store


def check_consistent(h: Hierarchy) -> None:
    for n, lv in enumerate(h.levels):
        mine = [e.slot for e in h.index.values() if e.level == n]
        assert len(mine) <= lv.slots
        assert len(set(mine)) == len(mine), "two objects in one slot"
        assert len(set(lv.free)) == len(lv.free), "a slot twice in the free list"
        assert all(0 <= s < lv.slots for s in lv.free + mine)
        assert not set(mine) & set(lv.free), "a used slot in the free list"
        assert len(mine) + len(lv.free) == lv.slots
        assert lv.used == len(mine)
        # the policy of each tier knows exactly the objects of the tier
        everything = lv.policy.victims(10**18, frozenset())
        assert sorted(everything) == sorted(k for k, e in h.index.items() if e.level == n)
    assert h.used_bytes() == [lv.used * OBJ for lv in h.levels]


request_st = st.tuples(
    st.lists(st.integers(0, 40), max_size=10, unique=True),   # the request's object keys
    st.booleans())                                            # promote hits to the top?


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=3).filter(any),
       st.sampled_from([(1.0, 1.0), (0.95, 0.85), (0.8, 0.5), (0.5, 0.3), (1.0, 0.2)]),
       st.lists(request_st, max_size=25))
def test_random_requests_keep_the_hierarchy_consistent(slots, marks, requests) -> None:
    h = hierarchy(slots, *marks)
    for keys, promote_hits in requests:
        hits = h.lookup(keys)
        assert [k for k, _ in hits] == keys[:len(hits)]
        hit_reads = [(k, e.level, e.slot) for k, e in hits]
        promote = [k for k, e in hits if e.level > 0] if promote_hits else []
        new = [k for k in keys[len(hits):] if k not in h]
        before = contents(h)
        plan = h.place(new, pinned={k for k, _ in hits}, promote=promote)
        after = carry_out(before, plan, [r for r in hit_reads if r[0] not in promote])
        assert after == contents(h), "the index does not say where the data is"
        check_consistent(h)
        hit_keys = {k for k, _ in hits}
        assert not hit_keys & {m.key for s in plan.stages for m in s}, "a hit was moved"
        assert all(k in h for k in hit_keys)
        placed = {p.key for p in plan.placements}
        assert placed <= set(new)
        assert all((k in h) == (k in placed) for k in new)
        # a new object only goes below the top tier when the top has no room for it
        if any(p.level > 0 for p in plan.placements) and h.levels[0].slots:
            assert not h.levels[0].free
