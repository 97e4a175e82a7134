"""Transcoder oracles: sparse backward vs autograd, training, checkpoint/resume, SAE-Lens round trip,
a transcoder that equals the MLP splices in with no loss, feature statistics vs brute force."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE

from workbench.corpus import load_corpus, make_windows
from workbench.errors import WorkbenchError
from workbench.models import load_model
from workbench.transcoders.data import Batch, mlp_pairs_of
from workbench.transcoders.evaluate import evaluate_transcoder
from workbench.transcoders.features import contexts, feature_table
from workbench.transcoders.files import load_transcoder
from workbench.transcoders.model import Transcoder, TranscoderConfig, _SparseTopK
from workbench.transcoders.saelens import load_saelens, register_topk_with_saelens, save_saelens
from workbench.transcoders.train import TrainConfig, Trainer


def test_sparse_topk_backward_matches_autograd():
    torch.manual_seed(0)
    x = torch.randn(32, 12, dtype=torch.double, requires_grad=True)
    w = torch.randn(12, 40, dtype=torch.double, requires_grad=True)
    b = torch.randn(40, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: _SparseTopK.apply(x, w, b, 5)[0], (x, w, b))
    dead = torch.zeros(40, dtype=torch.bool)
    dead[::3] = True  # with the AuxK outputs: gradients through the dead features' top 4 too
    aux = lambda x, w, b: tuple(
        o for o in _SparseTopK.apply(x, w, b, 5, dead, 4, 10) if o.is_floating_point()
    )  # noqa: E731
    assert torch.autograd.gradcheck(aux, (x, w, b))
    values, indices, _, _ = _SparseTopK.apply(x, w, b, 5)
    dense = torch.relu(x @ w + b)
    assert torch.allclose(values.sort(-1).values, dense.topk(5, -1).values.sort(-1).values)


def _synthetic(cursor: int, batch: int = 256, d: int = 16, seed: int = 0) -> Batch:
    """y = a sparse code of x: 64 true features ReLU(x·e_i − 1.5), e_i of norm 1; about 4 fire per token."""
    g = torch.Generator().manual_seed(seed)
    enc, dec = torch.randn(d, 64, generator=g), torch.randn(64, d, generator=g)
    enc = enc / enc.norm(dim=0)
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(1000 + cursor))
    return Batch(x, torch.relu(x @ enc - 1.5) @ dec, cursor + 1)


def _stream(start: int = 0):
    cursor = start
    while True:
        batch = _synthetic(cursor)
        cursor = batch.cursor
        yield batch


@pytest.mark.parametrize("arch", ["topk", "relu"])
def test_training_learns_a_sparse_map(arch):
    tc = Transcoder(TranscoderConfig(16, 16, 128, arch, k=6, l1=1e-3), seed=0)
    trainer = Trainer(tc, TrainConfig(tokens=256 * 300, batch_size=256, lr=1e-2, warmup_steps=10))
    state = trainer.run(_stream(), progress=False)
    first, last = state.curve[0]["fvu"], state.curve[-1]["fvu"]
    assert last < 0.6 and last < first / 2  # seeded: 0.31 (topk) and 0.45 (relu) after 300 steps
    assert torch.allclose(tc.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)  # unit decoder rows
    if arch == "topk":
        assert state.curve[-1]["l0"] <= 6


def test_topk_starts_from_the_data_and_trains_on_the_batches_it_read():
    """Feature i's encoder column and decoder row point at training pair i (centred over the pairs
    read: the first ⌈width / batch⌉ batches), the encoder at one fitted scale; those batches are then
    trained on, none skipped; features beyond the pairs read keep the random start; relu starts random."""
    cfg = TranscoderConfig(16, 16, 600, "topk", k=6)
    tc = Transcoder(cfg, seed=0)
    random_start = tc.W_enc.detach().clone()
    trainer = Trainer(tc, TrainConfig(tokens=256 * 10, batch_size=256))
    stream = trainer.initialise(_stream())
    first = [_synthetic(i) for i in range(3)]  # 600 features need 3 batches of 256
    x, y = torch.cat([b.x for b in first])[:600], torch.cat([b.y for b in first])[:600]
    x, y = x - x.mean(0), y - y.mean(0)
    scale = tc.W_enc.detach().norm(dim=0)
    torch.testing.assert_close(scale, torch.full((600,), float(scale[0])))
    torch.testing.assert_close(tc.W_enc.detach().T, scale[0] * x / x.norm(dim=1, keepdim=True))
    torch.testing.assert_close(tc.W_dec.detach(), y / y.norm(dim=1, keepdim=True))
    seen = [next(stream).cursor for _ in range(4)]
    assert seen == [1, 2, 3, 4]  # the three batches read for the start, then the fourth
    wide = Transcoder(TranscoderConfig(16, 16, 1000, "topk", k=6), seed=0)
    wide_start = wide.W_enc.detach().clone()
    Trainer(wide, TrainConfig(tokens=256 * 2, batch_size=256)).initialise(_stream())  # only 512 pairs
    assert torch.equal(wide.W_enc.detach()[:, 512:], wide_start[:, 512:])
    assert not torch.equal(tc.W_enc.detach(), random_start)
    relu = Transcoder(TranscoderConfig(16, 16, 64, "relu"), seed=0)
    relu_start = relu.W_enc.detach().clone()
    Trainer(relu, TrainConfig(tokens=256 * 10, batch_size=256)).initialise(_stream())
    assert torch.equal(relu.W_enc.detach(), relu_start)


def test_the_fitted_encoder_scale_reconstructs_best_among_all_scales():
    """Oracle: the data start's encoder scale gives the smallest reconstruction error on the pairs read of
    any scale tried by brute force (a transcoder built at each scale, run forward), within the grid's step."""
    from workbench.transcoders.train import fitted_scale

    batch = _synthetic(0, batch=300)
    x, y = batch.x - batch.x.mean(0), batch.y - batch.y.mean(0)
    units = lambda v: v / v.norm(dim=1, keepdim=True)  # noqa: E731
    fitted = fitted_scale(x, y, units(x).T, units(y), k=6)

    def error(scale: float) -> float:
        tc = Transcoder(TranscoderConfig(16, 16, 300, "topk", k=6))
        with torch.no_grad():
            tc.W_enc.copy_(units(x).T * scale)
            tc.W_dec.copy_(units(y))
            tc.b_enc.zero_(), tc.b_dec.zero_()
            return float((y - tc(x).y_hat).pow(2).sum())

    grid = torch.linspace(0.01, 2 * fitted, 400).tolist()
    errors = [error(s) for s in grid]
    best = grid[errors.index(min(errors))]
    assert error(fitted) <= min(errors) * (1 + 1e-6)
    assert abs(best - fitted) <= grid[1] - grid[0]


@pytest.mark.parametrize("output_scale", [1e-3, 1e3])
def test_a_small_fitted_start_is_raised_and_slows_the_encoder_to_the_adam_floor(output_scale):
    """The encoder columns start at the fitted scale when it is at least START_STEPS Adam steps per entry
    (the floor, START_STEPS · lr · √d_in). Under it, the scale rises towards the floor but to at most 2×
    the fit (beyond that the start reconstructs worse than the mean), and the encoder's learning rate
    (W_enc and b_enc, not the decoder) is scaled by scale / floor. Outputs 1000× smaller than the inputs
    take that branch, outputs 1000× larger do not."""
    from workbench.transcoders.train import START_STEPS, fitted_scale

    batch = _synthetic(0, batch=300)
    x, y = batch.x, batch.y * output_scale
    tc = Transcoder(TranscoderConfig(16, 16, 300, "topk", k=6))
    trainer = Trainer(tc, TrainConfig(tokens=3000, batch_size=300, lr=1e-3, warmup_steps=0))
    trainer.initialise_from_data([x], [y])
    xc, yc = x - x.mean(0), y - y.mean(0)
    units = lambda v: v / v.norm(dim=1, keepdim=True)  # noqa: E731
    fitted = fitted_scale(xc, yc, units(xc).T, units(yc), k=6)
    floor = START_STEPS * 1e-3 * 16**0.5
    assert (fitted < floor / 2) == (output_scale < 1)  # each case takes the branch it is named for
    scale = 2 * fitted if output_scale < 1 else fitted
    norms = tc.W_enc.norm(dim=0)
    assert torch.allclose(norms, torch.full_like(norms, scale), rtol=1e-5)
    trainer.step(Batch(x, y, 1))
    encoder, rest = trainer.optimiser.param_groups
    assert {id(p) for p in encoder["params"]} == {id(tc.W_enc), id(tc.b_enc)}
    assert rest["lr"] == pytest.approx(1e-3)
    assert encoder["lr"] == pytest.approx(1e-3 * (2 * fitted / floor if output_scale < 1 else 1.0))


def test_lift_puts_each_dead_feature_just_past_the_threshold_on_its_nearest_token():
    """Oracle for the lift remedy: a dead feature's bias rises by its smallest gap to the k-th
    pre-activation over the batch's tokens, so it beats the old threshold on exactly that token (alone,
    it enters the top k there); live features are untouched. With the default remedy, features pushed
    far below every threshold fire again after the dead window."""
    torch.manual_seed(0)
    tc = Transcoder(TranscoderConfig(16, 16, 64, "topk", k=4), seed=0)
    x = torch.randn(128, 16)
    with torch.no_grad():
        tc.b_enc[:8] = -50.0
    trainer = Trainer(tc, TrainConfig(tokens=256 * 40, batch_size=256, lr=1e-2, dead_tokens=256 * 3))
    assert trainer.cfg.dead_remedy(tc.cfg) == "lift"
    values, indices = tc.encode(x)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[:8] = True
    assert not torch.isin(indices, torch.arange(8)).any()  # silent on this batch
    before = tc.b_enc.detach().clone()
    threshold = values.min(-1).values.clamp_min(0)
    pre = (x @ tc.W_enc + tc.b_enc).detach()
    with torch.no_grad():
        trainer.lift(x, values.detach(), dead)
    after = tc.b_enc.detach()
    assert torch.equal(after[8:], before[8:])
    for f in range(8):
        nearest = int((threshold - pre[:, f]).argmin())
        new = pre[:, f] + (after[f] - before[f])
        assert bool((new > threshold)[nearest]) and int((new > threshold).sum()) == 1
        alone = Transcoder(tc.cfg)
        with torch.no_grad():
            alone.load_state_dict(tc.state_dict())
            alone.b_enc[:8] = before[:8]
            alone.b_enc[f] = after[f]
        assert f in alone.encode(x[nearest : nearest + 1]).indices[0].tolist()

    tc = Transcoder(TranscoderConfig(16, 16, 64, "topk", k=4), seed=0)
    trainer = Trainer(tc, TrainConfig(tokens=256 * 40, batch_size=256, lr=1e-2, dead_tokens=256 * 3))
    stream = trainer.initialise(_stream())
    trainer.step(next(stream))
    with torch.no_grad():
        tc.b_enc[:8] -= 1e3
    for _ in range(10):
        trainer.step(next(stream))
    assert (trainer.last_fired[:8] > 256 * 5).all()  # dead from step 2, lifted after step 4, fired


def test_topk_resampling_revives_dead_features_outside_the_decay_phase():
    """auxk+resample: features whose encoder column is zero never fire (pre-activation 0); at step 10
    they are re-pointed at badly reconstructed inputs (centred, at the live columns' mean norm) and
    fire again; no resampling happens in the decay phase (the last fifth), nor with plain auxk."""
    cfg = TranscoderConfig(16, 16, 64, "topk", k=4)
    train = TrainConfig(
        tokens=256 * 50,
        batch_size=256,
        lr=1e-2,
        warmup_steps=5,
        remedy="auxk+resample",
        resample_every=10,
        dead_tokens=256 * 4,
        init="random",
    )
    assert [s for s in range(1, 51) if train.resamples_at(cfg, s)] == [10, 20, 30]  # decay from step 40
    assert not any(
        TrainConfig(tokens=256 * 50, batch_size=256, resample_every=10).resamples_at(cfg, s)
        for s in range(1, 51)
    )
    tc = Transcoder(cfg, seed=0)
    with torch.no_grad():
        tc.W_enc[:, :8] = 0
    trainer = Trainer(tc, train)
    resampled: list[tuple[int, list[int]]] = []
    original = trainer.resample
    trainer.resample = lambda x, y, y_hat, dead: (
        resampled.append((trainer.state.step, dead.nonzero().squeeze(1).tolist())),
        original(x, y, y_hat, dead),
    )
    stream = _stream()
    for _ in range(10):
        trainer.step(next(stream))
    assert resampled and resampled[0][0] == 10 and set(range(8)) <= set(resampled[0][1])
    assert (tc.W_enc.detach()[:, :8].norm(dim=0) > 0).all()
    at_resample = trainer.state.tokens
    for _ in range(10):
        trainer.step(next(stream))
    assert (trainer.last_fired[:8] > at_resample).sum() >= 6  # they fire again
    assert all(step < 40 for step, _ in resampled)


def test_checkpoint_and_resume_match_an_uninterrupted_run(tmp_path):
    cfg = TranscoderConfig(16, 16, 64, "topk", k=4)
    train = TrainConfig(
        tokens=256 * 40, batch_size=256, checkpoint_every=15, warmup_steps=5, dead_tokens=2000
    )
    straight = Transcoder(cfg, seed=0)
    Trainer(straight, train).run(_stream(), progress=False)

    def interrupted():  # a run killed during step 19: the last checkpoint is step 15's
        for i, batch in enumerate(_stream()):
            if i == 18:
                raise KeyboardInterrupt
            yield batch

    first = Trainer(Transcoder(cfg, seed=0), train, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        first.run(interrupted(), progress=False)
    resumed = Trainer(Transcoder(cfg, seed=0), train, tmp_path)
    resumed.load(tmp_path / "checkpoint")
    assert resumed.state.step == 15
    resumed.run(_stream(resumed.state.cursor), progress=False)
    for name, value in straight.state_dict().items():
        assert torch.allclose(value, resumed.tc.state_dict()[name], atol=1e-6), name
    assert torch.equal(load_transcoder(tmp_path / "checkpoint").W_dec, resumed.tc.W_dec)


def test_a_checkpoint_with_one_optimiser_group_is_refused_with_what_to_do(tmp_path):
    """Checkpoints from before the encoder had its own learning rate hold one Adam group: resuming one
    says so, instead of calling it damaged."""
    cfg = TranscoderConfig(16, 16, 64, "topk", k=4)
    train = TrainConfig(tokens=256 * 20, batch_size=256, checkpoint_every=5, warmup_steps=5)
    Trainer(Transcoder(cfg, seed=0), train, tmp_path).run(_stream(), progress=False)
    path = tmp_path / "checkpoint" / "optim.pt"
    extra = torch.load(path, weights_only=True)
    encoder, rest = extra["optimiser"]["param_groups"]
    encoder["params"] = encoder["params"] + rest["params"]
    extra["optimiser"]["param_groups"] = [encoder]
    torch.save(extra, path)
    with pytest.raises(WorkbenchError, match="earlier workbench.*without --resume"):
        Trainer(Transcoder(cfg, seed=0), train, tmp_path).load(tmp_path / "checkpoint")


@pytest.mark.parametrize(("arch", "skip"), [("relu", False), ("relu", True), ("topk", False), ("topk", True)])
def test_saelens_round_trip(tmp_path, arch, skip):
    tc = Transcoder(
        TranscoderConfig(16, 12, 64, arch, k=5, skip=skip, layer=1, hook_in="a", hook_out="b"), seed=1
    )
    with torch.no_grad():
        tc.b_enc.normal_()
        tc.b_dec.normal_()
        if skip:
            tc.W_skip.normal_()
    save_saelens(tc, tmp_path / "ours")
    if arch == "topk":
        register_topk_with_saelens()
    sae = SAE.load_from_disk(str(tmp_path / "ours"))
    expected = {("relu", False): "Transcoder", ("relu", True): "SkipTranscoder"}.get((arch, skip))
    if expected:
        assert type(sae).__name__ == expected  # SAE-Lens's own classes, not ours
    x = torch.randn(20, 16)
    with torch.no_grad():
        assert torch.allclose(sae(x), tc(x).y_hat, atol=1e-5)
        assert torch.allclose(sae.encode(x), tc.features(x), atol=1e-5)
        sae.save_model(str(tmp_path / "theirs"))  # and what SAE-Lens saves, the workbench loads
        back = load_saelens(tmp_path / "theirs")
        assert (back.cfg.arch, back.cfg.skip, back.cfg.k) == (arch, skip, tc.cfg.k)
        assert torch.allclose(back(x).y_hat, tc(x).y_hat, atol=1e-5)


def test_saelens_refuses_what_it_cannot_run(tmp_path):
    (tmp_path / "cfg.json").write_text('{"architecture": "jumprelu", "d_in": 4, "d_sae": 8}')
    (tmp_path / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(WorkbenchError, match="jumprelu"):
        load_saelens(tmp_path)


def _exact_transcoder(handle, layer: int) -> Transcoder:
    """A ReLU transcoder whose features are the MLP's neurons: it computes exactly the MLP."""
    mlp = handle.model.blocks[layer].mlp
    d, n = mlp.W_in.shape
    tc = Transcoder(TranscoderConfig(d, d, n, "relu", layer=layer))
    with torch.no_grad():
        tc.W_enc.copy_(mlp.W_in)
        tc.b_enc.copy_(mlp.b_in)
        tc.W_dec.copy_(mlp.W_out)
        tc.b_dec.copy_(mlp.b_out)
    return tc


def test_a_transcoder_equal_to_the_mlp_recovers_everything(checkpoints):
    handle = load_model(str(checkpoints["gpt2"]), progress=False)
    windows = make_windows(load_corpus()[:4], handle.tokenizer, 16, handle.separator_token_id).select(64)
    result = evaluate_transcoder(handle, _exact_transcoder(handle, 1), windows, batch_size=2, progress=False)
    assert result.fvu < 1e-8 and result.ce_spliced == pytest.approx(result.ce_clean, abs=1e-5)
    assert result.ce_recovered == pytest.approx(1.0, abs=1e-3) and result.kl_score == pytest.approx(
        1.0, abs=1e-4
    )
    assert result.ce_ablated != pytest.approx(result.ce_clean, abs=1e-4)
    assert result.tokens == 64 and set(result.by_domain) <= {"code", "prose"}
    # L0 is the MLP's own count of active neurons
    x, y = mlp_pairs_of(handle, 1, windows.tokens)
    with torch.inference_mode():
        post = torch.relu(x @ handle.model.blocks[1].mlp.W_in + handle.model.blocks[1].mlp.b_in)
    assert result.l0 == pytest.approx(float((post > 0).sum(-1).float().mean()), rel=1e-6)


def test_feature_table_matches_brute_force(checkpoints):
    handle = load_model(str(checkpoints["gpt2"]), progress=False)
    windows = make_windows(load_corpus()[:4], handle.tokenizer, 16, handle.separator_token_id).select(96)
    tc = _exact_transcoder(handle, 0)
    table = feature_table(handle, tc, windows, batch_size=2, top_n=3, progress=False)
    x, _ = mlp_pairs_of(handle, 0, windows.tokens)
    with torch.inference_mode():
        z = tc.features(x)  # [96, width], token index = window * 16 + position
    density = torch.tensor(table.density, dtype=torch.float64)
    assert torch.allclose(density, (z > 0).double().mean(0), atol=1e-9)
    feature = int((z > 0).sum(0).argmax())
    top = z[:, feature].topk(3)
    assert [v for v, _, _ in table.top[feature]] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert [int(w) * 16 + int(p) for _, w, p in table.top[feature]] == top.indices.tolist()
    shown = contexts(handle, tc, windows, table, feature, n=1, before=2, after=0)[0]
    assert shown["tokens"][-1]["activation"] == pytest.approx(top.values[0].item(), abs=1e-5)
