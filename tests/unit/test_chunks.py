"""Prefix-chain semantics of chunk keys (chunks.chunk_keys).

The oracle is the module docstring: a prompt is a list of segments (identity, tokens);
token j of a segment is named (identity, j); a chunk's key depends on the names of its
tokens and on the key of the chunk before it. So two streams share key i exactly when the
names of their first (i + 1) * chunk_tokens tokens are equal.
"""

from __future__ import annotations

import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from mpi_kvbench.layout import chunk_keys

Segments = list[tuple[int, int]]


def names(segments: Segments) -> list[tuple[int, int]]:
    """Each token's name: (segment identity, offset inside the segment)."""
    return [(ident, j) for ident, n in segments for j in range(n)]


def first_difference(a: Segments, b: Segments) -> int:
    """Number of leading tokens the two streams name alike."""
    na, nb = names(a), names(b)
    d = 0
    while d < min(len(na), len(nb)) and na[d] == nb[d]:
        d += 1
    return d


def check_pair(a: Segments, b: Segments, ct: int) -> None:
    ka, kb = chunk_keys(a, ct), chunk_keys(b, ct)
    d = first_difference(a, b)
    for i in range(min(len(ka), len(kb))):
        if (i + 1) * ct <= d:
            assert ka[i] == kb[i], (i, d)
        else:
            assert ka[i] != kb[i], (i, d)


segments_st = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40)), max_size=8)


@settings(max_examples=150, deadline=None)
@given(segments_st, st.integers(1, 17))
def test_one_key_per_full_chunk(segs: Segments, ct: int) -> None:
    keys = chunk_keys(segs, ct)
    total = sum(n for _, n in segs)
    assert len(keys) == total // ct
    assert all(isinstance(k, int) and 0 <= k < 2**64 for k in keys)
    assert len(set(keys)) == len(keys)            # a chain: repeated content, new keys


@settings(max_examples=250, deadline=None)
@given(segments_st, segments_st, st.integers(0, 400), st.integers(1, 17))
def test_shared_prefix_shares_exactly_the_chunks_inside_it(a: Segments, tail: Segments, cut: int,
                                                           ct: int) -> None:
    # b = the first `cut` tokens of a, then other segments
    b: Segments = []
    left = cut
    for ident, n in a:
        if left <= 0:
            break
        b.append((ident, min(n, left)))
        left -= n
    b += tail
    check_pair(a, b, ct)


@settings(max_examples=200, deadline=None)
@given(segments_st, segments_st, st.integers(1, 17))
def test_any_two_streams(a: Segments, b: Segments, ct: int) -> None:
    check_pair(a, b, ct)


@settings(max_examples=200, deadline=None)
@given(segments_st, st.lists(st.tuples(st.integers(0, 8), st.integers(0, 3))), st.integers(1, 17))
def test_empty_segments_change_nothing(segs: Segments, inserts: list[tuple[int, int]],
                                       ct: int) -> None:
    padded = list(segs)
    for pos, ident in inserts:
        padded.insert(min(pos, len(padded)), (ident + 100, 0))
    assert chunk_keys(padded, ct) == chunk_keys(segs, ct)


def test_system_prompt_shared_by_two_users() -> None:
    ct = 16
    a = chunk_keys([(0xA, 100), (1, 60)], ct)
    b = chunk_keys([(0xA, 100), (2, 60)], ct)
    assert len(a) == len(b) == 160 // ct
    shared = 100 // ct                       # chunks 0..5 lie inside the 100 shared tokens
    assert a[:shared] == b[:shared]
    assert all(a[i] != b[i] for i in range(shared, len(a)))


def test_changing_one_segment_changes_its_chunk_and_every_later_one() -> None:
    ct = 16
    base = [(1000 + k, 10) for k in range(20)]          # 200 tokens, 12 full chunks
    keys = chunk_keys(base, ct)
    assert len(keys) == 12
    for k in range(20):
        changed = list(base)
        changed[k] = (9999, 10)
        other = chunk_keys(changed, ct)
        i = (10 * k) // ct                               # first chunk holding a token of k
        assert other[:i] == keys[:i]
        assert all(other[j] != keys[j] for j in range(i, len(keys)))


def test_one_token_more_or_less() -> None:
    ct = 16
    assert chunk_keys([(5, 15)], ct) == []                         # partial chunk: no key
    k100 = chunk_keys([(5, 100)], ct)
    assert len(k100) == 6
    assert chunk_keys([(5, 112)], ct)[:6] == k100                  # growing keeps the prefix
    assert len(chunk_keys([(5, 112)], ct)) == 7
    assert chunk_keys([(5, 96)], ct) == k100                       # the partial tail never counts


def test_segment_offsets_are_per_segment() -> None:
    # (A, 32) names tokens (A,0..31); (A,16),(A,16) names (A,0..15),(A,0..15): different
    # tokens, so the second chunk differs while the first is shared.
    one = chunk_keys([(7, 32)], 16)
    two = chunk_keys([(7, 16), (7, 16)], 16)
    assert one[0] == two[0]
    assert one[1] != two[1]
    # the same segments cut differently by the chunk size still agree on the shared part
    assert chunk_keys([(7, 16), (8, 16)], 8)[:2] == chunk_keys([(7, 16), (9, 16)], 8)[:2]


def test_order_of_segments_matters() -> None:
    assert chunk_keys([(1, 8), (2, 8)], 16) != chunk_keys([(2, 8), (1, 8)], 16)


def test_keys_are_the_same_in_another_process() -> None:
    """Every rank of a TP group must compute the same keys: no per-process hash seed."""
    segs = [(123, 50), (2**63 + 5, 70)]
    code = ("from mpi_kvbench.layout import chunk_keys; "
            f"print(chunk_keys({segs!r}, 16))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    assert out.strip() == str(chunk_keys(segs, 16))
