"""`workbench transcoder train|eval`: the driver that ties data, training, saving and evaluation together.

A training run folder holds `transcoder/` (workbench format), `saelens/` (SAE-Lens format),
`checkpoint/` (for --resume) and results.json with the training record; `eval` reads any of
`transcoder/`, `saelens/` or an SAE-Lens folder that SAE-Lens itself saved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import altair as alt
import pandas as pd

from workbench.corpus import TokenWindows
from workbench.errors import WorkbenchError
from workbench.models import ModelHandle
from workbench.results import Provenance, Result, register_result
from workbench.settings import Settings
from workbench.transcoders import defaults
from workbench.transcoders.data import Batch, mlp_hooks, model_pairs, store_pairs
from workbench.transcoders.defaults import WIDTH_PER_D_MODEL, default_layer
from workbench.transcoders.direct import pairs_dtype
from workbench.transcoders.files import load_transcoder, save_transcoder
from workbench.transcoders.model import Transcoder, TranscoderConfig
from workbench.transcoders.saelens import load_saelens, save_saelens
from workbench.transcoders.train import CHECKPOINT, TrainConfig, Trainer

DEFINITION = (
    "Transcoder from the MLP's input (blocks.L.mlp.hook_in, the normalised residual) to its "
    "output (blocks.L.mlp.hook_out). Loss: batch FVU (+ λ·mean Σz/RMS‖y‖ for relu; + α·AuxK FVU of dead "
    "features for topk); Adam, linear warm-up, linear decay over the last fifth; unit-norm decoder rows. "
    "See docs/methods.md#architecture-and-training."
)


@register_result
@dataclass(kw_only=True)
class TranscoderTraining(Result):
    kind = "transcoder_train"
    title = "Transcoder training"

    model: str
    layer: int
    arch: str
    width: int
    k: int | None
    l1: float | None
    skip: bool
    tokens: int
    steps: int
    seconds: float
    tokens_per_second: float
    source: str
    curve: list[dict]
    provenance: Provenance
    tokens_requested: int | None = None  # --tokens N; `tokens` (trained) differs when N is not whole steps

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.curve).assign(model=self.model, layer=self.layer, arch=self.arch)

    def charts(self) -> dict[str, alt.Chart]:
        long = pd.DataFrame(self.curve).melt(id_vars=["step", "tokens"], value_vars=["fvu", "l0", "dead"])
        return {
            "training": alt.Chart(long, width=240, height=140)
            .mark_line()
            .encode(
                x="tokens:Q", y=alt.Y("value:Q", title=None), column="variable:N", tooltip=["tokens", "value"]
            )
            .resolve_scale(y="independent")
            .properties(title=f"{self.model} layer {self.layer}: {self.arch} transcoder, width {self.width}")
        }


def training_windows(
    handle: ModelHandle,
    corpus: str | None = None,
    text: list[str] | None = None,
    context: int = 128,
    seed: int = 0,
) -> TokenWindows:
    """Every window of the training text in one seeded order that mixes documents and domains.

    The text (`workbench.calibration.training_source`): `text` files, else `corpus` NAME:SPLIT as named,
    else NAME's train split (pydocs:train); read through `workbench.calibration.calibration_windows`.
    """
    from workbench.calibration import calibration_windows, training_source

    return calibration_windows(handle, training_source(corpus, text), context, None, seed)


def tokens_note(requested: int, batch_size: int) -> str | None:
    """Why training on `requested` tokens trains another number (whole optimiser steps), or None."""
    steps = max(1, requested // batch_size)
    trained = steps * batch_size
    if trained == requested:
        return None
    why = (
        f"less than one optimiser step of {batch_size} tokens (--batch-tokens)"
        if requested < batch_size
        else f"not a whole number of optimiser steps of {batch_size} tokens (--batch-tokens); the last "
        f"{requested - trained} were dropped"
    )
    steps_text = f"{steps} step" + ("s" if steps > 1 else "")
    return f"trained {trained} tokens in {steps_text}, not {requested}: {requested} is {why}"


@dataclass(frozen=True, kw_only=True)
class TranscoderSettings(Settings):
    """Which transcoder is trained, and how; the defaults come from `transcoders/defaults.py` and
    `TrainConfig` (token budget, batch, learning rate, dead-feature remedy, seed)."""

    layer: int | None = None  # None: the middle layer (`defaults.default_layer`)
    arch: str = defaults.ARCH  # topk or relu
    width: int | None = None  # None: WIDTH_PER_D_MODEL × d_model
    k: int | None = defaults.K  # topk only
    l1: float | None = None  # relu: the L1 coefficient λ (None: train.py's default)
    skip: bool = False  # a linear skip connection x W_skipᵀ
    train: TrainConfig = field(default_factory=TrainConfig)


def train_transcoder(
    handle: ModelHandle,
    windows: TokenWindows | None,
    settings: TranscoderSettings = TranscoderSettings(),
    *,
    out: Path,
    store: str | Path | None = None,
    resume: bool = False,
    windows_per_forward: int = 8,
    progress: bool = True,
    on_start: Callable[[], None] | None = None,
    comm=None,
) -> tuple[Transcoder, TranscoderTraining]:
    """Train (or resume) a transcoder on `settings.layer` of `handle`; weights land in `out`.

    Training pairs come from `windows` (`training_windows`: every window of the train split) through the
    model, or from a paired capture `store`; `windows_per_forward` windows go through the model at once.
    `on_start` is called once every check has passed, just before training (the run folder's begin).
    SIGINT/SIGTERM during training save a checkpoint and raise TrainingInterrupted (see train.py).

    `comm` (`workbench.scale.ddp`): this is one of `comm.world` DDP processes. Each takes its share of
    every global batch of `settings.train.batch_size` tokens (from the model: every world-th window, in
    its own shuffle buffer; from a store: its rows of the same shuffled batches); process 0 writes.
    """
    world, rank = (comm.world, comm.rank) if comm is not None else (1, 0)
    arch, skip = settings.arch, settings.skip
    if handle.facts.moe:
        raise WorkbenchError(f"{handle.name} routes its MLPs to experts; transcoders need a dense MLP layer.")
    layer = default_layer(handle.facts.n_layers) if settings.layer is None else settings.layer
    if not 0 <= layer < handle.facts.n_layers:
        raise WorkbenchError(f"--layer must be in 0..{handle.facts.n_layers - 1}, got {layer}.")
    train = settings.train
    hook_in, hook_out = mlp_hooks(layer)
    cfg = TranscoderConfig(
        d_in=handle.facts.d_model,
        d_out=handle.facts.d_model,
        width=settings.width or WIDTH_PER_D_MODEL * handle.facts.d_model,
        arch=arch,
        k=settings.k if arch == "topk" else None,
        l1=settings.l1,
        skip=skip,
        model=handle.name,
        layer=layer,
        hook_in=hook_in,
        hook_out=hook_out,
    )
    tc = Transcoder(cfg, seed=train.seed)
    if world > 1:
        from workbench.transcoders.distributed import DistributedTrainer

        if train.batch_size % world:
            raise WorkbenchError(
                f"--batch-tokens {train.batch_size} does not split into {world} equal shares; give a "
                f"multiple of --nproc {world}."
            )
        trainer = DistributedTrainer(tc, train, out, comm)
    else:
        trainer = Trainer(tc, train, out)
    share = train.batch_size // world  # tokens of each global batch this process trains on
    checkpoint = out / CHECKPOINT
    if resume:
        if not (checkpoint / "state.json").is_file():
            raise WorkbenchError(
                f"Nothing to resume: {checkpoint} holds no checkpoint. Drop --resume to start."
            )
        trainer.load(checkpoint)
        if trainer.tc.cfg.to_dict() != cfg.to_dict():
            raise WorkbenchError(f"The checkpoint in {out} is of a different transcoder; start a new --out.")
    elif checkpoint.exists():
        raise WorkbenchError(
            f"{out} already holds a training checkpoint: add --resume, or choose a new --out."
        )
    if store is not None:
        batches = store_pairs(
            store, hook_in, hook_out, train.batch_size, train.seed, start=trainer.state.cursor
        )
        if world > 1:  # every process reads the same global batches and keeps its own rows
            batches = (
                Batch(
                    b.x[rank * share : (rank + 1) * share], b.y[rank * share : (rank + 1) * share], b.cursor
                )
                for b in batches
            )
        source, precision = f"store {store}", {}
    else:
        if windows is None:
            raise WorkbenchError("Give token windows or a store to train from.")
        dtype = pairs_dtype(train.pairs_dtype, handle.device)
        buffer = min(65536, max(2 * train.batch_size, train.tokens // 4))
        batches = model_pairs(
            handle,
            windows if world == 1 else windows.every(world, rank),
            layer,
            share,
            buffer_tokens=buffer if world == 1 else max(2 * share, buffer // world),
            windows_per_forward=windows_per_forward,
            seed=train.seed if world == 1 else train.seed * world + rank,
            start=trainer.state.cursor,
            cache=train.tokens > windows.n_tokens,  # more than one pass: keep the pairs when they fit
            dtype=dtype,
        )
        precision = {"pairs_dtype_used": str(dtype).removeprefix("torch.")}
        source = f"model ({precision['pairs_dtype_used']} forward), on the fly through a shuffle buffer"
    if world > 1:
        source += f"; {world} DDP processes, {share} tokens of each batch apiece"
    if on_start is not None:
        on_start()
    state = trainer.run(batches, progress=progress and rank == 0)
    if rank == 0:
        save_transcoder(tc, out / "transcoder")
        save_saelens(tc, out / "saelens")
    data = windows.slice_info if windows is not None and store is None else {"store": str(store)}
    tokens = {"tokens_requested": train.tokens, "tokens_trained": state.tokens}
    tokens |= {"tokens_note": tokens_note(train.tokens, train.batch_size)}
    provenance = Provenance(
        model=handle.facts.to_dict(),
        data=data,
        definition=DEFINITION,
        settings={"transcoder": cfg.to_dict(), "train": train.__dict__, "learning_rate": trainer.lr}
        | tokens
        | precision
        | ({"processes": world} if world > 1 else {}),
        seed=train.seed,
    )
    record = TranscoderTraining(
        model=handle.name,
        layer=layer,
        arch=arch,
        width=cfg.width,
        k=cfg.k,
        l1=cfg.l1,
        skip=skip,
        tokens=state.tokens,
        steps=state.step,
        seconds=state.seconds,
        tokens_per_second=state.tokens / max(1e-9, state.seconds),
        source=source,
        curve=state.curve,
        provenance=provenance,
        tokens_requested=train.tokens,
    )
    return tc, record


def load_any(path: str | Path) -> Transcoder:
    """A transcoder from a training run folder, a workbench transcoder folder, or an SAE-Lens folder."""
    path = Path(path).expanduser()
    for folder in (path / "transcoder", path):
        if (folder / "config.json").is_file() and (folder / "weights.safetensors").is_file():
            return load_transcoder(folder)
    for folder in (path / "saelens", path):
        if (folder / "cfg.json").is_file():
            return load_saelens(folder)
    raise WorkbenchError(
        f"No transcoder in {path}: expected a training run folder (transcoder/ or saelens/ inside) or an "
        "SAE-Lens folder (cfg.json + sae_weights.safetensors)."
    )
