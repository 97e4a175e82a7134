"""What replay keeps between edit lists: compiled plans, pruning orders and loaded transcoders, each in its
own bounded least-recently-used map under a typed key.

A session's plans are its own (each plan's `apply_seconds` is reported by the session that compiled it);
pruning orders and transcoders depend on the model alone, so sessions that share an engine's tensors
(`ReplaySession(..., engine_of=...)`) share them too (`ReplayCache.sharing_loaded`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from workbench.replay.edits import Edit, WeightPrune

if TYPE_CHECKING:
    from workbench.essential.pruning import PrunableMatrix, PruningPlan
    from workbench.replay.plan import Plan

PLAN_CACHE = 16  # compiled edit lists without weight pruning kept per session
PRUNED_PLAN_CACHE = 2  # compiled edit lists with weight pruning (each holds masked copies of its weights)
PRUNING_ORDERS = 4  # pruning orders (scores ranked once; int32 ranks per weight) kept per model
TRANSCODER_CACHE = 16  # loaded transcoders kept per model

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A map holding at most `capacity` entries; adding one more forgets the least recently used
    (a `get` or a `put` counts as a use)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"an LRU holds at least one entry, not {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        if key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key: K, value: V) -> V:
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        """Keys, least recently used first."""
        return iter(list(self._entries))


@dataclass(frozen=True)
class PlanKey:
    """An edit list, by its canonical JSON; `prunes_weights` when it holds a weight-pruning edit."""

    edits: str
    prunes_weights: bool

    @classmethod
    def of(cls, edits: list[Edit]) -> PlanKey:
        return cls(
            json.dumps([e.to_dict() for e in edits], sort_keys=True),
            any(isinstance(e, WeightPrune) for e in edits),
        )


@dataclass(frozen=True)
class PruningOrderKey:
    """A weight-pruning edit by everything but its level: edits that differ only in sparsity share the
    ranked scores."""

    pattern: str
    criterion: str
    layers: tuple[int, ...] | None
    matrices: tuple[str, ...] | None
    seed: int

    @classmethod
    def of(cls, edit: WeightPrune) -> PruningOrderKey:
        return cls(edit.pattern, edit.criterion, edit.layer_list, edit.matrices, edit.seed)


@dataclass(frozen=True)
class TranscoderKey:
    """A transcoder file spliced in at a layer."""

    path: str
    layer: int


@dataclass
class ReplayCache:
    """Replay's caches, one bounded LRU per kind."""

    plans: LRU[PlanKey, Plan] = field(default_factory=lambda: LRU(PLAN_CACHE))
    pruned_plans: LRU[PlanKey, Plan] = field(default_factory=lambda: LRU(PRUNED_PLAN_CACHE))
    pruning_orders: LRU[PruningOrderKey, tuple[list[PrunableMatrix], PruningPlan]] = field(
        default_factory=lambda: LRU(PRUNING_ORDERS)
    )
    transcoders: LRU[TranscoderKey, Any] = field(default_factory=lambda: LRU(TRANSCODER_CACHE))

    def plans_for(self, key: PlanKey) -> LRU[PlanKey, Plan]:
        """The LRU that holds plans like `key`'s: plans holding pruned weight copies
        have their own, smaller one."""
        return self.pruned_plans if key.prunes_weights else self.plans

    def sharing_loaded(self) -> ReplayCache:
        """A cache with plans of its own that shares this one's pruning orders and transcoders."""
        return ReplayCache(pruning_orders=self.pruning_orders, transcoders=self.transcoders)
