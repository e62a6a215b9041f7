"""Which TP group serves each request of a trace file: decided on rank 0, in trace order,
before the requests are sent (distribute.py). Pure (no MPI), so one process tests it.

Policies (``workload.routing``):

- ``user``: group = user % groups, the rule trace files always had. Where every record
  is its own user (Mooncake, Azure, BurstGPT without sessions) it is round robin in
  file order, and requests that share a prefix land on different groups.
- ``round_robin``: each new user goes to the next group in turn.
- ``prefix``: a new user goes to the group that holds the longest prefix of its first
  prompt's chunk chain, as KV-aware routers do (Mooncake's conductor, the vLLM
  production stack, llm-d, Dynamo's KV router); no held prefix, or a tie, goes to the
  least-loaded group. A group is taken to hold every chunk of the requests routed to it
  (prompt and output: what the engine writes), as if caches never evicted.

A user never changes group, whatever the policy: its first request decides and the rest
follow, so a conversation's turns (BurstGPT v2 sessions, ShareGPT) run in order where
their KV is, and a closed-loop user's next arrival (its previous completion on the same
rank plus think time) stays meaningful.

Load (``prefix``): the tokens routed to a group so far, prompt plus output. A group's
tiers move about that much (hits are read, misses and outputs written), and prompts
differ a hundredfold in length (Mooncake: 100 to 100k+ tokens), so counting requests
would call a group of long prompts balanced. It is cumulative, not queued work: routing
is done ahead of the run, without the device's timing, so what it balances is each
group's share of the trace.

The bound: a group may take a request for its prefix only while its load exceeds the
lightest group's by at most ``load_bound`` times the mean group load, plus one mean
request (so the first requests of a trace can follow their prefix before every group
has load). The lightest group always may, so the request goes to the eligible group
with the longest held prefix. ``LOAD_BOUND = 0.25``: no group carries more than a
quarter of the mean above the lightest. A hot prefix then spreads over a few groups at
the price of one cold miss of that prefix on each. On a 2000-request Mooncake-like
trace over four groups it keeps the hit ratio of an unbounded router (0.294; one group:
0.294) with shares of 24-26 %; a bound of 0 (within one mean request of the lightest)
drops it to 0.236, no bound lets one group take 32 %.

Cost on rank 0 with ``prefix``: one chunk-key computation per request (what each rank's
engine does anyway; 0.1-0.2 ms per request of 12k tokens on a loaded laptop core), and
a map of every chunk key routed so far to a bit mask of the groups holding it, about 75
bytes per distinct chunk, plus one entry per user: 2.6 KB per request on the
Mooncake-like trace (35 new chunks per request at 256 tokens), 260 MB per 100k
requests. It lives for the set-up only, and caches that never evict are what it models.
"""

from __future__ import annotations

from collections.abc import Iterator

from mpi_kvbench.layout import chunk_keys
from mpi_kvbench.workloads.base import Request
from mpi_kvbench.workloads.tracefile import ROUTINGS

#: how far above the lightest group's load (a share of the mean group load, plus one mean
#: request) a group still takes a request for its prefix; see the module docstring.
LOAD_BOUND = 0.25


def _bits(mask: int) -> Iterator[int]:
    """The group numbers set in ``mask``, lowest first."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class Router:
    """Routes requests, given in trace order, to ``groups`` groups; deterministic: the same
    requests in the same order give the same groups."""

    def __init__(self, policy: str, groups: int, chunk_tokens: int,
                 load_bound: float = LOAD_BOUND) -> None:
        if policy not in ROUTINGS:
            raise ValueError(f"routing {policy!r}: use one of {', '.join(ROUTINGS)}")
        if groups < 1 or chunk_tokens < 1 or load_bound < 0:
            raise ValueError(f"groups={groups}, chunk_tokens={chunk_tokens}, load_bound={load_bound}:"
                             " give groups and chunk_tokens >= 1 and load_bound >= 0")
        self.policy = policy
        self.groups = groups
        self.chunk_tokens = chunk_tokens
        self.load_bound = load_bound
        self.loads = [0] * groups                # tokens routed to each group so far
        self.routed = 0
        self._user_group: dict[int, int] = {}    # user -> its group (round_robin, prefix)
        self._held: dict[int, int] = {}          # chunk key -> bit mask of groups holding it
        self._turn = 0                           # round_robin: the next new user's group

    def route(self, req: Request) -> int:
        """The group that serves ``req``; requests must come in trace order."""
        keys = chunk_keys(req.context_after(), self.chunk_tokens) if self.policy == "prefix" else []
        if self.policy == "user":
            group = req.user % self.groups
        elif (known := self._user_group.get(req.user)) is not None:
            group = known
        else:
            if self.policy == "round_robin":
                group, self._turn = self._turn, (self._turn + 1) % self.groups
            else:
                group = self._by_prefix(keys[: req.prompt_tokens // self.chunk_tokens])
            self._user_group[req.user] = group
        self.loads[group] += req.prompt_tokens + req.output_tokens
        self.routed += 1
        bit = 1 << group
        for key in keys:     # the group now holds the prompt's and the output's chunks
            self._held[key] = self._held.get(key, 0) | bit
        return group

    def held_prefix(self, prompt_keys: list[int]) -> list[int]:
        """Per group, how many leading chunks of ``prompt_keys`` it holds."""
        matched = [0] * self.groups
        alive, depth = (1 << self.groups) - 1, 0
        for key in prompt_keys:
            still = alive & self._held.get(key, 0)
            for g in _bits(alive & ~still):
                matched[g] = depth
            alive = still
            if not alive:
                return matched
            depth += 1
        for g in _bits(alive):
            matched[g] = depth
        return matched

    def _by_prefix(self, prompt_keys: list[int]) -> int:
        """The eligible group with the longest held prefix; ties to the least loaded."""
        matched = self.held_prefix(prompt_keys)
        total = sum(self.loads)
        mean_request = total / self.routed if self.routed else 0
        cap = min(self.loads) + self.load_bound * total / self.groups + mean_request
        eligible = [g for g in range(self.groups) if self.loads[g] <= cap]
        return max(eligible, key=lambda g: (matched[g], -self.loads[g], -g))
