"""ckptlab's MLP as batched matmuls (BatchedMLP) gives what the general vmap path gives."""

import pytest
import torch
import xarray as xr

from ckptlab.analysis import analyze, api, compute
from ckptlab.analysis.batched_mlp import BatchedMLP, batched_model
from ckptlab.analysis.capture import BatchedModel
from trainers import TrainConfig, train

KW = dict(metrics=("mi", "lc", "lmn", "rank"), estimators=("binning", "kde", "kde_rel"),
          kde_samples=40, lc_points=12, lmn_samples=12, radii=(0.05, 0.5), store=False,
          scheduler="synchronous", block_size=5)


def _general(monkeypatch):
    monkeypatch.setattr(compute, "batched_model", BatchedModel)
    monkeypatch.setattr(api, "batched_model", BatchedModel)


def _count_fast(monkeypatch):
    calls = []
    real = BatchedMLP._run

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(BatchedMLP, "_run", counted)
    return calls


@pytest.mark.parametrize("dtype, activation, bias", [
    ("float32", "relu", True), ("float64", "relu", True), ("float64", "gelu", True),
    ("float64", "relu", False)])
def test_fast_mlp_equals_the_general_batched_path(tmp_path, monkeypatch, dtype, activation,
                                                  bias):
    p = tmp_path / "mlp.zarr"
    train(TrainConfig(task="digits", task_args={"n_train": 120},
                      model_args={"widths": [12, 8], "activation": activation, "bias": bias},
                      steps=40, lr=0.01, dtype=dtype, ckpt_per_decade=4, ckpt_dense_until=2),
          p)
    kw = {**KW, "lc_activations": "any"}
    with monkeypatch.context() as mp:
        calls = _count_fast(mp)
        fast = analyze(p, batched=True, **kw)
        assert len(calls) > 0  # the matmul path ran
    with monkeypatch.context() as mp:
        _general(mp)
        general = analyze(p, batched=True, **kw)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == "float64" else dict(rtol=1e-5, atol=1e-6)
    xr.testing.assert_allclose(fast, general, **tol)
    assert float(fast["lc"].max()) > 0 and float(fast["lmn"].max()) > 1


def test_fast_mlp_token_inputs_and_one_at_a_time(token_run, monkeypatch):
    calls = _count_fast(monkeypatch)
    fast = analyze(token_run, batched=True, **KW)
    assert len(calls) > 0
    one = analyze(token_run, batched=False, **KW)
    xr.testing.assert_allclose(fast, one, rtol=1e-5, atol=1e-6)


def test_views_match_the_general_path_tap_by_tap(relu_run):
    from ckptlab.analysis.capture import CapturedModel, resolve_layer_map
    from ckptlab.store import Run

    run = Run(relu_run)
    src = api._archive_source(run)
    module = src.build()
    data = run.data()
    lm = resolve_layer_map(module, data["x_train"][:4], defaults=src.defaults)
    cm = CapturedModel(module, lm, data["x_train"][:1])
    cm.load(run.state_dict(0))
    state = {k: torch.from_numpy(v) for k, v in run.params(0, 4).items()}
    fast, general = batched_model(cm, state), BatchedModel(cm, state)
    assert type(fast) is BatchedMLP
    x = data["x_train"][:30]
    with torch.no_grad():
        for taps in (lm.layers, lm.preacts, lm.preacts[-1:]):
            a, b = fast.representations(x, taps), general.representations(x, taps)
            assert a.keys() == b.keys()
            for k in b:
                torch.testing.assert_close(a[k], b[k])
        e = general.embed(x)
        for logits in (True, False):
            fa, fb = fast.preact_fn(lm.preacts, logits=logits), general.preact_fn(
                lm.preacts, logits=logits)
            for u, v in zip(fa(e), fb(e)):
                torch.testing.assert_close(u, v)
        shared = torch.as_tensor(x[:7], dtype=torch.float32)[None].expand(4, -1, -1)
        for u, v in zip(fast.preact_fn(lm.preacts)(shared), general.preact_fn(lm.preacts)(shared)):
            torch.testing.assert_close(u, v)
        cut = fast.cm.affine_successor(lm.lmn_from, cm.as_input(x[:4]))
        for c in (lm.lmn_from, cut):
            (ta, ha), (tb, hb) = fast.lmn_split(c), general.lmn_split(c)
            h = tb(x)
            torch.testing.assert_close(ta(x), h)
            before = h.clone()
            torch.testing.assert_close(ha(h), hb(h))
            assert torch.equal(h, before)  # the head leaves its input alone
            # a scratch head may overwrite its input (a ReLU in place) and still agrees
            _, hs = fast.lmn_split(c, scratch=True)
            torch.testing.assert_close(hs(h.clone()), hb(h))
        _, hs = fast.lmn_split(cut, scratch=True)
        z = fast.lmn_split(cut)[0](x)
        hs(z)
        assert bool((z >= 0).all()) and not torch.equal(z, fast.lmn_split(cut)[0](x))
