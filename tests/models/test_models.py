"""Tests of ckptlab.models against hand-written references built from the same weights."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ckptlab.errors import ModelSpecError, ValidationError
from ckptlab.models import (
    MLP,
    MODEL_REGISTRY,
    ModelOutput,
    ProbeModel,
    Transformer,
    build_model,
    validate_spec,
)

MLP_CONT = {"name": "mlp", "kwargs": {"widths": [6, 5], "n_classes": 3, "in_dim": 4}}
MLP_TOK = {
    "name": "mlp",
    "kwargs": {"widths": [7], "n_classes": 5, "vocab_size": 5, "embed_dim": 3,
               "activation": "silu"},
}
TRF = {
    "name": "transformer",
    "kwargs": {"vocab_size": 7, "n_layers": 2, "n_heads": 2, "d_model": 8, "d_mlp": 12},
}
TRF_LN = {"name": "transformer", "kwargs": {**TRF["kwargs"], "layer_norm": True, "n_tokens": 3}}
SPECS = [MLP_CONT, MLP_TOK, TRF, TRF_LN]
IDS = ["mlp-continuous", "mlp-tokens", "transformer", "transformer-ln"]


def make_inputs(model: ProbeModel, n: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if model.input_kind == "continuous":
        return torch.randn(n, model.spec["kwargs"]["in_dim"], generator=g)
    kw = model.spec["kwargs"]
    return torch.randint(0, kw["vocab_size"], (n, kw["n_tokens"]), generator=g)


# ---- independent references (plain tensor ops on the state dict) -------------------------------

ACT = {
    "relu": lambda z: torch.where(z > 0, z, torch.zeros_like(z)),
    "gelu": lambda z: 0.5 * z * (1.0 + torch.erf(z / math.sqrt(2.0))),
    "tanh": lambda z: (torch.exp(z) - torch.exp(-z)) / (torch.exp(z) + torch.exp(-z)),
    "silu": lambda z: z / (1.0 + torch.exp(-z)),
}


def mlp_reference(sd: dict, kw: dict, x):
    """Hidden layers, pre-activations and logits of the MLP, from its weights."""
    act = ACT[kw["activation"]]
    if "vocab_size" in kw:
        h = sd["embedding.weight"][x].reshape(x.shape[0], -1)
    else:
        h = x
    hidden, pre = [], []
    for i in range(len(kw["widths"])):
        z = h @ sd[f"layers.{i}.weight"].T + sd.get(f"layers.{i}.bias", 0.0)
        h = act(z)
        pre.append(z)
        hidden.append(h)
    return hidden, pre, h @ sd["readout.weight"].T + sd.get("readout.bias", 0.0)


def layer_norm_ref(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def attention_ref(x, wq, wk, wv, wo, n_heads):
    """Causal attention with an explicit loop over heads and a per-position softmax mask."""
    n, s, d = x.shape
    dh = d // n_heads
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    outs = []
    for h in range(n_heads):
        sl = slice(h * dh, (h + 1) * dh)
        sc = torch.einsum("nid,njd->nij", q[..., sl], k[..., sl]) / math.sqrt(dh)
        allowed = torch.arange(s)[None, :] <= torch.arange(s)[:, None]  # j <= i
        sc = torch.where(allowed, sc, torch.full_like(sc, -1e300 if x.dtype == torch.float64
                                                      else -1e30))
        p = torch.exp(sc - sc.max(-1, keepdim=True).values)
        p = p / p.sum(-1, keepdim=True)
        outs.append(torch.einsum("nij,njd->nid", p, v[..., sl]))
    return torch.cat(outs, -1) @ wo.T


def transformer_reference(sd: dict, kw: dict, x):
    act = ACT[kw["activation"]]
    n = x.shape[0]
    seq = torch.cat([x, torch.full((n, 1), kw["vocab_size"])], 1)
    r = sd["token_embed.weight"][seq] + sd["pos_embed"][None]
    ln = kw["layer_norm"]
    hidden, pre = {}, {}
    for i in range(kw["n_layers"]):
        p = f"blocks.{i}."
        a_in = layer_norm_ref(r, sd[p + "ln1.weight"], sd[p + "ln1.bias"]) if ln else r
        r = r + attention_ref(a_in, sd[p + "attn.q.weight"], sd[p + "attn.k.weight"],
                              sd[p + "attn.v.weight"], sd[p + "attn.o.weight"], kw["n_heads"])
        m_in = layer_norm_ref(r, sd[p + "ln2.weight"], sd[p + "ln2.bias"]) if ln else r
        z = m_in @ sd[p + "mlp_in.weight"].T + sd[p + "mlp_in.bias"]
        a = act(z)
        r = r + a @ sd[p + "mlp_out.weight"].T + sd[p + "mlp_out.bias"]
        pre[f"block{i}.mlp"] = z.reshape(n, -1)
        hidden[f"block{i}.mlp"] = a[:, -1]
        hidden[f"block{i}.resid"] = r[:, -1]
    last = r[:, -1]
    if ln:
        last = layer_norm_ref(last, sd["ln_final.weight"], sd["ln_final.bias"])
    return hidden, pre, last @ sd["unembed.weight"].T


# ---- spec round trip and seeding -------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_spec_round_trip_through_json(spec):
    m = build_model(spec, seed=0)
    as_json = json.loads(json.dumps(m.spec))
    assert as_json == m.spec == validate_spec(spec)
    assert validate_spec(m.spec) == m.spec  # normalisation is idempotent
    m2 = build_model(as_json, seed=1)
    assert type(m2) is type(m)
    x = make_inputs(m)
    assert not torch.equal(m2(x), m(x))  # different init, so the load below does the work
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2(x), m(x))


def test_validate_spec_fills_documented_defaults_and_copies():
    spec = {"name": "transformer", "kwargs": {"vocab_size": 97}}
    norm = validate_spec(spec)
    assert spec == {"name": "transformer", "kwargs": {"vocab_size": 97}}  # input untouched
    assert norm == {
        "name": "transformer",
        "kwargs": {"vocab_size": 97, "n_tokens": 2, "n_classes": 97, "n_layers": 2,
                   "n_heads": 4, "d_model": 128, "d_mlp": 512, "activation": "gelu",
                   "layer_norm": False},
    }
    norm = validate_spec({"name": "mlp", "kwargs": {"widths": (3,), "n_classes": 2,
                                                    "vocab_size": 4, "embed_dim": 2,
                                                    "alpha": 2, "in_dim": None}})
    assert norm["kwargs"] == {"widths": [3], "n_classes": 2, "activation": "relu",
                              "alpha": 2.0, "bias": True, "vocab_size": 4, "n_tokens": 2,
                              "embed_dim": 2}
    assert type(norm["kwargs"]["alpha"]) is float
    # the spec property is a copy: mutating it does not change the model
    m = build_model(MLP_CONT, seed=0)
    m.spec["kwargs"]["widths"].append(99)
    assert m.spec["kwargs"]["widths"] == [6, 5]


def test_paper_transformer_size():
    m = build_model({"name": "transformer", "kwargs": {"vocab_size": 96, "n_classes": 96}},
                    seed=0)
    d, dm, v, s = 128, 512, 97, 3
    per_block = 4 * d * d + d * dm + dm + dm * d + d
    assert sum(p.numel() for p in m.parameters()) == v * d + s * d + 2 * per_block + d * 96


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_seed_reproducible_and_global_rng_untouched(spec):
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a, b, c = build_model(spec, seed=7), build_model(spec, seed=7), build_model(spec, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    # without a seed the global generator is used (and advanced)
    build_model(spec)
    assert not torch.equal(torch.get_rng_state(), state)


def test_registry_is_fixed():
    assert dict(MODEL_REGISTRY) == {"mlp": MLP, "transformer": Transformer}
    with pytest.raises(TypeError):
        MODEL_REGISTRY["evil"] = object  # type: ignore[index]


# ---- structure: names, shapes, forward == trunk(embed) ----------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_forward_equals_trunk_of_embed(spec):
    m = build_model(spec, seed=0)
    x = make_inputs(m)
    out = m.trunk(m.embed(x))
    assert isinstance(out, ModelOutput)
    assert torch.equal(m(x), out.logits)
    fast = m.trunk(m.embed(x), capture=False)
    assert torch.equal(fast.logits, out.logits)


def test_mlp_names_and_shapes():
    m = build_model({"name": "mlp", "kwargs": {"widths": [6, 5, 4], "n_classes": 3,
                                               "in_dim": 2}}, seed=0)
    assert m.input_kind == "continuous" and m.embed_width == 2
    names = ("hidden0", "hidden1", "hidden2")
    assert m.layer_names == names and m.preact_names == names
    out = m.trunk(m.embed(torch.randn(10, 2)))
    assert list(out.hidden) == list(names) and list(out.preacts) == list(names)
    assert [tuple(v.shape) for v in out.hidden.values()] == [(10, 6), (10, 5), (10, 4)]
    assert [tuple(v.shape) for v in out.preacts.values()] == [(10, 6), (10, 5), (10, 4)]
    assert out.logits.shape == (10, 3)
    t = build_model(MLP_TOK, seed=0)
    assert t.input_kind == "tokens" and t.embed_width == 2 * 3
    assert t.embed(torch.tensor([[0, 4], [3, 1]])).shape == (2, 6)


def test_transformer_names_and_shapes():
    m = build_model(TRF_LN, seed=0)  # n_tokens 3 -> S = 4
    assert m.input_kind == "tokens" and m.embed_width == 4 * 8
    assert m.layer_names == ("block0.mlp", "block0.resid", "block1.mlp", "block1.resid")
    assert m.preact_names == ("block0.mlp", "block1.mlp")
    out = m.trunk(m.embed(make_inputs(m, n=5)))
    assert list(out.hidden) == list(m.layer_names)
    assert list(out.preacts) == list(m.preact_names)
    assert {k: tuple(v.shape) for k, v in out.hidden.items()} == {
        "block0.mlp": (5, 12), "block0.resid": (5, 8), "block1.mlp": (5, 12),
        "block1.resid": (5, 8)}
    assert all(tuple(v.shape) == (5, 4 * 12) for v in out.preacts.values())
    assert out.logits.shape == (5, 7)
    assert m.token_embed.weight.shape == (8, 8)  # vocab_size + 1 rows for "="


# ---- truth against hand-written references -------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "silu"])
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_matches_hand_built_reference(activation, bias):
    spec = {"name": "mlp", "kwargs": {"widths": [6, 5], "n_classes": 3, "in_dim": 4,
                                      "activation": activation, "bias": bias}}
    m = build_model(spec, seed=3).double()
    x = torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    hid, pre, logits = mlp_reference(m.state_dict(), m.spec["kwargs"], x)
    out = m.trunk(m.embed(x))
    assert out.logits.dtype == torch.float64
    torch.testing.assert_close(out.logits, logits, rtol=1e-12, atol=1e-12)
    for i, name in enumerate(m.layer_names):
        torch.testing.assert_close(out.hidden[name], hid[i], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.preacts[name], pre[i], rtol=1e-12, atol=1e-12)
    assert ("readout.bias" in m.state_dict()) == bias


def test_token_mlp_matches_reference():
    m = build_model(MLP_TOK, seed=0)
    x = make_inputs(m, n=30)
    hid, pre, logits = mlp_reference(m.state_dict(), m.spec["kwargs"], x)
    out = m.trunk(m.embed(x))
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.hidden["hidden0"], hid[0])
    # embedding of row [a, b] is [E[a], E[b]]
    e = m.embed(torch.tensor([[2, 4]]))
    W = m.embedding.weight
    torch.testing.assert_close(e[0], torch.cat([W[2], W[4]]))


@pytest.mark.parametrize("spec", [TRF, TRF_LN], ids=["plain", "layer_norm"])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_transformer_matches_hand_written_reference(spec, activation):
    spec = {"name": "transformer", "kwargs": {**spec["kwargs"], "activation": activation}}
    m = build_model(spec, seed=2).double()
    if m.spec["kwargs"]["layer_norm"]:  # move LN affine params off (1, 0) so they are tested
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "ln" in name:
                    p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype,
                                             generator=torch.Generator().manual_seed(5)))
    x = make_inputs(m, n=25)
    hid, pre, logits = transformer_reference(m.state_dict(), m.spec["kwargs"], x)
    out = m.trunk(m.embed(x))
    assert out.logits.dtype == torch.float64
    torch.testing.assert_close(out.logits, logits, rtol=1e-10, atol=1e-10)
    for k in m.layer_names:
        torch.testing.assert_close(out.hidden[k], hid[k], rtol=1e-10, atol=1e-10)
    for k in m.preact_names:
        torch.testing.assert_close(out.preacts[k], pre[k], rtol=1e-10, atol=1e-10)


def test_attention_matches_scaled_dot_product_attention():
    m = build_model(TRF, seed=0)
    attn = m.blocks[0].attn
    x = torch.randn(6, 5, 8, generator=torch.Generator().manual_seed(0))
    n, s, d, h = 6, 5, 8, 2

    def split(t):
        return t.view(n, s, h, d // h).transpose(1, 2)

    q, k, v = split(x @ attn.q.weight.T), split(x @ attn.k.weight.T), split(x @ attn.v.weight.T)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = ref.transpose(1, 2).reshape(n, s, d) @ attn.o.weight.T
    torch.testing.assert_close(attn(x), ref, rtol=1e-5, atol=1e-6)


def test_transformer_attention_is_causal():
    m = build_model({"name": "transformer", "kwargs": {**TRF["kwargs"], "n_tokens": 3}},
                    seed=0)
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    x2 = x.clone()
    x2[:, 1] = torch.tensor([0, 0])  # change the second token only
    p1, p2 = m.trunk(m.embed(x)).preacts, m.trunk(m.embed(x2)).preacts
    d_mlp = 12
    for k in m.preact_names:
        a, b = p1[k].view(2, 4, d_mlp), p2[k].view(2, 4, d_mlp)
        assert torch.equal(a[:, 0], b[:, 0])  # position 0 cannot see position 1
        assert not torch.allclose(a[:, 1], b[:, 1])
        assert not torch.allclose(a[:, 3], b[:, 3])  # "=" sees everything
    assert not torch.allclose(m(x), m(x2))


def test_transformer_embed_appends_equals_token_and_positions():
    m = build_model(TRF, seed=0)
    e = m.embed(torch.tensor([[3, 5]])).view(3, 8)
    W, P = m.token_embed.weight, m.pos_embed
    torch.testing.assert_close(e, torch.stack([W[3], W[5], W[7]]) + P)


# ---- lmn_split, bounds, alpha, dtypes ------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_lmn_split_composes_to_forward(spec):
    m = build_model(spec, seed=0)
    x = make_inputs(m, n=11)
    to_h, head = m.lmn_split()
    h = to_h(x)
    torch.testing.assert_close(head(h), m(x), rtol=1e-6, atol=1e-6)
    if m.input_kind == "continuous":  # h is the first hidden layer, post-activation
        torch.testing.assert_close(h, m.trunk(m.embed(x)).hidden["hidden0"])
    else:  # token models: h is the embedding
        torch.testing.assert_close(h, m.embed(x))


def test_layer_bounds_and_tanh_range():
    spec = {"name": "mlp", "kwargs": {"widths": [8, 8], "n_classes": 2, "in_dim": 3,
                                      "activation": "tanh", "alpha": 50.0}}
    m = build_model(spec, seed=0)
    assert m.layer_bounds == {"hidden0": (-1.0, 1.0), "hidden1": (-1.0, 1.0)}
    out = m.trunk(m.embed(100 * torch.randn(200, 3)))
    for v in out.hidden.values():
        assert v.abs().max() <= 1.0 and v.abs().max() > 0.99  # saturated, yet inside bounds
    relu = build_model(MLP_CONT, seed=0)
    assert relu.layer_bounds == {"hidden0": None, "hidden1": None}
    trf = build_model({"name": "transformer", "kwargs": {**TRF["kwargs"],
                                                         "activation": "tanh"}}, seed=0)
    assert trf.layer_bounds == {"block0.mlp": (-1.0, 1.0), "block0.resid": None,
                                "block1.mlp": (-1.0, 1.0), "block1.resid": None}
    m.layer_bounds["hidden0"] = None  # a copy: the model's bounds stay
    assert m.layer_bounds["hidden0"] == (-1.0, 1.0)


@pytest.mark.parametrize("spec", [MLP_CONT, MLP_TOK], ids=["continuous", "tokens"])
def test_alpha_scales_every_parameter(spec):
    base = build_model(spec, seed=4)
    scaled = build_model({"name": "mlp", "kwargs": {**spec["kwargs"], "alpha": 8.0}}, seed=4)
    sb, ss = base.state_dict(), scaled.state_dict()
    assert sb.keys() == ss.keys()
    for k in sb:
        torch.testing.assert_close(ss[k], 8.0 * sb[k], rtol=0, atol=0)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_float64_matches_float32(spec):
    m32 = build_model(spec, seed=0)
    m64 = build_model(spec, seed=0).double()
    x = make_inputs(m32, n=13)
    out32, out64 = m32.trunk(m32.embed(x)), m64.trunk(m64.embed(x))
    assert m64.embed(x).dtype == torch.float64
    assert all(v.dtype == torch.float64 for v in out64.hidden.values())
    torch.testing.assert_close(out64.logits.float(), out32.logits, rtol=1e-4, atol=1e-5)
    # float32 embeddings handed to a float64 trunk are cast, not rejected
    assert m64.trunk(m32.embed(x)).logits.dtype == torch.float64


def test_numpy_inputs_and_large_batch():
    m = build_model(MLP_CONT, seed=0)
    x = np.random.default_rng(0).normal(size=(100_000, 4))
    with torch.no_grad():
        out = m.trunk(m.embed(x))
        ref = mlp_reference(m.state_dict(), m.spec["kwargs"], torch.tensor(x, dtype=torch.float32))
    assert out.logits.shape == (100_000, 3)
    torch.testing.assert_close(out.logits, ref[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_cuda_matches_cpu(spec):
    m = build_model(spec, seed=0).double()
    x = make_inputs(m, n=64)
    mc = build_model(spec, seed=0).double().cuda()
    torch.testing.assert_close(mc(x.cuda()).cpu(), m(x), rtol=1e-9, atol=1e-9)
    out = mc.trunk(mc.embed(x))
    assert all(v.is_cuda for v in out.preacts.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_seeded_build_leaves_cuda_rng_untouched():
    torch.cuda.init()
    state = torch.cuda.get_rng_state()
    build_model(MLP_CONT, seed=3)
    assert torch.equal(torch.cuda.get_rng_state(), state)
    # even under a CUDA default device the parameters are built on the CPU, reproducibly
    with torch.device("cuda"):
        m = build_model(MLP_CONT, seed=3)
    assert next(m.parameters()).device.type == "cpu"
    ref = build_model(MLP_CONT, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), ref.parameters()))


# ---- errors --------------------------------------------------------------------------------------

BAD_SPECS = [
    ({"name": "cnn", "kwargs": {}}, r"unknown model name 'cnn'; known: 'mlp', 'transformer'"),
    ({"name": 3}, r"unknown model name 3"),
    (["mlp"], r"spec must be a mapping with keys 'name' and 'kwargs', got list"),
    ({"kwargs": {}}, r"spec is missing the key 'name'"),
    ({"name": "mlp", "kwargs": {}, "code": "x"}, r"spec has unknown key\(s\) 'code'"),
    ({"name": "mlp", "kwargs": [1]}, r"mlp: kwargs must be a mapping"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "dropout": 0.1}},
     r"mlp: unknown kwarg\(s\) 'dropout'; allowed: 'widths'"),
    ({"name": "mlp", "kwargs": {"widths": [3], "in_dim": 2}},
     r"mlp: missing required kwarg\(s\) 'n_classes'"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "widths": []}},
     r"mlp: widths must be a non-empty list of positive integers, got \[\]"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "widths": [4, 0]}},
     r"mlp: widths must be a non-empty list of positive integers, got \[4, 0\]"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "widths": [4.0]}},
     r"mlp: widths must be a non-empty list of positive integers, got \[4.0\]"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "widths": 4}},
     r"mlp: widths must be a non-empty list of positive integers, got 4"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "alpha": 0}},
     r"mlp: alpha must be a finite number > 0, got 0"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "alpha": -2.0}},
     r"mlp: alpha must be a finite number > 0, got -2.0"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "alpha": float("inf")}},
     r"mlp: alpha must be a finite number > 0, got inf"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "activation": "sigmoid"}},
     r"mlp: activation must be one of 'relu', 'gelu', 'tanh', 'silu'; got 'sigmoid'"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "n_classes": 0}},
     r"mlp: n_classes must be an integer >= 1, got 0"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "bias": 1}},
     r"mlp: bias must be a bool \(true/false\), got 1"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "in_dim": 2.5}},
     r"mlp: in_dim must be an integer >= 1, got 2.5"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "vocab_size": 5, "embed_dim": 2}},
     r"mlp: give either in_dim \(continuous inputs\) or vocab_size \(token inputs\), not both"),
    ({"name": "mlp", "kwargs": {"widths": [3], "n_classes": 2}},
     r"mlp: missing input size: give in_dim"),
    ({"name": "mlp", "kwargs": {**MLP_CONT["kwargs"], "embed_dim": 2}},
     r"mlp: embed_dim apply only to token inputs \(vocab_size\), got them with in_dim=4"),
    ({"name": "mlp", "kwargs": {"widths": [3], "n_classes": 2, "vocab_size": 5}},
     r"mlp: missing required kwarg 'embed_dim'"),
    ({"name": "transformer", "kwargs": {**TRF["kwargs"], "d_model": 9}},
     r"transformer: d_model must be divisible by n_heads, got d_model=9, n_heads=2"),
    ({"name": "transformer", "kwargs": {**TRF["kwargs"], "activation": "swish"}},
     r"transformer: activation must be one of 'relu', 'gelu', 'tanh', 'silu'; got 'swish'"),
    ({"name": "transformer", "kwargs": {**TRF["kwargs"], "n_heads": 0}},
     r"transformer: n_heads must be an integer >= 1, got 0"),
    ({"name": "transformer", "kwargs": {**TRF["kwargs"], "layer_norm": "yes"}},
     r"transformer: layer_norm must be a bool \(true/false\), got 'yes'"),
    ({"name": "transformer", "kwargs": {"n_layers": 2}},
     r"transformer: missing required kwarg\(s\) 'vocab_size'"),
    ({"name": "transformer", "kwargs": {**TRF["kwargs"], "in_dim": 3}},
     r"transformer: unknown kwarg\(s\) 'in_dim'"),
]


@pytest.mark.parametrize("spec,match", BAD_SPECS)
def test_bad_specs_raise_model_spec_error(spec, match):
    with pytest.raises(ModelSpecError, match=match):
        validate_spec(spec)
    with pytest.raises(ModelSpecError, match=match):
        build_model(spec, seed=0)


def test_direct_construction_validates_too():
    with pytest.raises(ModelSpecError, match=r"mlp: widths must be a non-empty list"):
        MLP(widths=[], n_classes=2, in_dim=3)
    with pytest.raises(ModelSpecError, match=r"transformer: d_model must be divisible"):
        Transformer(vocab_size=5, d_model=10, n_heads=4)


def test_bad_runtime_inputs_raise_validation_error():
    with pytest.raises(ValidationError, match=r"seed must be an integer in \[0, "):
        build_model(MLP_CONT, seed=-1)
    with pytest.raises(ValidationError, match=r"seed must be an integer"):
        build_model(MLP_CONT, seed=1.5)
    trf = build_model(TRF, seed=0)
    with pytest.raises(ValidationError, match=r"x must have shape \(N, 2\).*got \(4, 3\)"):
        trf.embed(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValidationError, match=r"x token ids must be in \[0, 6\] \(vocab_size=7\)"
                                              r", got values in \[0, 7\]"):
        trf.embed(torch.tensor([[0, 7]]))
    with pytest.raises(ValidationError, match=r"x must hold integer token ids, got dtype"):
        trf.embed(torch.zeros(2, 2))
    with pytest.raises(ValidationError, match=r"e must have shape \(N, 24\), got \(2, 5\)"):
        trf.trunk(torch.zeros(2, 5))
    mlp = build_model(MLP_CONT, seed=0)
    with pytest.raises(ValidationError, match=r"x must have shape \(N, 4\), got \(3, 2\)"):
        mlp.embed(torch.zeros(3, 2))
    with pytest.raises(ValidationError, match=r"e must be a floating-point tensor"):
        mlp.trunk(torch.zeros(3, 4, dtype=torch.long))
    _, head = mlp.lmn_split()
    with pytest.raises(ValidationError, match=r"h must have shape \(N, 6\), got \(3, 4\)"):
        head(torch.zeros(3, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kw", [{}, {"layer_norm": True, "n_layers": 3, "activation": "relu"}])
def test_transformer_last_position_only_gives_the_same_logits(dtype, kw):
    m = build_model({"name": "transformer", "kwargs": {"vocab_size": 11, "d_model": 16,
                                                       "n_heads": 4, "d_mlp": 24, **kw}},
                    seed=0).to(dtype)
    x = torch.randint(0, 11, (30, 2), generator=torch.Generator().manual_seed(0))
    assert m.last_position_only is False
    assert m.last_position_modules() == (f"blocks.{len(m.blocks) - 1}",)
    want = m(x)
    m.last_position_only = True
    got = m(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-14)
    # the final block's outputs hold the last position only; the earlier blocks all of them
    seen = {}
    hooks = [m.blocks[i].register_forward_hook(
        lambda mod, a, out, i=i: seen.__setitem__(i, out.shape[1])) for i in range(len(m.blocks))]
    m(x)
    for h in hooks:
        h.remove()
    assert seen[len(m.blocks) - 1] == 1 and all(seen[i] == 3 for i in range(len(m.blocks) - 1))


def test_models_without_positions_have_no_last_position_modules():
    m = build_model({"name": "mlp", "kwargs": {"in_dim": 4, "widths": [5], "n_classes": 2}})
    assert m.last_position_modules() == () and m.last_position_only is False
