"""Transcoder training over N processes with DistributedDataParallel (gloo on the CPU, NCCL on GPUs).

Each process takes 1/N of every global batch (`--batch-tokens` stays the global batch). The loss is
the one-process loss of the global batch, split into shares that sum to it: the FVU's numerator is
each process's own squared error, its denominator (the spread of y over the global batch) is
all-reduced, and so are the L1 term's scale, the biases' initial means, which features fired, L0 and
the logged losses. Each process back-propagates N × its share, so DDP's gradient average is the
gradient of the global loss: every process takes the step one process takes on the same global batch
and the replicas stay identical. Relu's resampling gathers the global batch and runs alike everywhere;
the lift remedy takes each dead feature's smallest gap over the global batch.

Checkpoints are written by process 0 with every process's data cursor (`TrainState.cursors`) and
resume with the same number of processes. A stop signal is agreed on (all-reduced) before each step,
so every process saves at the same step. `DistributedTrainer.step` mirrors `Trainer.step` line for line;
change them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from workbench.errors import WorkbenchError
from workbench.transcoders.data import Batch
from workbench.transcoders.model import Encoded, Transcoder, TranscoderOutput
from workbench.transcoders.train import TrainConfig, Trainer


class TrainingForward(torch.nn.Module):
    """The training forward pass as one module call, which DDP wraps: (ŷ, codes, AuxK codes or None)."""

    def __init__(self, tc: Transcoder) -> None:
        super().__init__()
        self.tc = tc

    def forward(self, x: torch.Tensor, dead: torch.Tensor | None = None, k_aux: int = 0, aux_rows: int = 0):
        tc = self.tc
        if k_aux > 0:  # as Trainer.step with AuxK
            encoded, aux = tc.encode_with_aux(x, dead, k_aux, aux_rows)
            y_hat = tc.decode(encoded) + (x @ tc.W_skip.T if tc.W_skip is not None else 0)
            return y_hat, tuple(encoded), tuple(aux)
        out = tc(x)
        return out.y_hat, tuple(out.encoded), None


class DistributedTrainer(Trainer):
    """A `Trainer` that is one of `comm.world` processes (`workbench.scale.ddp`)."""

    def __init__(self, tc: Transcoder, cfg: TrainConfig, out: Path | None, comm) -> None:
        super().__init__(tc, cfg, out)
        self.comm, self.processes = comm, comm.world
        self.forward = comm.wrap(TrainingForward(tc))
        self.state.world_size = comm.world

    # the global batch's loss, in shares -----------------------------------------------------------
    def _count(self, rows: torch.Tensor) -> torch.Tensor:
        return self.comm.all_sum(torch.tensor([float(len(rows))], device=rows.device))

    def shared_fvu(self, y: torch.Tensor, y_hat: torch.Tensor) -> torch.Tensor:
        """This process's share of the global batch's FVU (the shares sum to it)."""
        mean = self.comm.all_sum(y.detach().sum(0)) / self._count(y)
        spread = self.comm.all_sum((y.detach() - mean).pow(2).sum()).clamp_min(1e-12)
        return (y - y_hat).pow(2).sum() / spread

    def shared_mean(self, values: torch.Tensor) -> torch.Tensor:
        """This process's share of the mean of `values` over the global batch's rows."""
        return values.sum() / self._count(values)

    def step(self, batch: Batch) -> None:
        tc, cfg, comm = self.tc, self.cfg, self.comm
        self.set_learning_rates()
        x, y = batch.x, batch.y
        if self.state.step == 0:
            self.initialise_biases(x, y)
        dead = self.dead()
        n_dead = int(dead.sum())
        use_aux = cfg.uses_auxk(tc.cfg) and n_dead > 0
        aux_rows = max(1, int(len(x) * cfg.auxk_fraction)) if use_aux else 0
        k_aux = min(n_dead, tc.cfg.d_out // 2) if use_aux else 0
        y_hat, encoded, aux = (
            self.forward(x, dead.to(x.device), k_aux, aux_rows) if use_aux else self.forward(x)
        )
        out = TranscoderOutput(y_hat, Encoded(*encoded))
        loss = recon = self.shared_fvu(y, out.y_hat)
        values, indices = out.encoded
        if tc.cfg.arch == "relu":
            scale = comm.all_sum(self.shared_mean(y.pow(2).sum(-1)).detach()).sqrt().clamp_min(1e-12)
            loss = loss + tc.cfg.l1 * self.shared_mean(values.sum(-1) / scale)
        if use_aux:
            aux = Encoded(*aux)
            error_hat = torch.nn.functional.embedding_bag(  # as train.auxk_loss
                aux.indices, tc.W_dec, per_sample_weights=aux.values, mode="sum"
            )
            rows = len(error_hat)
            loss = loss + cfg.auxk_alpha * self.shared_fvu((y[:rows] - out.y_hat[:rows]).detach(), error_hat)
        self.optimiser.zero_grad(set_to_none=True)
        (loss * comm.world).backward()  # DDP averages the gradients: N × the shares sums them
        tc.remove_parallel_grad()
        self.optimiser.step()
        tc.normalise_decoder()
        if n_dead and cfg.lifts(tc.cfg):
            self.lift(x, values.detach(), dead.to(x.device))
        with torch.no_grad():
            fired = indices[values > 0] if indices is not None else (values > 0).any(0).nonzero().squeeze(1)
            mask = torch.zeros(tc.width, dtype=torch.int32, device=x.device)
            mask[fired.unique()] = 1
            self.state.tokens += int(self._count(x).item())
            self.last_fired[comm.all_max(mask).cpu().bool()] = self.state.tokens  # fired in any process
            l0 = self.shared_mean((values > 0).sum(-1).float())
            loss, recon, l0 = (comm.all_sum(t.detach().reshape(1))[0] for t in (loss, recon, l0))
        self.state.step += 1
        self.state.cursor = batch.cursor
        self.state.last_loss, self.state.last_fvu, self.state.last_l0 = loss.item(), recon.item(), l0.item()
        if cfg.resamples_at(tc.cfg, self.state.step) and dead.any():
            whole = [comm.all_gather(t.detach()) for t in (x, y, out.y_hat)]  # every process alike
            self.resample(*whole, dead)

    @torch.no_grad()
    def initialise_from_data(self, xs: list[torch.Tensor], ys: list[torch.Tensor]) -> None:
        """As one process does, from the global batches (each gathered in rank order): every process alike."""
        gather = self.comm.all_gather
        super().initialise_from_data([gather(x) for x in xs], [gather(y) for y in ys])

    def batch_min(self, local: torch.Tensor) -> torch.Tensor:
        """The lift's gaps over the global batch: every process lifts alike."""
        return -self.comm.all_max(-local)

    @torch.no_grad()
    def initialise_biases(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """From the first global batch: b_dec = mean y, b_enc centres the pre-activations."""
        count = self._count(x)
        self.tc.b_dec.copy_(self.comm.all_sum(y.sum(0)) / count)
        self.tc.b_enc.copy_(-((self.comm.all_sum(x.sum(0)) / count) @ self.tc.W_enc))

    # stopping and checkpoints ---------------------------------------------------------------------
    def stop_signal(self, noted: list[int]) -> int | None:
        """The signal any process noted: all of them stop (and save) before the same step."""
        signum = int(self.comm.all_max(torch.tensor([noted[0] if noted else 0])).item())
        return signum or None

    def save(self) -> None:
        """Process 0 writes the checkpoint, with every process's data cursor; the others wait for it."""
        cursors = self.comm.all_gather(torch.tensor([self.state.cursor], dtype=torch.long))
        self.state.cursors = cursors.tolist()
        if self.comm.rank == 0:
            super().save()
        self.comm.barrier()

    def load(self, folder: Path) -> None:
        super().load(folder)  # refuses a checkpoint of another number of processes
        if len(self.state.cursors) != self.comm.world:
            raise WorkbenchError(f"The checkpoint in {folder} is damaged (its data cursors); start again.")
        self.state.cursor = self.state.cursors[self.comm.rank]


@dataclass(frozen=True)
class TrainRequest:
    """Everything one training process needs to load its own model and windows and train its share."""

    model: str
    device: str | None
    settings: Any  # TranscoderSettings
    out: Path
    corpus: str | None = None
    text: tuple[str, ...] | None = None
    context: int = 128
    seed: int = 0
    store: str | Path | None = None  # a folder or URL
    resume: bool = False
    windows_per_forward: int = 8
    threads: int | None = None  # torch threads of each process (None: torch's default)
    progress: bool = True  # process 0 draws the progress bar


def train_process(comm, request: TrainRequest) -> dict | None:
    """One DDP process (`workbench.scale.ddp.launch` or torchrun): load the model, read the training
    windows, train this process's share; process 0 returns the TranscoderTraining as a dict."""
    from workbench.models import load_model
    from workbench.transcoders.run import train_transcoder, training_windows

    if request.threads:
        torch.set_num_threads(request.threads)
    handle = load_model(request.model, device=request.device, progress=False)
    windows = None
    if request.store is None:
        text = list(request.text) if request.text else None
        windows = training_windows(handle, request.corpus, text, request.context, request.seed)
    _, record = train_transcoder(
        handle,
        windows,
        request.settings,
        out=request.out,
        store=request.store,
        resume=request.resume,
        windows_per_forward=request.windows_per_forward,
        progress=request.progress and comm.rank == 0,
        comm=comm,
    )
    return record.to_dict() if comm.rank == 0 else None
