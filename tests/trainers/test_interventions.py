"""Interventions (Grokfast-EMA, norm constraint, NIB compression term): off changes nothing,
each does what its formula says, each resumes bit-identically, bad values fail before training."""

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from ckptlab.errors import ValidationError
from ckptlab.metrics.mi import mi_kde
from ckptlab.metrics.mi_relative import mi_kde_relative
from ckptlab.models import build_model
from ckptlab.store import Recorder, Run
from cli.main import cli
from trainers import TrainConfig, apply_overrides, get_preset, train
from trainers import loop as loop_mod
from trainers.config import lr_at
from trainers.interventions import (
    GrokfastEMA,
    NIBPenalty,
    batch_spread,
    constrain_norm_,
    kde_xt_upper,
    resolve_nib_layer,
    total_norm,
)
from trainers.loop import _loss, _optimizer, _tensors, build_task, get_batch, model_spec_for, set_lr

NEW_FIELDS = ("grokfast_alpha", "grokfast_lambda", "norm_constraint", "nib_beta", "nib_layer",
              "nib_resolution")


def _tiny(**kw) -> TrainConfig:
    # minibatches (the generator is part of the state), weight decay and a cosine schedule
    base = dict(task="modular", task_args={"p": 11, "train_fraction": 0.5},
                model_args={"widths": [16], "embed_dim": 4}, batch_size=16, steps=40,
                lr=3e-3, weight_decay=0.5, lr_schedule="cosine", ckpt_per_decade=10,
                ckpt_dense_until=5, seed=3)
    base.update(kw)
    return TrainConfig(**base).validate()


def _params(path) -> dict:
    run = Run(path)
    return run.params(0, run.n)


def _assert_same_run(a, b, *, metrics=True):
    ra, rb = Run(a), Run(b)
    np.testing.assert_array_equal(ra.steps, rb.steps)
    pa, pb = _params(a), _params(b)
    assert set(pa) == set(pb)
    for k in pa:
        assert pa[k].tobytes() == pb[k].tobytes(), k
    if metrics:
        ma, mb = ra.metrics(), rb.metrics()
        assert set(ma) == set(mb)
        for k in ma:
            if k != "wall_time":
                np.testing.assert_array_equal(ma[k], mb[k], err_msg=k)


def _plain_loop(cfg: TrainConfig) -> dict:
    """Today's loop without interventions, written out: {step: state dict} after each update."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        task = build_task(cfg)
        model = build_model(model_spec_for(cfg, task), seed=cfg.seed)
        opt = _optimizer(cfg, model)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        x, y, _, _ = _tensors(task, torch.float32, torch.device("cpu"))
        out = {0: {k: v.clone() for k, v in model.state_dict().items()}}
        for step in range(cfg.steps):
            xb, yb = get_batch(cfg, x, y, gen)
            loss = _loss(cfg, model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            set_lr(opt, lr_at(cfg, step))
            opt.step()
            out[step + 1] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return out
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ off = today


def test_every_intervention_off_is_bit_identical_to_the_plain_loop(tmp_path):
    cfg = _tiny()
    # an archive's config written before these fields existed: they take their defaults
    old = {k: v for k, v in cfg.to_dict().items() if k not in NEW_FIELDS}
    omitted = TrainConfig.from_dict(old)
    assert omitted == cfg
    train(omitted, tmp_path / "omitted.zarr")
    # off, with every other knob of the interventions moved: still nothing changes
    off = apply_overrides(cfg, ["grokfast_alpha=0.5", "grokfast_lambda=0", "nib_beta=0",
                                "nib_layer=acts.0", "nib_resolution=3", "norm_constraint=null"])
    train(off, tmp_path / "off.zarr")
    _assert_same_run(tmp_path / "omitted.zarr", tmp_path / "off.zarr")
    ref = _plain_loop(cfg)
    run = Run(tmp_path / "omitted.zarr")
    for i, step in enumerate(run.steps.tolist()):
        sd = run.state_dict(i)
        for k, v in ref[step].items():
            assert sd[k].numpy().tobytes() == v.numpy().tobytes(), (step, k)
    assert set(run.metrics()) == {"train_loss", "train_acc", "test_loss", "test_acc", "lr",
                                  "wall_time"}  # nothing logged for what is off


# ------------------------------------------------------------------------------ Grokfast


def test_grokfast_filter_two_steps_by_hand():
    model = nn.Linear(2, 1, bias=False)
    gf = GrokfastEMA(model, alpha=0.75, lamb=2.0)
    p = model.weight
    p.grad = torch.tensor([[1.0, -2.0]])
    gf.filter_()
    # step 1: the average starts at the first gradient; g + 2 g
    assert gf.ema["weight"].tolist() == [[1.0, -2.0]]
    assert p.grad.tolist() == [[3.0, -6.0]]
    p.grad = torch.tensor([[3.0, 0.5]])
    gf.filter_()
    # step 2: ema = 0.75 [1, -2] + 0.25 [3, 0.5] = [1.5, -1.375]; g + 2 ema = [6, -2.25]
    assert gf.ema["weight"].tolist() == [[1.5, -1.375]]
    assert p.grad.tolist() == [[6.0, -2.25]]
    assert gf.metrics() == pytest.approx({"grokfast_grad_norm": math.hypot(6.0, 2.25),
                                          "grad_norm": math.hypot(3.0, 0.5)})


def test_grokfast_in_the_loop_steps_with_the_filtered_gradient(tmp_path):
    # SGD without momentum or decay: p_{s+1} = p_s - lr (g_s + lambda ema_s), by hand
    cfg = _tiny(optimizer="sgd", lr=0.5, weight_decay=0.0, batch_size=0, lr_schedule="constant",
                steps=2, grokfast_alpha=0.9, grokfast_lambda=3.0)
    train(cfg, tmp_path / "gf.zarr")
    run = Run(tmp_path / "gf.zarr")
    task = build_task(cfg)
    model = build_model(model_spec_for(cfg, task), seed=cfg.seed)
    x, y, _, _ = _tensors(task, torch.float32, torch.device("cpu"))
    ema = None
    for step in (1, 2):
        model.zero_grad()
        _loss(cfg, model(x), y).backward()
        with torch.no_grad():
            g = {n: p.grad.clone() for n, p in model.named_parameters()}
            ema = g if ema is None else {n: 0.9 * ema[n] + 0.1 * g[n] for n in g}
            for n, p in model.named_parameters():
                p -= 0.5 * (g[n] + 3.0 * ema[n])
        sd = run.state_dict(step)
        for n, p in model.named_parameters():
            np.testing.assert_allclose(sd[n].numpy(), p.detach().numpy(), rtol=1e-5, atol=1e-7)
    m = run.metrics()
    assert np.isnan(m["grokfast_grad_norm"][0]) and (m["grokfast_grad_norm"][1:] > 0).all()
    # the first filtered gradient is (1 + lambda) g
    np.testing.assert_allclose(m["grokfast_grad_norm"][1], 4.0 * m["grad_norm"][1], rtol=1e-6)


# ------------------------------------------------------------------------------ norm constraint


@pytest.mark.parametrize("target", ["init", 7.5])
def test_norm_constraint_holds_at_every_checkpoint(tmp_path, target):
    cfg = _tiny(weight_decay=1.0, lr=1e-2, steps=60, norm_constraint=target)
    train(cfg, tmp_path / "nc.zarr")
    run = Run(tmp_path / "nc.zarr")
    params = _params(tmp_path / "nc.zarr")
    norms = np.sqrt(sum((v.astype(np.float64) ** 2).reshape(run.n, -1).sum(1)
                        for v in params.values()))
    want = norms[0] if target == "init" else target
    np.testing.assert_allclose(norms, want, rtol=1e-6, atol=0)
    np.testing.assert_allclose(run.metrics()["param_norm"], want, rtol=1e-6, atol=0)
    if target == "init":  # without it, weight decay 1 moves the norm by far more
        train(_tiny(weight_decay=1.0, lr=1e-2, steps=60), tmp_path / "free.zarr")
        free = _params(tmp_path / "free.zarr")
        last = math.sqrt(sum(float((v[-1].astype(np.float64) ** 2).sum()) for v in free.values()))
        assert abs(last / want - 1) > 0.01


def test_constrain_norm_rescales_every_parameter_alike():
    ps = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]
    before = constrain_norm_(ps, 10.0)
    assert float(before) == 5.0
    assert ps[0].tolist() == [6.0, 0.0] and ps[1].tolist() == [[0.0], [8.0]]
    assert float(total_norm(ps)) == pytest.approx(10.0, rel=1e-12)


# ------------------------------------------------------------------------------ NIB penalty


def test_penalty_matches_the_kde_oracles_and_its_gradient_finite_differences():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(24, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 0.3, 2.0],
                                                                               dtype=torch.float64)
    y = np.zeros(24, dtype=int)
    # the value: mi_kde's upper bound at sigma2 = sigma^2 (numpy-facing oracle)
    sigma = 0.7
    want, _ = mi_kde(t.numpy(), y, sigma2=sigma ** 2, bound="upper")
    assert float(kde_xt_upper(t, sigma)) == pytest.approx(want, rel=1e-12, abs=1e-12)
    # the gradient at a fixed sigma, against central differences (float64)
    t.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u: kde_xt_upper(u, sigma), (t,), eps=1e-6,
                                    atol=1e-7, rtol=1e-5)
    auto = torch.autograd.grad(kde_xt_upper(t, sigma), t)[0]
    fd = torch.zeros_like(t)
    with torch.no_grad():
        for i in range(t.shape[0]):
            for j in range(t.shape[1]):
                e = torch.zeros_like(t)
                e[i, j] = 1e-6
                fd[i, j] = (kde_xt_upper(t + e, sigma) - kde_xt_upper(t - e, sigma)) / 2e-6
    np.testing.assert_allclose(auto.numpy(), fd.numpy(), rtol=1e-6, atol=1e-9)
    # the noise relative to the batch: sigma = c x the kde_rel spread, so the penalty is the
    # analysis's kde_rel upper bound at resolution c on this batch
    c = 0.8
    model = nn.Sequential(nn.Identity())
    nib = NIBPenalty(model, "0", beta=2.0, resolution=c)
    with nib.capture():
        model(t)
    term = nib.penalty()
    rel = mi_kde_relative(t.detach().numpy(), y, resolutions=(c,), scale="knn", k=10)
    assert float(nib.last_bits) == pytest.approx(float(rel.xt_upper[0]), rel=1e-10)
    assert float(nib.last_sigma) == pytest.approx(float(rel.sigma[0]), rel=1e-10)
    assert float(term.detach()) == pytest.approx(2.0 * float(rel.xt_upper[0]), rel=1e-10)
    # the spread is held constant: the term's gradient is the fixed-sigma one
    g = torch.autograd.grad(term, t)[0]
    g_fixed = torch.autograd.grad(2.0 * kde_xt_upper(t, nib.last_sigma), t)[0]
    np.testing.assert_allclose(g.numpy(), g_fixed.numpy(), rtol=1e-12, atol=1e-15)
    assert float(batch_spread(t)) == pytest.approx(float(rel.scale), rel=1e-12)


def test_penalty_layer_resolution_and_metrics(tmp_path):
    mlp = build_model({"name": "mlp", "kwargs": {"widths": [8, 8], "n_classes": 3,
                                                 "in_dim": 4}}, seed=0)
    assert resolve_nib_layer(mlp, None) == ("acts.0", None)
    assert resolve_nib_layer(mlp, "layers.1") == ("layers.1", None)
    tr = build_model({"name": "transformer", "kwargs": {"vocab_size": 5, "n_layers": 1,
                                                        "n_heads": 2, "d_model": 8,
                                                        "d_mlp": 16}}, seed=0)
    assert resolve_nib_layer(tr, None) == ("blocks.0.act", -1)  # the "=" position
    assert resolve_nib_layer(tr, "blocks.0") == ("blocks.0", -1)
    with pytest.raises(ValidationError, match="nib_layer must be the name of a module of the "
                                              "model .*got 'blocks.1.act'"):
        resolve_nib_layer(tr, "blocks.1.act")
    # a transformer trains with the term on its default layer (the MLP at the "=" position)
    tcfg = TrainConfig(task="modular", task_args={"p": 5}, model="transformer",
                       model_args={"n_layers": 1, "n_heads": 2, "d_model": 8, "d_mlp": 16},
                       steps=3, nib_beta=0.1).validate()
    train(tcfg, tmp_path / "tr.zarr")
    assert np.isfinite(Run(tmp_path / "tr.zarr").metrics()["nib_penalty"][1:]).all()
    # in the loop: logged at checkpoints, within [0, log2 N]; the term lowers I(X;T)
    cfg = _tiny(batch_size=0, steps=60, lr=1e-2, ckpt_per_decade=0, ckpt_every=10)
    train(apply_overrides(cfg, ["nib_beta=1"]), tmp_path / "nib.zarr")
    m = Run(tmp_path / "nib.zarr").metrics()
    n_train = len(build_task(cfg).x_train)
    assert np.isnan(m["nib_penalty"][0]) and np.isnan(m["nib_sigma"][0])
    assert ((m["nib_penalty"][1:] >= 0) & (m["nib_penalty"][1:] <= math.log2(n_train))).all()
    assert (m["nib_sigma"][1:] > 0).all()
    train(cfg, tmp_path / "free.zarr")
    bits = {}
    for name in ("nib", "free"):
        run = Run(tmp_path / f"{name}.zarr")
        model = build_model(run.model_spec)
        model.load_state_dict(run.state_dict(-1))
        probe = NIBPenalty(model, None, beta=1.0, resolution=1.0)
        with probe.capture():
            model(torch.from_numpy(run.data()["x_train"]))
        bits[name] = float(probe.penalty().detach())
    assert bits["nib"] < bits["free"] - 0.1, bits


# ------------------------------------------------------------------------------ resume


class _Crash(Exception):
    pass


@pytest.mark.parametrize("on", [["grokfast_lambda=2"], ['norm_constraint="init"'],
                                ["norm_constraint=7.5"], ["nib_beta=0.05"]],
                         ids=["grokfast", "norm-init", "norm-value", "nib"])
def test_resume_with_intervention_is_bit_identical(tmp_path, monkeypatch, on):
    cfg = apply_overrides(_tiny(steps=60), on)
    train(cfg, tmp_path / "ref.zarr")
    # the state is older than the newest checkpoint (as after a kill): those are redone
    snap, crash = 13, 25  # checkpoints of the schedule (10 per decade, every step to 5)

    class CrashingRecorder(Recorder):
        def save(self, step, model, **kw):
            if step >= crash:
                raise _Crash(step)
            kw["keep_state"] = step == snap
            return super().save(step, model, **kw)

    monkeypatch.setattr(loop_mod, "Recorder", CrashingRecorder)
    with pytest.raises(_Crash):
        train(cfg, tmp_path / "resumed.zarr")
    monkeypatch.undo()
    run = Run(tmp_path / "resumed.zarr")
    assert int(run.training_state()["step"]) == snap and int(run.steps[-1]) > snap
    train(None, tmp_path / "resumed.zarr", resume=True)
    _assert_same_run(tmp_path / "ref.zarr", tmp_path / "resumed.zarr")


# ------------------------------------------------------------------------------ bad values


@pytest.mark.parametrize("item, message", [
    ("grokfast_alpha=1.5", "grokfast_alpha must be a finite number >= 0 and < 1, got 1.5"),
    ("grokfast_alpha=1", "grokfast_alpha must be a finite number >= 0 and < 1, got 1"),
    ("grokfast_alpha=-0.1", "grokfast_alpha must be a finite number >= 0 and < 1, got -0.1"),
    ("grokfast_lambda=-2", "grokfast_lambda must be a finite number >= 0, got -2"),
    ("nib_beta=-0.1", "nib_beta must be a finite number >= 0, got -0.1"),
    ("nib_resolution=0", "nib_resolution must be a finite number > 0, got 0"),
    ("norm_constraint=0", "norm_constraint must be None, 'init' or a finite number > 0, got 0"),
    ("norm_constraint=-1", "norm_constraint must be None, 'init' or a finite number > 0, got -1"),
    ("norm_constraint=unit",
     "norm_constraint must be None, 'init' or a finite number > 0, got 'unit'"),
    ("norm_constraint=true",
     "norm_constraint must be None, 'init' or a finite number > 0, got True"),
    ("nib_layer=3", "nib_layer must be None or a module name of the model (e.g. 'acts.0'), got 3"),
])
def test_bad_values_are_one_line_errors(item, message):
    with pytest.raises(ValidationError) as info:
        apply_overrides(get_preset("quick-grok"), [item])
    assert str(info.value) == message


def test_bad_layer_and_batch_fail_before_any_archive(tmp_path):
    out = tmp_path / "run.zarr"
    for preset, layer in (("quick-grok", "acts.1"), ("quick-transformer", "blocks.1.act")):
        cfg = apply_overrides(get_preset(preset), ["nib_beta=0.1", f"nib_layer={layer}"])
        with pytest.raises(ValidationError, match=f"nib_layer must be the name of a module of "
                                                  f"the model .* got '{layer}'") as info:
            train(cfg, out)
        assert "\n" not in str(info.value) and not out.exists()
    with pytest.raises(ValidationError, match="batch_size must be 0 or >= 2 when nib_beta > 0"):
        apply_overrides(get_preset("quick-grok"), ["nib_beta=0.1", "batch_size=1"])


def test_cli_bad_values(tmp_path):
    r = CliRunner()
    out = str(tmp_path / "run.zarr")
    res = r.invoke(cli, ["train", "quick-grok", "--out", out, "--set", "grokfast_alpha=1.5"])
    assert res.exit_code == 1
    assert res.output == "Error: grokfast_alpha must be a finite number >= 0 and < 1, got 1.5\n"
    res = r.invoke(cli, ["train", "quick-grok", "--out", out, "--set", "nib_beta=0.1",
                         "--set", "nib_layer=nope"])
    assert res.exit_code == 1 and res.output.count("\n") == 1
    assert res.output.startswith("Error: nib_layer must be the name of a module of the model")
    assert not (tmp_path / "run.zarr").exists()
    res = r.invoke(cli, ["train", "quick-grok", "--out", out, "--set", "norm_constraint=unit"])
    assert res.exit_code == 1 and res.output.startswith("Error: norm_constraint must be None")
    assert "Traceback" not in res.output
