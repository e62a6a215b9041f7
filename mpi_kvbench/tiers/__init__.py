"""Tier plug-ins (one module each, registered by name in registry.py) and how a rank
opens its stack of them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from mpi_kvbench.context import RankContext
from mpi_kvbench.errors import ConfigError
from mpi_kvbench.registry import TIERS
from mpi_kvbench.tiers.base import Tier


def open_tiers(specs: Sequence[Any], ctx: RankContext, object_bytes: int, *, one_writer: bool,
               group_bcast: Callable[[Any], Any]) -> list[Tier]:
    """Builds and opens every configured tier (``config.TierSpec``s), fastest first.

    With ``one_writer`` a shareable tier is one copy per TP group: the group's first rank
    creates it, then tells the others (``group_bcast``, the group's broadcast from its
    first rank) whether they can open it. On a failure the tiers opened so far are closed.
    """
    tiers: list[Tier] = []
    try:
        for spec in specs:
            cls = TIERS.load(spec.kind)
            shared = one_writer and cls.shareable
            share = ("writer" if ctx.tp_rank == 0 else "reader") if shared else "private"
            tier = cls(spec.params, spec.capacity_bytes, object_bytes, level=spec.level, share=share)
            if shared:
                _open_in_turn(tier, ctx, group_bcast)
            else:
                tier.open(ctx)
            tiers.append(tier)
            if tier.slots == 0 and spec.capacity_bytes > 0:   # asked for, but holds nothing
                raise ConfigError(
                    f"tiers.{spec.level}.capacity_gb={spec.capacity_bytes / 1e9:g} holds no object"
                    f" ({object_bytes / 1e9:g} GB each); give it at least one object's size, or 0"
                    " to turn the tier off")
    except BaseException as exc:
        for tier in tiers:
            tier.close()
        if isinstance(exc, OSError | MemoryError | ValueError | OverflowError) \
                and not isinstance(exc, ConfigError):   # name the tier, not a traceback
            what = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise ConfigError(f"tiers.{spec.level}: rank {ctx.rank} cannot set up its {spec.kind}"
                              f" tier ({what}); check tiers.{spec.level}") from None
        raise
    return tiers


def _open_in_turn(tier: Tier, ctx: RankContext, group_bcast: Callable[[Any], Any]) -> None:
    if tier.share == "writer":
        try:
            tier.open(ctx)
        except BaseException:
            group_bcast(False)
            raise
        group_bcast(True)
    elif group_bcast(None):
        tier.open(ctx)
    else:
        raise ConfigError(f"tiers.{tier.level}: the TP group's writer could not create the shared file")
