"""The workload interface: a source of normalised requests, in trace order.

A workload knows nothing about ranks, tiers or clocks. It yields ``Request``s whose
prompt is a sequence of content segments ``(identity, tokens)``: equal identities are
equal tokens, which is how shared system prompts, RAG documents, earlier turns of a
conversation and Mooncake's hash ids become shared chunk-chain prefixes.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class Request:
    index: int                  # unique in the trace; increasing within a user
    user: int                   # a user's requests run in order on one replica
    session: int                # conversation; turns extend its chain
    arrival_s: float            # intended arrival, seconds after the measured phase starts
    think_s: float | None       # closed loop: intended = user's previous completion + think_s
    qos: str                    # one of workloads.qos.QOS_CLASSES
    segments: tuple[tuple[int, int], ...]   # the prompt: (content identity, tokens)
    output_tokens: int
    output_id: int              # identity of the tokens this request generates

    @property
    def prompt_tokens(self) -> int:
        return sum(n for _, n in self.segments)

    def context_after(self) -> tuple[tuple[int, int], ...]:
        """Prompt plus generated output: what the next turn builds on."""
        return (*self.segments, (self.output_id, self.output_tokens))


class Workload(abc.ABC):
    """Base of every request source.

    ``partitionable`` workloads can generate one replica's share by themselves (each rank
    makes only its own users' requests, no messages); the others are read once on rank 0
    and sent to the replicas in batches (see distribute.py).
    """

    partitionable: ClassVar[bool] = False

    @dataclasses.dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Any, seed: int) -> None:
        self.params = params
        self.seed = seed

    @abc.abstractmethod
    def requests(self, replica: int = 0, replicas: int = 1) -> Iterator[Request]:
        """Requests in trace order; the same seed and params give the same sequence.

        A partitionable workload yields only the users ``u`` with ``u % replicas ==
        replica``; the others ignore the arguments and yield the whole trace.
        """

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """Facts stored in the result (counts, what was skipped, how tokens were counted)."""
