"""Training a transcoder: Adam with warm-up and linear decay, unit-norm decoder rows, dead features.

Loss: FVU = Σ‖y − ŷ‖² / Σ‖y − ȳ‖² over the batch (scale-free), plus for `relu` λ · mean_t Σ_i z_i (decoder
rows have unit norm, and z is measured in units of the batch's RMS ‖y‖), plus for `topk` with the
`auxk` remedy (sparsify's) α · the FVU of the residual error explained by the top dead features,
on a quarter of each batch's tokens (ours: the same signal at a quarter of the cost).
The `resample` remedy (relu's default; with `auxk+resample` also for topk) re-initialises dead features
towards the worst-reconstructed inputs. The `lift` remedy (ours; topk's default from the data start)
raises a dead feature's encoder bias until it just enters the top k on its nearest token of the batch.
A feature is dead when it has not fired for `dead_tokens` tokens (1/40 of the run, if shorter).
`topk` starts from the data (`data` initialisation, ours): feature i's encoder and decoder point at the
i-th training pair's centred x and y, at the encoder scale that best reconstructs those pairs, which
leaves far fewer features dead than a random start (AuxK is the default only from a random start).

Checkpoints (weights, optimiser, counters, data cursor) are written atomically every
`checkpoint_every` steps and at the end; `train(..., resume=True)` continues from the last one.
SIGINT or SIGTERM during `Trainer.run` finishes the current step, writes a checkpoint and raises
`TrainingInterrupted` (a second signal stops at once, without one).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from workbench.errors import WorkbenchError
from workbench.progress import Bar
from workbench.transcoders.data import Batch
from workbench.transcoders.defaults import (
    BATCH_TOKENS,
    CHECKPOINT_EVERY,
    DEAD_TOKENS,
    RESAMPLE_EVERY,
    TRAIN_TOKENS,
)
from workbench.transcoders.files import load_weights, read_config, safe_torch_load, save_transcoder
from workbench.transcoders.model import Transcoder, TranscoderConfig, TranscoderOutput

CHECKPOINT = "checkpoint"
# the data start's encoder entries are at least this many of its Adam steps in size, so that the first
# steps cannot turn a feature away from the input it started on (Trainer.initialise_from_data)
START_STEPS = 20
LOG_EVERY = 20


@dataclass
class TrainConfig:
    tokens: int = TRAIN_TOKENS
    batch_size: int = BATCH_TOKENS
    lr: float | None = None  # default: 2e-4 / sqrt(width / 2^14) for topk (sparsify's rule), 4e-4 for relu
    warmup_steps: int = 50
    decay_fraction: float = 0.2  # linear decay to zero over the last fifth of the steps
    dead_tokens: int = DEAD_TOKENS
    remedy: str | None = None  # lift, auxk, resample, auxk+resample or none; default: dead_remedy
    init: str | None = None  # data (topk default) or random (relu default): see Trainer.initialise_from_data
    auxk_alpha: float = 1 / 32
    auxk_fraction: float = 0.25  # share of each batch's tokens the AuxK loss looks at (ours, for speed)
    resample_every: int = RESAMPLE_EVERY
    checkpoint_every: int = CHECKPOINT_EVERY
    # the precision of the model forward that makes pairs (direct.pairs_dtype); a store's are as stored
    pairs_dtype: str = "auto"
    seed: int = 0

    def learning_rate(self, tc: TranscoderConfig) -> float:
        if self.lr is not None:
            return self.lr
        return 2e-4 / math.sqrt(tc.width / 2**14) if tc.arch == "topk" else 4e-4

    def dead_remedy(self, tc: TranscoderConfig) -> str:
        """topk from the data start lifts dead features by default: on SmolLM2 layer 15 (width 9216, k 32,
        409,600 tokens) it left 0.4 % dead on held-out text against 7.3 % with no remedy, at the same FVU;
        AuxK left more features dead than no remedy on the README's 3M-token run (RESULTS.md, issue 18)."""
        if self.remedy:
            return self.remedy
        if tc.arch == "relu":
            return "resample"
        return "lift" if self.initialisation(tc) == "data" else "auxk"

    def lifts(self, tc: TranscoderConfig) -> bool:
        return tc.arch == "topk" and self.dead_remedy(tc) == "lift"

    def uses_auxk(self, tc: TranscoderConfig) -> bool:
        return tc.arch == "topk" and self.dead_remedy(tc) in ("auxk", "auxk+resample")

    def resamples_at(self, tc: TranscoderConfig, step: int) -> bool:
        """Whether dead features are re-initialised after `step` steps: every resample_every steps with
        the resample remedies; for topk not in the decay phase, which leaves too little training for them."""
        if self.dead_remedy(tc) not in ("resample", "auxk+resample") or step % self.resample_every:
            return False
        return tc.arch == "relu" or step < self.steps * (1 - self.decay_fraction)

    def initialisation(self, tc: TranscoderConfig) -> str:
        return self.init or ("data" if tc.arch == "topk" else "random")

    @property
    def dead_window(self) -> int:
        """Tokens without firing before a feature counts as dead: dead_tokens, or 1/40 of a shorter run.

        Measured (bench transcoder, 409,600 tokens): a tenth of the run left 28 % of features dead at
        the end, a fortieth 18.5 % with a lower FVU (0.1176 vs 0.1205): AuxK must start early.
        """
        return min(self.dead_tokens, max(10 * self.batch_size, self.tokens // 40))

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    cursor: int = 0
    seconds: float = 0.0
    last_loss: float = float("nan")
    last_fvu: float = float("nan")
    last_l0: float = float("nan")
    curve: list[dict] = field(
        default_factory=list
    )  # every LOG_EVERY steps: step, tokens, loss, fvu, l0, dead
    world_size: int = 1  # processes that trained it (DDP, transcoders/distributed.py)
    cursors: list[int] = field(default_factory=list)  # each process's data cursor (DDP)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # what a shell reports for a process the signal ended


def note_stop_signals(requested: list[int]) -> dict:
    """Until `restore_signals`, SIGINT and SIGTERM are appended to `requested` instead of stopping the
    process; a second one raises KeyboardInterrupt at once. Only the main thread can take signals."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def note(signum, frame) -> None:
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    return {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM)}


def restore_signals(previous: dict) -> None:
    for s, handler in previous.items():
        signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    decay_start = cfg.steps * (1 - cfg.decay_fraction)
    decay = 1.0 if step < decay_start else max(0.0, (cfg.steps - step) / max(1.0, cfg.steps - decay_start))
    return warm * decay


def unit_rows(v: torch.Tensor) -> torch.Tensor:
    """Each row scaled to norm 1 (a zero row stays zero)."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-8)


def fitted_scale(
    x: torch.Tensor, y: torch.Tensor, encoder: torch.Tensor, decoder: torch.Tensor, k: int, rows: int = 4096
) -> float:
    """The scale s minimising ‖y − s·R‖² for centred pairs (x, y), where R is what the unit-scale codes
    decode to: R = Σ_topk (x·e_i) d_i. Top-k selection does not change with s (the centring bias scales
    with it), so this is a closed-form least-squares fit. At most `rows` pairs are used."""
    x, y = x[:rows], y[:rows]
    values, indices = (x @ encoder).topk(k, dim=-1, sorted=False)
    codes = values.clamp_min(0)
    decoded = torch.nn.functional.embedding_bag(indices, decoder, per_sample_weights=codes, mode="sum")
    return float((y * decoded).sum() / (decoded * decoded).sum().clamp_min(1e-12))


def fvu(y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    return (y - y_hat).pow(2).sum() / (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)


def auxk_loss(tc: Transcoder, aux, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
    """FVU of the residual error y − ŷ explained by the strongest dead features alone (no bias)."""
    error_hat = torch.nn.functional.embedding_bag(
        aux.indices, tc.W_dec, per_sample_weights=aux.values, mode="sum"
    )
    rows = len(error_hat)
    return fvu((y[:rows] - y_hat[:rows]).detach(), error_hat)


class Trainer:
    processes = 1  # DDP processes training together (transcoders/distributed.py)

    def __init__(self, tc: Transcoder, cfg: TrainConfig, out: Path | None = None) -> None:
        self.tc, self.cfg, self.out = tc, cfg, Path(out) if out else None
        self.lr = cfg.learning_rate(tc.cfg)
        encoder = [tc.W_enc, tc.b_enc]  # its own group: the data start may slow it (initialise_from_data)
        rest = [p for p in tc.parameters() if all(p is not q for q in encoder)]
        groups = [{"params": encoder, "lr_scale": 1.0}, {"params": rest, "lr_scale": 1.0}]
        self.optimiser = torch.optim.Adam(groups, lr=self.lr, fused=True)
        self.state = TrainState()
        self.last_fired = torch.zeros(tc.width, dtype=torch.long)  # token count when each feature last fired

    def set_learning_rates(self) -> None:
        """This step's learning rate (warm-up and decay) for each parameter group, times its lr_scale."""
        for group in self.optimiser.param_groups:
            group["lr"] = self.lr * group["lr_scale"] * lr_factor(self.state.step, self.cfg)

    def dead(self) -> torch.Tensor:
        return (self.state.tokens - self.last_fired) > self.cfg.dead_window

    def step(self, batch: Batch) -> None:
        tc, cfg = self.tc, self.cfg
        self.set_learning_rates()
        x, y = batch.x, batch.y
        if self.state.step == 0:
            self.initialise_biases(x, y)
        dead = self.dead()
        n_dead = int(dead.sum())
        use_aux = cfg.uses_auxk(tc.cfg) and n_dead > 0
        if use_aux:
            aux_rows = max(1, int(len(x) * cfg.auxk_fraction))  # batches are shuffled: a random subset
            encoded, aux = tc.encode_with_aux(x, dead, min(n_dead, tc.cfg.d_out // 2), aux_rows)
            y_hat = tc.decode(encoded) + (x @ tc.W_skip.T if tc.W_skip is not None else 0)
            out = TranscoderOutput(y_hat, encoded)
        else:
            out = tc(x)
        loss = recon = fvu(y, out.y_hat)
        values, indices = out.encoded
        if tc.cfg.arch == "relu":
            scale = y.pow(2).sum(-1).mean().sqrt().clamp_min(1e-12)
            loss = loss + tc.cfg.l1 * (values.sum(-1) / scale).mean()
        if use_aux:
            loss = loss + cfg.auxk_alpha * auxk_loss(tc, aux, y, out.y_hat)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        tc.remove_parallel_grad()
        self.optimiser.step()
        tc.normalise_decoder()
        if n_dead and cfg.lifts(tc.cfg):
            self.lift(x, values.detach(), dead)
        with torch.no_grad():
            fired = indices[values > 0] if indices is not None else (values > 0).any(0)
            self.state.tokens += len(x)
            self.last_fired[fired] = self.state.tokens  # repeated indices all write the same value
            l0 = (values > 0).sum(-1).float().mean().item()
        self.state.step += 1
        self.state.cursor = batch.cursor
        self.state.last_loss, self.state.last_fvu, self.state.last_l0 = loss.item(), recon.item(), l0
        if cfg.resamples_at(tc.cfg, self.state.step) and dead.any():
            self.resample(x, y, out.y_hat.detach(), dead)

    def initialise(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """Before the first step with `data` initialisation: read the first batches (width tokens, or
        as many as the run has), initialise from them, and hand the same batches on to training."""
        if self.state.step > 0 or self.cfg.initialisation(self.tc.cfg) != "data":
            return batches
        first: list[Batch] = []
        while sum(len(b.x) for b in first) * self.processes < self.tc.width and len(first) < self.cfg.steps:
            first.append(next(batches))
        self.initialise_from_data([b.x for b in first], [b.y for b in first])
        return itertools.chain(first, batches)

    @torch.no_grad()
    def initialise_from_data(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
        """Feature i starts as training pair i: encoder column along the unit direction of x_i − x̄,
        decoder row that of y_i − ȳ; features beyond the pairs read keep the random start. Every feature
        then fires on some inputs from the first step.

        The encoder's scale is the one whose codes best reconstruct the pairs read (`fitted_scale`), not a
        fixed norm: it sets how fast Adam's fixed-size steps change the encoder, and the right one differs
        by the model's output/input size ratio (tiny-relu 0.36, SmolLM2 layer 15 11.5). The fitted scale is
        0.03 on tiny-relu and 0.75 on SmolLM2; a fixed 0.1 left 66 % of SmolLM2's features dead at width
        9216 against 7 % at the fitted scale (FVU 0.577 → 0.462). Where the fit is under START_STEPS
        Adam steps per entry (a unit column's entries are about 1/√d_in), the scale rises towards that
        floor, to at most 2× the fit, and the encoder's learning rate is slowed by what is still missing,
        so its steps stay as small next to its entries. On tiny-relu (width 8192) the fit is 6 steps
        per entry; its first steps turned features away from their inputs, and 19 % were dead after 3M
        tokens (4 % now). SmolLM2's fit is 117 steps per entry. For relu (L1)
        the data start doubled the FVU, so relu starts random. Figures: RESULTS.md (issue 18)."""
        x, y = torch.cat(xs), torch.cat(ys)
        n = min(len(x), self.tc.width)
        x, y = x[:n] - x[:n].mean(0), y[:n] - y[:n].mean(0)
        tc = self.tc
        encoder = unit_rows(x).T
        fitted = fitted_scale(x, y, encoder, unit_rows(y), tc.cfg.k or n)
        floor = START_STEPS * self.lr * math.sqrt(tc.cfg.d_in)  # entries of a unit column: about 1/√d_in
        # raised towards the floor, but at most 2× the fit: beyond that the start reconstructs worse than
        # the mean does; what is still missing slows the encoder's learning rate instead
        scale = min(max(fitted, floor), 2 * fitted)
        tc.W_enc[:, :n] = encoder * scale
        self.optimiser.param_groups[0]["lr_scale"] = min(1.0, scale / floor)
        tc.W_dec[:n] = unit_rows(y)

    @torch.no_grad()
    def initialise_biases(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """From the first batch: b_dec = mean y, and b_enc centres the pre-activations (as sparsify does)."""
        self.tc.b_dec.copy_(y.mean(0))
        self.tc.b_enc.copy_(-(x.mean(0) @ self.tc.W_enc))

    @torch.no_grad()
    def lift(self, x: torch.Tensor, values: torch.Tensor, dead: torch.Tensor) -> None:
        """Raise each dead feature's encoder bias just enough that it enters the top k on the one token of
        this batch where it came closest (ours). Its direction is kept, so it fires on inputs like that
        one and training can use it again; larger lifts (2× the gap) made features fire everywhere and
        training diverged. `values` are the step's top-k codes: the k-th one is each token's threshold."""
        tc = self.tc
        idx = dead.nonzero().squeeze(1)
        threshold = values.min(-1).values.clamp_min(0)
        pre = torch.addmm(tc.b_enc[idx], x, tc.W_enc[:, idx])
        gap = self.batch_min((threshold[:, None] - pre).min(0).values)
        tc.b_enc[idx] += gap.clamp_min(0) * (1 + 1e-4) + 1e-6  # just past the threshold, ties broken

    def batch_min(self, local: torch.Tensor) -> torch.Tensor:
        """The minimum over the whole batch of a per-process minimum (one process: itself)."""
        return local

    @torch.no_grad()
    def resample(self, x: torch.Tensor, y: torch.Tensor, y_hat: torch.Tensor, dead: torch.Tensor) -> None:
        """Point dead features at badly reconstructed inputs (Anthropic's resampling, simplified).

        Each dead feature's decoder row becomes the unit residual y − ŷ of an input drawn with probability
        ∝ its squared error. relu: the encoder column is that input's unit direction × 0.2 × the mean
        norm of the live columns, bias 0. topk: as the data start, the unit direction of the centred input
        at the live columns' mean norm, with the bias that centres it, so it can enter the top k."""
        tc = self.tc
        idx = dead.nonzero().squeeze(1)
        err = (y - y_hat).pow(2).sum(-1)
        generator = torch.Generator().manual_seed(self.cfg.seed + self.state.step)
        picks = torch.multinomial(err / err.sum(), len(idx), replacement=True, generator=generator)
        alive_norm = tc.W_enc[:, ~dead].norm(dim=0).mean() if (~dead).any() else torch.tensor(1.0)
        residual = y[picks] - y_hat[picks]
        tc.W_dec[idx] = unit_rows(residual)
        if tc.cfg.arch == "topk":
            mean = x.mean(0)
            tc.W_enc[:, idx] = unit_rows(x[picks] - mean).T * alive_norm
            tc.b_enc[idx] = -(mean @ tc.W_enc[:, idx])
        else:
            tc.W_enc[:, idx] = unit_rows(x[picks]).T * alive_norm * 0.2
            tc.b_enc[idx] = 0
        for p in (tc.W_enc, tc.b_enc, tc.W_dec):  # forget Adam's moments of the re-initialised entries
            for moment in self.optimiser.state.get(p, {}).values():
                if isinstance(moment, torch.Tensor) and moment.shape == p.shape:
                    if p is tc.W_dec:
                        moment[idx] = 0
                    elif p is tc.W_enc:
                        moment[:, idx] = 0
                    else:
                        moment[idx] = 0
        self.last_fired[idx] = self.state.tokens

    # checkpoints ---------------------------------------------------------------------------------
    def save(self) -> None:
        if self.out is None:
            return
        final = self.out / CHECKPOINT
        tmp = self.out / f".{CHECKPOINT}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_transcoder(self.tc, tmp)
        extra = {"optimiser": self.optimiser.state_dict(), "last_fired": self.last_fired}
        torch.save(extra, tmp / "optim.pt")
        (tmp / "state.json").write_text(json.dumps({"state": asdict(self.state), "train": asdict(self.cfg)}))
        old = self.out / f".{CHECKPOINT}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    def load(self, folder: Path) -> None:
        """Resume from a checkpoint folder; refuse one of another transcoder, a damaged or unsafe one."""
        saved = read_config(folder / "config.json")
        if saved.to_dict() != self.tc.cfg.to_dict():
            differ = sorted(k for k, v in saved.to_dict().items() if self.tc.cfg.to_dict()[k] != v)
            raise WorkbenchError(
                f"The checkpoint in {folder} is of a different transcoder ({', '.join(differ)} differ from "
                "this command's); resume with the same settings, or start a new --out."
            )
        self.tc.load_state_dict(load_weights(folder, saved))
        extra = safe_torch_load(folder / "optim.pt")
        groups = len(extra.get("optimiser", {}).get("param_groups", [])) if isinstance(extra, dict) else 0
        if groups == 1:  # before the encoder had its own learning rate (issue 18)
            raise WorkbenchError(
                f"The checkpoint in {folder} was written by an earlier workbench, whose optimiser had one "
                "parameter group; this one gives the encoder its own. Finish that run with the version that "
                "started it, or start again without --resume."
            )
        try:
            self.optimiser.load_state_dict(extra["optimiser"])
            self.last_fired = extra["last_fired"]
            self.state = TrainState(**json.loads((folder / "state.json").read_text())["state"])
        except (KeyError, TypeError, ValueError, OSError) as err:  # JSONDecodeError is a ValueError
            raise WorkbenchError(
                f"The checkpoint in {folder} is damaged ({type(err).__name__}: {err}); delete it and start "
                "again without --resume."
            ) from err
        if self.state.world_size != self.processes:  # each process has its own data cursor
            raise WorkbenchError(
                f"The checkpoint in {folder} was written by {self.state.world_size} training process(es); "
                f"resume it with --nproc {self.state.world_size}."
            )

    def run(self, batches: Iterator[Batch], progress: bool = True) -> TrainState:
        cfg = self.cfg
        bar = Bar(cfg.steps, initial=self.state.step, unit="steps", desc="train transcoder", show=progress)
        for logged in self.state.curve:  # a resumed run's curve so far (logged every LOG_EVERY steps)
            bar.point(logged["tokens"], logged["loss"])
        start = time.perf_counter() - self.state.seconds
        stop: list[int] = []  # SIGINT/SIGTERM are noted here; the loop then saves a checkpoint and stops
        previous = note_stop_signals(stop)
        batches = self.initialise(batches)
        try:
            while self.state.step < cfg.steps:
                signum = self.stop_signal(stop)
                if signum:
                    self.interrupted(signum)
                self.step(next(batches))
                self.state.seconds = time.perf_counter() - start
                bar.point(self.state.tokens, self.state.last_loss)  # progress.json's curve (thinned)
                bar.update(1)
                if self.state.step % LOG_EVERY == 0 or self.state.step == cfg.steps:
                    self.state.curve.append(
                        {
                            "step": self.state.step,
                            "tokens": self.state.tokens,
                            "loss": self.state.last_loss,
                            "fvu": self.state.last_fvu,
                            "l0": self.state.last_l0,
                            "dead": self.dead().float().mean().item(),
                        }
                    )
                    bar.set_postfix(
                        loss=f"{self.state.last_loss:.4f}",
                        fvu=f"{self.state.last_fvu:.4f}",
                        l0=f"{self.state.last_l0:.1f}",
                        dead=f"{self.dead().float().mean().item():.3f}",
                    )
                if self.state.step % cfg.checkpoint_every == 0:
                    self.save()
        finally:
            bar.close()
            restore_signals(previous)
        self.save()
        return self.state

    def stop_signal(self, noted: list[int]) -> int | None:
        """The signal to stop on before the next step, if any (distributed: the processes agree)."""
        return noted[0] if noted else None

    def interrupted(self, signum: int) -> None:
        """Save a checkpoint now and raise TrainingInterrupted saying how to continue."""
        self.save()
        where = (
            f"checkpoint saved in {self.out / CHECKPOINT}; run the same command with --resume to continue"
            if self.out is not None
            else "no checkpoint (no output folder)"
        )
        raise TrainingInterrupted(
            f"transcoder training stopped by {signal.Signals(signum).name} at step {self.state.step} of "
            f"{self.cfg.steps}: {where}.",
            signum,
        )
