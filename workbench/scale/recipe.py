"""How a worker gets its own copy of the driver's model: a recipe it loads from, checked by fingerprint.

A recipe is small and picklable (a registry name or checkpoint folder, device, dtype, whether weights
were processed, and for a randomly initialised copy its seed). Each worker process loads a recipe once
and keeps it for later tasks. Its weights' fingerprint must equal the driver's, so that a model edited
in memory is refused rather than silently replaced by the checkpoint on disk.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import xxhash

from workbench.errors import WorkbenchError
from workbench.models import MODELS, ModelHandle, load_model


def weights_fingerprint(handle: ModelHandle) -> str:
    """xxh3-128 over every weight's name, dtype, shape and bytes (memory speed: ~50 ms for 135M params)."""
    digest = xxhash.xxh3_128()
    for name, tensor in sorted(handle.hf_model.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelRecipe:
    source: str  # registry name, or the local checkpoint folder (which every worker must see)
    device: str  # "cpu" or "cuda" (a Ray task sees only the GPU it was given)
    dtype: str
    process_weights: bool
    random_init_seed: int | None = None  # a randomly initialised copy of the architecture (experts baseline)
    fingerprint: str = ""  # the driver's weights; a worker whose copy differs refuses to run

    @classmethod
    def of(cls, handle: ModelHandle, random_init_seed: int | None = None) -> ModelRecipe:
        facts = handle.facts
        source = facts.name if facts.name in MODELS else facts.checkpoint
        return cls(
            source=source,
            device=handle.device.type,
            dtype=facts.dtype,
            process_weights=facts.weights_processed,
            random_init_seed=random_init_seed,
            fingerprint=weights_fingerprint(handle),
        )

    def load(self) -> ModelHandle:
        """This process's copy (loaded on first use, then kept), refused if its weights differ."""
        handle, fingerprint = _loaded(self)
        if self.fingerprint and fingerprint != self.fingerprint:
            raise WorkbenchError(
                f"A worker's copy of {self.source} differs from the driver's model (edited in memory, or "
                "another checkpoint in that folder on this machine). Save the model as a checkpoint "
                "folder every worker can read, and load that."
            )
        return handle


@functools.lru_cache(maxsize=2)
def _loaded(recipe: ModelRecipe) -> tuple[ModelHandle, str]:
    handle = load_model(
        recipe.source,
        device=recipe.device,
        dtype=getattr(torch, recipe.dtype),
        process_weights=recipe.process_weights,
        progress=False,
    )
    if recipe.random_init_seed is not None:
        from workbench.experts.specialization import randomly_initialised

        handle = randomly_initialised(handle, recipe.random_init_seed)
    return handle, weights_fingerprint(handle)
