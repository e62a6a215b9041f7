"""The synthetic workload's requests: prompt sizes from the templates, turns that extend
one chain, shared system prompts, and replicas that split the users exactly."""

from __future__ import annotations

import itertools

import pytest

from mpi_kvbench.workloads.synthetic import TEMPLATES, SyntheticWorkload


def make(seed: int = 3, **params) -> SyntheticWorkload:
    p = SyntheticWorkload.Params(**{"users": 6, "max_turns": 3, **params})
    p.check()
    return SyntheticWorkload(p, seed)


def take(w: SyntheticWorkload, n: int = 200, **kw) -> list:
    return list(itertools.islice(w.requests(**kw), n))


def until(w: SyntheticWorkload, seconds: float, **kw) -> list:
    """Every request due before ``seconds`` (the stream itself never ends)."""
    return list(itertools.takewhile(lambda r: r.arrival_s < seconds, w.requests(**kw)))


@pytest.mark.parametrize("system_prompts", [0, 4])
def test_a_first_turn_holds_the_templates_context_tokens(system_prompts: int) -> None:
    """A conversation opens with a context of the template's size, system prompt included
    when there is one (and not taken off when there is none)."""
    lo, hi = TEMPLATES["chatbot"][0]
    reqs = take(make(templates={"chatbot": 1}, system_prompts=system_prompts,
                     system_prompt_tokens=300))
    firsts = [r for r in reqs if len(r.segments) == (2 if system_prompts else 1)]
    assert len(firsts) == len({r.session for r in reqs})
    for r in firsts:
        assert lo <= r.prompt_tokens <= hi, (r.segments, system_prompts)
        assert (r.segments[0][1] == 300) == bool(system_prompts)


def test_later_turns_extend_the_previous_turns_context() -> None:
    reqs = take(make(follow_up_tokens_min=5, follow_up_tokens_max=9))
    last = {}
    for r in reqs:
        prev = last.get(r.session)
        if prev is not None:
            assert r.segments[:-1] == prev.context_after()
            assert 5 <= r.segments[-1][1] <= 9
            assert r.arrival_s == pytest.approx(prev.arrival_s + r.think_s)   # its own pause
        last[r.session] = r
    assert any(len(r.segments) > 2 for r in reqs)


def test_system_prompts_are_shared_across_users() -> None:
    reqs = take(make(users=20, system_prompts=2))
    sys_ids = {r.segments[0][0] for r in reqs}
    assert len(sys_ids) == 2
    users = {ident: {r.user for r in reqs if r.segments[0][0] == ident} for ident in sys_ids}
    assert max(len(u) for u in users.values()) > 1


def test_replicas_split_the_users_and_keep_their_requests() -> None:
    w = make(users=7, max_turns=2)
    whole = until(w, 20.0)
    parts = [until(w, 20.0, replica=i, replicas=3) for i in range(3)]
    for i, part in enumerate(parts):
        assert {r.user % 3 for r in part} == {i}
        assert part == [r for r in whole if r.user % 3 == i]
    assert sorted(r.index for p in parts for r in p) == sorted(r.index for r in whole)
    assert [r.arrival_s for r in whole] == sorted(r.arrival_s for r in whole)


def test_open_loop_has_no_think_time_and_the_seed_fixes_the_trace() -> None:
    reqs = take(make(request_rate=50.0), 300)
    assert all(r.think_s is None for r in reqs)
    assert take(make(request_rate=50.0), 300) == reqs
    assert take(make(seed=4, request_rate=50.0), 300) != reqs


def test_a_turns_think_time_is_the_pause_before_it() -> None:
    """``think_s`` is what the engine waits after the user's previous turn completed, so it
    must be the gap that made this turn's nominal time; then a device that serves at once
    sees every turn due at its nominal time, in trace order (the think drawn for a turn is
    the pause before the next one: giving it to the turn itself put the trace out of order
    and queued requests behind other users' think times)."""
    reqs = take(make(users=4, max_turns=5), 120)
    last: dict[int, float] = {}
    for r in reqs:
        if r.user in last:
            assert r.think_s == pytest.approx(r.arrival_s - last[r.user], abs=1e-9)
        last[r.user] = r.arrival_s
    assert len(last) == 4 and len(reqs) > 4 * 5


def test_an_instant_device_queues_no_request(tmp_path) -> None:
    """Trace mode (every tier instant, a virtual clock) serves closed-loop users as they
    come: no request waits for a batch slot, so every latency is 0 (the default run's
    workload; its queue p50 was 260 ms of other users' think time before the fix)."""
    import json

    from mpi_kvbench.cli import main

    assert main(["--trace-only", "--duration", "0", "--max-requests", "400", "--model", "tiny-1b",
                 "--results-dir", str(tmp_path), "--run-name", "t", "--quiet"]) == 0
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert s["requests_completed"] == 400
    assert all(v == 0 for k in ("request_queue", "request_e2e") for v in s["latency_ms"][k].values())
