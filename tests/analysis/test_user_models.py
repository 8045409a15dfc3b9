"""Models unlike ckptlab's own, recorded from plain loops, analysed through forward hooks.

Each model here also computes its own activations by hand (``cache``), written independently of
ckptlab's hook capture; every measure must equal the kernels applied to those.
"""

import math
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

import ckptlab
from ckptlab.analysis import analyze
from ckptlab.errors import ValidationError
from ckptlab.metrics import mi as mi_k
from ckptlab.metrics.lmn import linear_mapping_number
from ckptlab.metrics.local_complexity import cross_polytope_directions, local_complexity
from ckptlab.metrics.weights import representation_effective_rank
from ckptlab.store import Recorder, Run


# ---------------------------------------------------------------------------- the models
class SmallCNN(nn.Module):
    """Digits images (1, 8, 8): conv -> ReLU -> pool -> flatten -> linear -> ReLU -> linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 16)
        self.relu2 = nn.ReLU()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.relu2(self.fc(self.pool(self.relu1(self.conv(x))).flatten(1))))

    def cache(self, x):
        z1 = self.conv(x)
        a1 = torch.relu(z1)
        z2 = self.fc(nn.functional.max_pool2d(a1, 2).flatten(1))
        a2 = torch.relu(z2)
        return {"relu1": a1.flatten(1), "relu2": a2}, {"relu1": z1.flatten(1), "relu2": z2}


class ResidualMLP(nn.Module):
    """x -> fc_in -> ReLU = h; h + fc2(ReLU(fc1(LayerNorm(h)))) -> head."""

    def __init__(self, d_in=12, d=16, n_classes=2):
        super().__init__()
        self.fc_in = nn.Linear(d_in, d)
        self.act_in = nn.ReLU()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 24)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(24, d)
        self.head = nn.Linear(d, n_classes)

    def branch(self, h):
        return self.fc2(self.act(self.fc1(self.norm(h))))

    def forward(self, x):
        h = self.act_in(self.fc_in(x))
        return self.head(h + self.branch(h))

    def cache(self, x):
        z0 = self.fc_in(x)
        h = torch.relu(z0)
        z1 = self.fc1(self.norm(h))
        return {"act_in": h, "act": torch.relu(z1)}, {"act_in": z0, "act": z1}


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.h = heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x):
        n, s, d = x.shape
        q, k, v = self.qkv(x).view(n, s, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / math.sqrt(d // self.h)).softmax(-1)
        return self.out((att @ v).transpose(1, 2).reshape(n, s, d))


class TinyTransformer(nn.Module):
    """Token ids (N, 2) -> embedding + positions -> one attention + ReLU-MLP block -> logits
    read at the last position."""

    def __init__(self, vocab=7, d=16):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(2, d) * 0.1)
        self.attn = Attention(d, 2)
        self.mlp_in = nn.Linear(d, 32)
        self.act = nn.ReLU()
        self.mlp_out = nn.Linear(32, d)
        self.unembed = nn.Linear(d, vocab)

    def forward(self, x):
        r = self.tok(x) + self.pos
        r = r + self.attn(r)
        r = r + self.mlp_out(self.act(self.mlp_in(r)))
        return self.unembed(r[:, -1])

    def from_tok(self, e):  # the same, from the token embeddings (the LC / LMN space)
        r = e.view(len(e), 2, -1) + self.pos
        r = r + self.attn(r)
        z = self.mlp_in(r)
        a = torch.relu(z)
        r = r + self.mlp_out(a)
        return self.unembed(r[:, -1]), z, a

    def cache(self, x):
        e = self.tok(x).flatten(1)
        _, z, a = self.from_tok(e)
        return {"act": a[:, -1]}, {"act": z.flatten(1)}


def _record(path, net, data, steps=12, lr=0.05, seed=0):
    """A plain training loop, checkpointed with the Recorder (no ckptlab model spec)."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    xt = torch.as_tensor(data["x_train"])
    yt = torch.as_tensor(data["y_train"]).long()
    with Recorder(path, model=net, data=data) as rec:
        for step in range(steps):
            loss = nn.functional.cross_entropy(net(xt), yt)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 3 == 0 or step == steps - 1:
                rec.save(step, net, metrics={"train_loss": loss.item()})
    return path


def _digits(n=120):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    return {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:2 * n], "y_test": y[n:2 * n]}


def _bits(n=200, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2, size=(2 * n, 12)).astype(np.float32)
    y = (x[:, :6].sum(1) > 3).astype(np.int64)
    return {"x_train": x[:n], "y_train": y[:n], "x_test": x[n:], "y_test": y[n:]}


def _tokens(p=7):
    a, b = np.meshgrid(np.arange(p), np.arange(p), indexing="ij")
    x = np.stack([a.ravel(), b.ravel()], 1).astype(np.int64)
    y = (x[:, 0] + x[:, 1]) % p
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    k = len(x) // 2
    return {"x_train": x[:k], "y_train": y[:k], "x_test": x[k:], "y_test": y[k:]}


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    p = tmp_path_factory.mktemp("user") / "cnn.zarr"
    return _record(p, SmallCNN(), _digits()), SmallCNN


@pytest.fixture(scope="module")
def res_run(tmp_path_factory):
    p = tmp_path_factory.mktemp("user") / "res.zarr"
    return _record(p, ResidualMLP(), _bits()), ResidualMLP


@pytest.fixture(scope="module")
def trf_run(tmp_path_factory):
    p = tmp_path_factory.mktemp("user") / "trf.zarr"
    torch.manual_seed(1)
    return _record(p, TinyTransformer(), _tokens()), TinyTransformer


def _probe(run):
    d = run.data()
    return np.concatenate([d["x_train"], d["x_test"]]), np.concatenate([d["y_train"], d["y_test"]])


def _loaded(cls, run, i):
    net = cls()
    net.load_state_dict(run.state_dict(i))
    return net.eval()


# ---------------------------------------------------------------------------- truth
@pytest.mark.parametrize("fixture", ["cnn_run", "res_run", "trf_run"])
def test_mi_and_rank_equal_kernels_on_own_activations(request, fixture):
    path, cls = request.getfixturevalue(fixture)
    position = -1 if fixture == "trf_run" else None  # the transformer: the last position
    ds = analyze(path, model=cls, metrics=("mi", "rank"), estimators=("binning", "kde"),
                 binning_range=(-3.0, 3.0), kde_samples=40, store=False, scheduler="synchronous",
                 position=position)
    run = Run(path)
    x, y = _probe(run)
    for i in (0, run.n - 1):
        with torch.no_grad():
            hidden, _ = _loaded(cls, run, i).cache(torch.as_tensor(x))
        assert list(ds.layer.values) == list(hidden)
        for layer, t in hidden.items():
            t = t.double().numpy()
            xt, ty = mi_k.mi_binning(t, y, n_bins=30, lo=-3.0, hi=3.0)
            got = ds.mi_xt.sel(estimator="binning", layer=layer).isel(step=i).item()
            np.testing.assert_allclose(got, xt, rtol=1e-12)
            np.testing.assert_allclose(
                ds.mi_ty.sel(estimator="binning", layer=layer).isel(step=i).item(), ty,
                rtol=1e-9, atol=1e-12)
            idx = np.sort(np.random.default_rng(
                [0, __import__("zlib").crc32(b"kde")]).permutation(len(y))[:40])
            up = mi_k.mi_kde_bounds(t[idx], y[idx], sigma2=0.1)[0]
            # float32 activations: checkpoints evaluated together (batched matmuls) round
            # differently in the last bit from the test's one-at-a-time forward pass
            np.testing.assert_allclose(
                ds.mi_xt.sel(estimator="kde_upper", layer=layer).isel(step=i).item(), up,
                rtol=1e-6)
            np.testing.assert_allclose(
                ds.rep_effective_rank.sel(layer=layer).isel(step=i).item(),
                representation_effective_rank(t), rtol=1e-6)


def test_cnn_local_complexity_in_image_space(cnn_run):
    path, cls = cnn_run
    ds = analyze(path, model=cls, metrics=("lc",), lc_splits=("train",), lc_points=120,
                 radii=(0.1,), n_directions=6, store=False, scheduler="synchronous")
    run = Run(path)
    x = torch.as_tensor(run.data()["x_train"])
    i = run.n - 1
    net = _loaded(cls, run, i)
    dirs = cross_polytope_directions(64, n_directions=6, seed=0)

    def fn(v):
        _, pre = net.cache(v.view(-1, 1, 8, 8))
        return [pre["relu1"], pre["relu2"], net(v.view(-1, 1, 8, 8))]

    with torch.no_grad():
        counts = local_complexity(x.flatten(1), fn, directions=dirs, radius=0.1,
                                  lower=float(x.min()), upper=float(x.max())).double()
    for j, layer in enumerate(("relu1", "relu2")):
        np.testing.assert_allclose(ds.lc.sel(split="train", radius=0.1, layer=layer)
                                   .isel(step=i).item(), counts[:, j].mean().item())


def test_transformer_lc_and_lmn_in_token_embedding_space(trf_run):
    path, cls = trf_run
    run = Run(path)
    n = len(run.data()["x_train"])
    ds = analyze(path, model=cls, metrics=("lc", "lmn", "mi"), estimators=("binning",),
                 binning_range=(0.0, 4.0), position=-1, lc_splits=("train",), lc_points=n,
                 lmn_samples=n, radii=(0.05,), n_directions=4, store=False,
                 scheduler="synchronous")
    assert list(ds.layer.values) == ["act"]
    i = run.n - 1
    net = _loaded(cls, run, i)
    x = torch.as_tensor(run.data()["x_train"])
    with torch.no_grad():
        e = net.tok(x).flatten(1)
        dirs = cross_polytope_directions(e.shape[1], n_directions=4, seed=0)

        def fn(v):
            logits, z, _ = net.from_tok(v)
            return [z.flatten(1), logits]

        counts = local_complexity(e, fn, directions=dirs, radius=0.05).double()
        ref = linear_mapping_number(e, lambda h: net.from_tok(h)[0])
    np.testing.assert_allclose(ds.lc.sel(split="train", radius=0.05, layer="act")
                               .isel(step=i).item(), counts[:, 0].mean().item())
    np.testing.assert_allclose(ds.lmn.isel(step=i).item(), ref, rtol=1e-6)


def test_residual_lmn_default_cut_equals_kernel_and_bypassed_cut_is_refused(res_run):
    path, cls = res_run
    ds = analyze(path, model=cls(), metrics=("lmn",), lmn_samples=30, store=False,
                 scheduler="synchronous")
    run = Run(path)
    x = torch.as_tensor(run.data()["x_train"])
    idx = np.sort(np.random.default_rng([0, __import__("zlib").crc32(b"lmn")])
                  .permutation(len(x))[:30])
    i = run.n - 1
    net = _loaded(cls, run, i)
    with torch.no_grad():
        h = net.act_in(net.fc_in(x[idx]))
        ref = linear_mapping_number(h, lambda v: net.head(v + net.branch(v)))
    np.testing.assert_allclose(ds.lmn.isel(step=i).item(), ref, rtol=1e-6)
    # the residual skip goes around `act`: h -> logits is not a function of act's output
    with pytest.raises(ValidationError, match=r"lmn cannot be computed.*'act'.*bypasses"):
        analyze(path, model=cls, metrics=("lmn",), lmn_from="act", store=False)


def test_own_mlp_through_a_users_class_gives_the_same_numbers(tmp_path, relu_run):
    """ckptlab's MLP is one model among others: the same checkpoints, loaded into a plain user
    class with the same parameter names, give the same numbers."""

    class PlainMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(64, 12), nn.Linear(12, 8)])
            self.acts = nn.ModuleList([nn.ReLU(), nn.ReLU()])
            self.readout = nn.Linear(8, 10)

        def forward(self, x):
            for lin, act in zip(self.layers, self.acts):
                x = act(lin(x))
            return self.readout(x)

    kw = dict(metrics=("mi", "lc", "lmn", "rank", "weights"), estimators=("binning", "kde"),
              kde_samples=100, lc_points=16, lmn_samples=20, radii=(0.1,), store=False,
              scheduler="synchronous")
    own = analyze(relu_run, **kw)
    user = analyze(relu_run, model=PlainMLP, layers=["acts.0", "acts.1"], **kw)
    own = own.assign_coords(layer=["acts.0", "acts.1"])
    xr.testing.assert_allclose(own.drop_attrs(), user.drop_attrs(), rtol=1e-12)


def test_lc_without_piecewise_linear_activations_is_skipped_or_refused(tmp_path):
    net = nn.Sequential(nn.Linear(12, 8), nn.GELU(), nn.Linear(8, 2))
    path = _record(tmp_path / "gelu.zarr", net, _bits(60), steps=4)
    factory = lambda: nn.Sequential(nn.Linear(12, 8), nn.GELU(), nn.Linear(8, 2))  # noqa: E731
    with pytest.warns(RuntimeWarning, match=r"lc: skipped: the model has no piecewise-linear "
                                            r"activations \(found GELU\)"):
        ds = analyze(path, model=factory, estimators=("binning",), store=False,
                     lc_points=8, lmn_samples=10)
    assert "lc" not in ds and "mi_xt" in ds and list(ds.layer.values) == ["1"]
    with pytest.raises(ValidationError, match="lc cannot be computed for this model"):
        analyze(path, model=factory, metrics=("lc",), store=False)
    ds = analyze(path, model=factory, metrics=("lc",), lc_activations="any", store=False,
                 lc_points=8, radii=(0.1,))
    assert np.isfinite(ds.lc.values).all()


def test_a_shared_activation_module_gives_one_layer_per_call(tmp_path):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(12, 6), nn.Linear(6, 5), nn.Linear(5, 2)
            self.relu = nn.ReLU(inplace=True)  # in place: its inputs must be read before it runs

        def forward(self, x):
            return self.c(self.relu(self.b(self.relu(self.a(x)))))

    path = _record(tmp_path / "shared.zarr", Shared(), _bits(60), steps=4)
    ds = analyze(path, model=Shared, metrics=("mi", "lc"), estimators=("binning",),
                 lc_points=8, radii=(0.5,), lc_splits=("train",), store=False)
    assert list(ds.layer.values) == ["relu[0]", "relu[1]"]
    run = Run(path)
    net = _loaded(Shared, run, run.n - 1)
    x = torch.as_tensor(run.data()["x_train"][:8])
    with torch.no_grad():
        z0 = net.a(x)
        z1 = net.b(torch.relu(z0))
    # a neuron of layer 0 counts iff its pre-activation changes sign: check bounds only
    assert 0 <= ds.lc.sel(layer="relu[0]").isel(step=-1).item() <= z0.shape[1]
    assert 0 <= ds.lc.sel(layer="relu[1]").isel(step=-1).item() <= z1.shape[1]
    assert ds.attrs["layer_modules"]


# ---------------------------------------------------------------------------- the contract
def test_user_archive_records_the_class_and_asks_for_the_model(res_run):
    path, cls = res_run
    info = ckptlab.run_info(path)
    assert info["model"] == {}
    assert info["model_info"]["class"].endswith("test_user_models.ResidualMLP")
    assert info["model_info"]["parameters"]["fc_in.weight"] == [16, 12]
    with pytest.raises(ValidationError, match=r"recorded from a model of class .*ResidualMLP.*"
                                              r"model=\.\.\..*--model MODULE:FACTORY"):
        analyze(path)
    ds = analyze(path, metrics=("weights",), store=False)  # needs no model
    assert "weight_norm" in ds and np.isfinite(ds.weight_norm.values).all()


@pytest.mark.parametrize("model, kwargs, match", [
    (lambda: 3, {}, r"the factory .* must return a torch.nn.Module, got int"),
    (lambda: (_ for _ in ()).throw(RuntimeError("boom")), {}, r"raised RuntimeError: boom"),
    ("ResidualMLP", {}, "model must be a torch.nn.Module or a zero-argument factory"),
    (lambda: nn.Linear(3, 3), {}, r"does not fit the archive's checkpoints; not in the "
                                  r"archive: weight, bias"),
    (ResidualMLP, {"layers": ["fc9"]}, r"layers: the model has no module 'fc9'; its modules: "
                                       r"fc_in \(Linear\)"),
    (ResidualMLP, {"layers": ["act[3]"]}, r"called 1 time\(s\) per forward pass"),
    (ResidualMLP, {"embedding": 5}, "embedding must be a module name, got 5"),
])
def test_bad_models_and_names_are_one_line_errors(res_run, model, kwargs, match):
    path, _ = res_run
    with pytest.raises(ValidationError, match=match):
        analyze(path, model=model, metrics=("mi", "weights"), store=False, **kwargs)


def test_threads_and_processes_agree_for_a_user_model(res_run):
    path, cls = res_run
    kw = dict(model=cls, metrics=("mi", "lmn"), estimators=("kde",), kde_samples=50,
              lmn_samples=10, store=False, block_size=2)
    eager = analyze(path, scheduler="synchronous", **kw)
    xr.testing.assert_allclose(eager, analyze(path, scheduler="threads", n_workers=2, **kw))
    xr.testing.assert_allclose(eager, analyze(path, scheduler="processes", n_workers=2, **kw))
    lazy = analyze(path, compute=False, **kw)
    xr.testing.assert_allclose(eager, lazy.compute())


def test_user_model_results_are_cached_and_reused(tmp_path, res_run):
    import shutil

    path, cls = res_run
    p = tmp_path / "copy.zarr"
    shutil.copytree(path, p)
    first = analyze(p, model=cls, metrics=("mi",), estimators=("binning",))
    again = analyze(p, model=cls, metrics=("mi",), estimators=("binning",))
    xr.testing.assert_identical(first, again)
    other = analyze(p, model=cls, layers=["act"], metrics=("mi",), estimators=("binning",))
    assert list(other.layer.values) == ["act"]  # other layers: another cache entry
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = ckptlab.load_analysis(p)
    assert "mi_xt" in loaded
