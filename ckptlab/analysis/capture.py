"""Representations of any ``nn.Module``, read by module name through forward hooks.

A :class:`Tap` names where one representation is read: a module (its dotted name in
``named_modules()``), which call of it (a shared ``nn.ReLU`` runs once per layer), which side
(its output, or its input: the pre-activation of an activation module) and, for sequence
tensors ``(N, S, ...)``, one position or every entry flattened. A :class:`LayerMap` holds the
taps of one analysis: the hidden layers T (mutual information, representation rank), the
pre-activations that local complexity counts, the embedding (the first continuous
representation: where LC neighbourhoods and LMN paths live for token inputs) and the cut of
the linear mapping number. :func:`resolve_layer_map` builds it from a model, a few inputs and
the user's names (or the defaults); :class:`CapturedModel` runs the model with it: capture,
substitute a representation and run on from there, or stop early. The user's class is never
edited, and nothing is imported from an archive: the model comes from the caller.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from ..errors import ValidationError
from .fast_modules import use_fast_forwards

__all__ = [
    "PIECEWISE_LINEAR",
    "SMOOTH",
    "Tap",
    "LayerMap",
    "CapturedModel",
    "BatchedModel",
    "ModelSource",
    "resolve_layer_map",
]

#: Elementwise activations whose kinks partition the input space into linear regions.
PIECEWISE_LINEAR: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.RReLU, nn.Hardtanh, nn.Hardsigmoid,
    nn.Threshold,
)
#: Smooth elementwise activations: a hidden layer, but no linear regions to count.
SMOOTH: tuple[type[nn.Module], ...] = (
    nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.CELU, nn.SELU, nn.Softplus, nn.Mish,
    nn.Hardswish, nn.LogSigmoid, nn.Softsign, nn.Tanhshrink,
)
_ACTIVATIONS = PIECEWISE_LINEAR + SMOOTH


def _bounds(mod: nn.Module) -> tuple[float, float] | None:
    """Interval an activation's output is confined to (the fixed binning estimator uses it)."""
    if isinstance(mod, (nn.Tanh, nn.Softsign)):
        return (-1.0, 1.0)
    if isinstance(mod, (nn.Sigmoid, nn.Hardsigmoid)):
        return (0.0, 1.0)
    if isinstance(mod, nn.ReLU6):
        return (0.0, 6.0)
    if isinstance(mod, nn.Hardtanh):
        return (float(mod.min_val), float(mod.max_val))
    return None


@dataclass(frozen=True)
class Tap:
    """Where one representation is read.

    Attributes
    ----------
    module : str
        Dotted module name, as in ``model.named_modules()``.
    label : str
        The name results carry (the ``layer`` coordinate).
    call : int
        Which call of the module within one forward pass (0 = the first).
    side : {"output", "input"}
        The module's output, or its first positional input (an activation's input is the
        pre-activation).
    position : int or None
        For outputs of 3 or more dims ``(N, S, ...)``: keep position ``S = position`` only;
        None flattens every entry after the batch dim.
    """

    module: str
    label: str
    call: int = 0
    side: str = "output"
    position: int | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LayerMap:
    """The taps one analysis reads, resolved against one model (JSON-able but for ``None``).

    Attributes
    ----------
    layers : tuple of Tap
        Hidden representations T, from input to output.
    preacts : tuple of Tap
        Pre-activations whose sign changes local complexity counts.
    embedding : Tap or None
        The first continuous representation; None: the (continuous) input itself.
    lmn_from : Tap or None
        Where the linear mapping number cuts the network; None: the embedding.
    input_kind : {"tokens", "continuous"}
        Integer inputs are token ids.
    input_shape : tuple of int
        Shape of one raw input row.
    bounds : dict
        ``label -> (lo, hi)`` for layers confined to an interval (tanh: [-1, 1]).
    kinds : dict
        ``label -> activation class name`` for taps on activation modules.
    piecewise_linear : dict
        ``preact label -> bool``: whether its activation is piecewise linear.
    problems : dict
        ``"layers" / "preacts" / "embedding" / "lmn_from" -> why no default applies``; the
        families that need that part say so (error or skip).
    """

    layers: tuple = ()
    preacts: tuple = ()
    embedding: Tap | None = None
    lmn_from: Tap | None = None
    input_kind: str = "continuous"
    input_shape: tuple = ()
    bounds: dict = field(default_factory=dict)
    kinds: dict = field(default_factory=dict)
    piecewise_linear: dict = field(default_factory=dict)
    problems: dict = field(default_factory=dict)

    @property
    def layer_names(self) -> list[str]:
        return [t.label for t in self.layers]

    @property
    def preact_names(self) -> list[str]:
        return [t.label for t in self.preacts]

    def describe(self) -> dict:
        """The JSON description stored with results (part of every cache key that uses it)."""
        return {
            "layers": [t.to_json() for t in self.layers],
            "preacts": [t.to_json() for t in self.preacts],
            "embedding": None if self.embedding is None else self.embedding.to_json(),
            "lmn_from": None if self.lmn_from is None else self.lmn_from.to_json(),
        }


class _Stop(Exception):
    """Raised inside a hook to end a forward pass once everything asked for is captured."""


def _select(t: Tensor, position: int | None) -> Tensor:
    if position is not None and t.ndim >= 3:
        t = t[:, position]
    return t.reshape(t.shape[0], -1)


def _logits(out, position: int | None) -> Tensor:
    """The logits in whatever a forward returns: a tensor, ``.logits`` (Hugging Face), a tuple."""
    if isinstance(out, Mapping) and "logits" in out:
        out = out["logits"]
    elif hasattr(out, "logits") and not isinstance(out, Tensor):
        out = out.logits
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, Tensor):
        raise ValidationError(
            f"model: the forward pass must return the logits as a tensor (or a tuple / an object "
            f"with .logits holding them), got {type(out).__name__}"
        )
    if out.ndim == 3 and position is not None:
        out = out[:, position]
    if out.ndim != 2:
        raise ValidationError(
            f"model: the logits must have shape (N, n_classes), got {tuple(out.shape)}"
            + ("; pass position=-1 to read the last position of a sequence model"
               if out.ndim == 3 else "")
        )
    return out


class CapturedModel:
    """Run one module with a :class:`LayerMap`: capture, substitute, stop early.

    Parameters
    ----------
    module : torch.nn.Module
        The model; put in inference mode (``eval()``). Its parameters are replaced by each
        checkpoint's tensors (:meth:`load`), never edited otherwise. Standard submodules get
        forwards with the same results that run faster
        (:func:`~ckptlab.analysis.fast_modules.use_fast_forwards`): pass a module of the
        analysis's own, as :meth:`ModelSource.build` makes.
    layer_map : LayerMap
    x_ref : array
        One raw input row ``(1, ...)``. A forward pass that starts from a substituted
        representation still needs an input of the right batch size; this row, repeated, is it
        (:func:`check_cut` makes sure the outputs do not depend on it).
    narrow : bool, default False
        Run the modules before a substituted representation on one reference row instead of
        one per substituted row: their outputs are discarded, so the rows only cost time. Only
        for models whose code after the cut takes its batch size from the substituted tensor
        (:func:`narrow_dummy_ok` checks this).
    """

    def __init__(self, module: nn.Module, layer_map: LayerMap, x_ref, *,
                 position: int | None = None, narrow: bool = False):
        self.module = module.eval()
        use_fast_forwards(module)
        self.map = layer_map
        self.position = position
        self.narrow = narrow
        self._mods = dict(module.named_modules())
        self.x_ref = torch.as_tensor(np.asarray(x_ref))

    # ---- parameters -------------------------------------------------------------------------
    def load(self, state: Mapping[str, Tensor]) -> None:
        """Use ``state``'s tensors as the parameters (no copy; their dtype and device)."""
        self.module.load_state_dict(state, strict=True, assign=True)

    @property
    def dtype(self) -> torch.dtype:
        for p in self.module.parameters():
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    def as_input(self, x) -> Tensor:
        """Raw inputs as the model takes them: int64 token ids, or floats in the model's dtype."""
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
        if self.map.input_kind == "tokens":
            return t.long().to(self.device)
        return t.to(self.device, self.dtype)

    def _dummy(self, n: int) -> Tensor:
        x = self.as_input(self.x_ref[:1])
        return x if self.narrow else x.repeat((n,) + (1,) * (x.ndim - 1))

    # ---- the one forward pass everything goes through -------------------------------------
    def forward(self, x: Tensor, *, taps: Sequence[Tap] = (), substitute=None,
                need_logits: bool = True, params: Mapping | None = None,
                ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Run ``x`` through the model, reading ``taps`` and optionally replacing one output.

        Parameters
        ----------
        x : Tensor
            Raw inputs (see :meth:`as_input`).
        taps : sequence of Tap
            Representations to return, ``label -> (N, d)`` (flattened, see :class:`Tap`).
        substitute : (Tap, Tensor), optional
            Replace that module output by the given ``(N, D)`` rows (reshaped to the output's
            shape): the model runs on from there.
        need_logits : bool, default True
            False stops the pass as soon as every tap has been read.
        params : mapping, optional
            Parameters and buffers to run with instead of the module's own
            (``torch.func.functional_call``; :class:`BatchedModel` vmaps over them).

        Returns
        -------
        logits : Tensor or None
        captured : dict
        """
        captured: dict[str, Tensor] = {}
        calls: Counter = Counter()
        pre_calls: Counter = Counter()
        outs: dict[str, list[Tap]] = {}
        ins: dict[str, list[Tap]] = {}
        for t in taps:
            (ins if t.side == "input" else outs).setdefault(t.module, []).append(t)
        sub_tap, sub_val = substitute if substitute is not None else (None, None)
        if sub_tap is not None:
            outs.setdefault(sub_tap.module, [])
        wanted = len({t.label for t in taps})

        def done():
            if not need_logits and len(captured) == wanted:
                raise _Stop

        def pre_hook_for(name):
            # inputs are read before the module runs: an in-place activation overwrites them
            def hook(mod, args):
                k = pre_calls[name]
                pre_calls[name] += 1
                for t in ins[name]:
                    if t.call == k:
                        v = args[0]
                        captured[t.label] = _select(
                            v.clone() if getattr(mod, "inplace", False) else v, t.position)
                done()

            return hook

        def hook_for(name):
            def hook(mod, args, out):
                k = calls[name]
                calls[name] += 1
                new = None
                if sub_tap is not None and sub_tap.module == name and sub_tap.call == k:
                    new = sub_val.reshape((sub_val.shape[0],) + tuple(out.shape[1:])).to(out.dtype)
                for t in outs[name]:
                    if t.call == k:
                        captured[t.label] = _select(out if new is None else new, t.position)
                done()
                return new

            return hook

        handles = [self._mods[n].register_forward_hook(hook_for(n)) for n in outs]
        handles += [self._mods[n].register_forward_pre_hook(pre_hook_for(n)) for n in ins]
        last_only = self._last_only_ok(taps, sub_tap)
        if last_only:
            self.module.last_position_only = True
        try:
            out = self.module(x) if params is None else functional_call(self.module, params, (x,))
        except _Stop:
            out = None
        finally:
            for h in handles:
                h.remove()
            if last_only:
                self.module.last_position_only = False
        missing = [t.label for t in taps if t.label not in captured]
        if missing:
            raise ValidationError(
                f"model: the forward pass did not reach {', '.join(missing)} (is the module "
                "called on this input?)"
            )
        logits = _logits(out, self.position) if out is not None and need_logits else None
        return logits, captured

    def _last_only_ok(self, taps: Sequence[Tap], sub_tap: Tap | None) -> bool:
        """Whether this pass may run the model's final positions-only modules at the last
        position (:attr:`ProbeModel.last_position_only`): every tap read there is at position
        -1, and nothing is substituted there. A model without such modules: False."""
        names = getattr(self.module, "last_position_modules", None)
        names = names() if callable(names) else ()
        if not names:
            return False

        def inside(module: str) -> bool:
            return any(module == n or module.startswith(n + ".") for n in names)

        if sub_tap is not None and inside(sub_tap.module):
            return False
        return all(t.position == -1 or not inside(t.module) for t in taps)

    # ---- the views the measures use ---------------------------------------------------------
    def representations(self, x, taps: Sequence[Tap], *, chunk_rows: int = 8192) -> dict:
        """``label -> (N, d)`` tensors of the given taps for raw inputs ``x``, in row chunks."""
        x = self.as_input(x)
        parts: dict[str, list] = {t.label: [] for t in taps}
        for a in range(0, len(x), chunk_rows):
            _, cap = self.forward(x[a:a + chunk_rows], taps=taps, need_logits=False)
            for k, v in cap.items():
                parts[k].append(v)
        return {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in parts.items()}

    def embed(self, x) -> Tensor:
        """The first continuous representation ``(N, D)`` of raw inputs ``x``."""
        if self.map.embedding is None:
            x = self.as_input(x)
            return x.reshape(len(x), -1)
        e = self.map.embedding
        return self.representations(x, [e])[e.label]

    def from_embedding(self, e: Tensor, taps: Sequence[Tap] = (), *,
                       params: Mapping | None = None, need_logits: bool = True,
                       ) -> tuple[Tensor | None, dict]:
        """Run on from embedded rows ``e`` ``(N, D)``: the logits and the given taps
        (``need_logits=False``: the taps only, the pass stopped once they are read)."""
        if self.map.embedding is None:
            x = e.reshape((e.shape[0],) + tuple(self.map.input_shape)).to(self.dtype)
            return self.forward(x, taps=taps, params=params, need_logits=need_logits)
        return self.forward(self._dummy(e.shape[0]), taps=taps, need_logits=need_logits,
                            substitute=(self.map.embedding, e), params=params)

    def preact_fn(self, taps: Sequence[Tap], *, logits: bool = True,
                  ) -> Callable[[Tensor], list[Tensor]]:
        """``fn(e) -> [pre-activations..., logits]`` from the embedding, for local complexity.

        ``logits=False`` ends the pass at the last pre-activation and puts an empty ``(M, 0)``
        tensor where the logits would be (what the kernel accepts when it does not count them).
        """
        def fn(e: Tensor) -> list[Tensor]:
            out, cap = self.from_embedding(e, taps, need_logits=logits)
            return [*(cap[t.label] for t in taps),
                    out if logits else e.new_empty(e.shape[:-1] + (0,))]

        return fn

    def lmn_split(self, cut: Tap | None = None) -> tuple[Callable, Callable]:
        """``(to_h, head)``: raw inputs -> the representation at the LMN cut -> logits.

        ``cut`` overrides the layer map's ``lmn_from`` (see :meth:`affine_successor`).
        """
        cut = cut if cut is not None else self.map.lmn_from
        if cut is None or cut == self.map.embedding:
            return self.embed, lambda h: self.from_embedding(h)[0]

        def to_h(x) -> Tensor:
            return self.representations(x, [cut])[cut.label]

        def head(h: Tensor) -> Tensor:
            return self.forward(self._dummy(len(h)), substitute=(cut, h))[0]

        return to_h, head

    def affine_successor(self, cut: Tap, x) -> Tap | None:
        """The output of the ``nn.Linear`` that takes ``cut``'s output as its input, if one does.

        A straight path between two representations maps through an affine layer onto the
        straight path between their images, ``W (h_i + lam (h_j - h_i)) + b = z_i + lam (z_j -
        z_i)``, so the linear mapping matrix cut there is the one cut at ``cut``, without the
        layer's matmul on every path point. Only a candidate: the caller checks with
        :meth:`cut_is_complete` that nothing else reads ``cut``'s output.
        """
        if cut.position is not None or cut.side != "output":
            return None
        seen: dict = {}
        calls: Counter = Counter()
        found: list[Tap] = []

        def at_cut(mod, args, out):
            k = calls[cut.module]
            calls[cut.module] += 1
            if k == cut.call and isinstance(out, Tensor):
                seen["out"], seen["version"] = out, out._version

        def linear_pre(name):
            def hook(mod, args):
                k = calls[name]
                calls[name] += 1
                # the very tensor, not changed in place since (an in-place op between the cut
                # and the layer would sit outside the affine map)
                if (not found and args and args[0] is seen.get("out")
                        and args[0]._version == seen["version"]):
                    found.append(Tap(module=name, label=f"{cut.label}>{name}", call=k))
            return hook

        handles = [self._mods[cut.module].register_forward_hook(at_cut)]
        handles += [mod.register_forward_pre_hook(linear_pre(name))
                    for name, mod in self._mods.items()
                    if isinstance(mod, nn.Linear) and name != cut.module]
        try:
            with torch.no_grad():
                self.module(self.as_input(x))
        except Exception:  # the caller keeps the cut it had
            return None
        finally:
            for h in handles:
                h.remove()
        return found[0] if found else None

    def widest_output(self, x) -> int:
        """The most values per input row any leaf module outputs in a forward pass of ``x``
        (what sizes cache-friendly chunks)."""
        widest = [0]

        def hook(mod, args, out):
            if isinstance(out, Tensor) and out.ndim >= 1 and out.shape[0] == len(x):
                widest[0] = max(widest[0], out.numel() // max(1, out.shape[0]))

        handles = [m.register_forward_hook(hook) for m in self._mods.values()
                   if not list(m.children())]
        try:
            with torch.no_grad():
                self.module(self.as_input(x))
        finally:
            for h in handles:
                h.remove()
        return widest[0]

    def cut_is_complete(self, to_h: Callable, head: Callable, x) -> bool:
        """Whether ``head(to_h(x))`` equals the model's logits: nothing bypasses the cut.

        ``head`` runs on a repeated reference input with the representation substituted; a
        residual connection around the cut (or any other use of the raw input after it) makes
        its logits differ from the real ones.
        """
        xt = self.as_input(x)
        with torch.no_grad():
            real = self.forward(xt)[0]
            via = head(to_h(xt))
        scale = float(real.abs().max()) if real.numel() else 1.0
        tol = (1e-4 if self.dtype == torch.float32 else 1e-9) * max(scale, 1.0)
        return bool(torch.allclose(via, real, rtol=0.0, atol=tol))


def narrow_dummy_ok(models: Sequence[CapturedModel], x, cuts=None) -> bool:
    """Whether every substituted forward pass gives the same logits with ``narrow`` dummies.

    Tried on ``x`` for each model (the first and the last checkpoint) at every cut the
    measures substitute at: ``cuts`` (None entries skipped), by default the embedding, the
    LMN cut and the affine layer after it. A model whose code after the cut reuses the raw
    input's batch size fails or differs, and keeps full-size dummies. Leaves each model's
    ``narrow`` set to the answer.
    """
    ok = True
    for m in models:
        if cuts is None:
            nxt = m.map.lmn_from and m.affine_successor(m.map.lmn_from, x)
            at = {m.map.embedding, m.map.lmn_from, nxt}
        else:
            at = set(cuts)
        for cut in (c for c in at if c is not None):
            try:
                got = []
                for narrow in (False, True):
                    m.narrow = narrow
                    to_h, head = m.lmn_split(cut)
                    with torch.no_grad():
                        got.append(head(to_h(x)))
                ok &= got[0].shape == got[1].shape and bool(torch.allclose(
                    got[0], got[1], rtol=1e-5, atol=1e-6 * max(float(got[0].abs().max()), 1.0),
                    equal_nan=True))
            except Exception:
                ok = False
            if not ok:
                break
    for m in models:
        m.narrow = ok
    return ok


class BatchedModel:
    """m checkpoints of one model evaluated together: ``functional_call`` under ``vmap``.

    The same views as :class:`CapturedModel` (and the same hooks, run inside the vmapped
    function), with a leading checkpoint dim: m checkpoints x N inputs become a few large
    batched matmuls instead of m x layers small calls.

    Parameters
    ----------
    model : CapturedModel
        The model; its parameters give dtype and device (load one checkpoint first).
    state : mapping of str to Tensor
        Every state-dict entry stacked over checkpoints, ``(m, ...)``.
    """

    def __init__(self, model: CapturedModel, state: Mapping[str, Tensor]):
        self.cm = model
        self.state = dict(state)
        self.m = int(next(iter(self.state.values())).shape[0])

    def representations(self, x, taps: Sequence[Tap], *, chunk_rows: int = 65536) -> dict:
        """``label -> (m, N, d)`` for raw inputs ``x`` shared by every checkpoint.

        ``chunk_rows // m`` inputs per call. (Cache-sized calls, as the LC and LMN kernels
        make, measured no faster here and fragmented the heap: the peak memory of an analysis
        grew with the number of checkpoints.)
        """
        cm = self.cm
        x = cm.as_input(x)

        def one(params, xc):
            return cm.forward(xc, taps=taps, need_logits=False, params=params)[1]

        per = max(1, chunk_rows // self.m)
        parts: dict[str, list] = {t.label: [] for t in taps}
        for a in range(0, len(x), per):
            out = vmap(one, in_dims=(0, None))(self.state, x[a:a + per])
            for k, v in out.items():
                parts[k].append(v)
        return {k: torch.cat(v, dim=1) if len(v) > 1 else v[0] for k, v in parts.items()}

    def embed(self, x) -> Tensor:
        """``(m, N, D)``: the first continuous representation at every checkpoint."""
        if self.cm.map.embedding is None:
            x = self.cm.as_input(x)
            return x.reshape(len(x), -1).expand(self.m, -1, -1)
        e = self.cm.map.embedding
        return self.representations(x, [e])[e.label]

    def from_embedding(self, e: Tensor, taps: Sequence[Tap] = (), *, need_logits: bool = True,
                       ) -> tuple[Tensor | None, dict]:
        """Logits ``(m, M, C)`` and taps from per-checkpoint embedded rows ``e`` ``(m, M, D)``
        (``need_logits=False``: None and the taps, the pass stopped once they are read).

        Rows shared by every checkpoint (``e`` expanded from one ``(1, M, D)``, stride 0) go in
        once: the first layer is then one matmul against every checkpoint's weights at once
        (one convolution with every checkpoint's filters) instead of m small ones.
        """
        cm = self.cm

        def one(params, ei):
            logits, cap = cm.from_embedding(ei, taps, params=params, need_logits=need_logits)
            return (logits, cap) if need_logits else cap  # vmap returns tensors only

        if e.ndim >= 1 and e.stride(0) == 0:
            out = vmap(one, in_dims=(0, None))(self.state, e[0])
        else:
            out = vmap(one, in_dims=(0, 0))(self.state, e)
        return out if need_logits else (None, out)

    def preact_fn(self, taps: Sequence[Tap], *, logits: bool = True,
                  ) -> Callable[[Tensor], list[Tensor]]:
        """``fn(e (m, M, D)) -> [pre-activations (m, M, k)..., logits (m, M, C)]``
        (``logits=False``: an empty ``(m, M, 0)`` in their place, as in
        :meth:`CapturedModel.preact_fn`)."""
        def fn(e: Tensor) -> list[Tensor]:
            out, cap = self.from_embedding(e, taps, need_logits=logits)
            return [*(cap[t.label] for t in taps),
                    out if logits else e.new_empty(e.shape[:-1] + (0,))]

        return fn

    def lmn_split(self, cut: Tap | None = None, *, scratch: bool = False,
                  ) -> tuple[Callable, Callable]:
        """``(to_h, head)`` with a leading checkpoint dim on ``h`` and on the logits.

        ``scratch=True`` lets ``head`` overwrite its input (the caller's path points, made
        for the call), which the batched MLP uses to apply its first activation in place.
        """
        cm = self.cm
        cut = cut if cut is not None else cm.map.lmn_from
        if cut is None or cut == cm.map.embedding:
            return self.embed, lambda h: self.from_embedding(h)[0]

        def to_h(x) -> Tensor:
            return self.representations(x, [cut])[cut.label]

        def one(params, hi):
            return cm.forward(cm._dummy(hi.shape[0]), substitute=(cut, hi), params=params)[0]

        return to_h, lambda h: vmap(one, in_dims=(0, 0))(self.state, h)


# ------------------------------------------------------------------------------- resolution
_NAME = re.compile(r"^(?P<module>[^\[\]]+?)(?:\[(?P<call>\d+)\])?$")


@dataclass
class _Call:
    module: str
    call: int
    kind: type
    out_tensor: bool
    out_shape: tuple
    in_shape: tuple | None


def _record_calls(module: nn.Module, x: Tensor) -> tuple[list[_Call], object]:
    """Every module call of one forward pass, in the order the calls finish."""
    events: list[_Call] = []
    counts: Counter = Counter()
    handles = []
    for name, mod in module.named_modules():
        if not name:
            continue

        def hook(m, args, out, name=name):
            k = counts[name]
            counts[name] += 1
            a0 = args[0] if args and isinstance(args[0], Tensor) else None
            events.append(_Call(name, k, type(m), isinstance(out, Tensor),
                                tuple(out.shape) if isinstance(out, Tensor) else (),
                                None if a0 is None else tuple(a0.shape)))

        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as exc:
        raise ValidationError(
            f"model: its forward pass fails on the archive's inputs (shape "
            f"{tuple(x.shape)}, dtype {x.dtype}): {type(exc).__name__}: {exc}"
        ) from None
    finally:
        for h in handles:
            h.remove()
    return events, out


def _module_list(module: nn.Module, limit: int = 40) -> str:
    names = [f"{n} ({type(m).__name__})" for n, m in module.named_modules() if n]
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "(no submodules)"


def _label(name: str, call: int, n_calls: Counter) -> str:
    return f"{name}[{call}]" if n_calls[name] > 1 else name


def _parse(arg: str, entry, module: nn.Module, events: list[_Call], n_calls: Counter,
           *, side: str = "output", position: int | None = None) -> Tap:
    """A user's entry (``"fc1"``, ``"relu[1]"`` or a dict) -> a Tap, checked against the model."""
    if isinstance(entry, Tap):
        return entry
    if isinstance(entry, Mapping):
        d = dict(entry)
        name = d.get("module")
        if not isinstance(name, str):
            raise ValidationError(f"{arg}: each entry needs a 'module' name, got {entry!r}")
        call = int(d.get("call", 0))
        label = d.get("label") or _label(name, call, n_calls)
        side = d.get("side", side)
        position = d.get("position", position)
    elif isinstance(entry, str):
        m = _NAME.match(entry.strip())
        if not m:
            raise ValidationError(f"{arg}: cannot read the module name {entry!r}")
        name, call = m["module"], int(m["call"] or 0)
        label = _label(name, call, n_calls)
    else:
        raise ValidationError(
            f"{arg} must name modules (str), got {type(entry).__name__} {entry!r}")
    mods = dict(module.named_modules())
    if name not in mods or not name:
        raise ValidationError(
            f"{arg}: the model has no module {name!r}; its modules: {_module_list(module)}")
    if n_calls[name] == 0:
        raise ValidationError(f"{arg}: module {name!r} is not called in the model's forward pass")
    if call >= n_calls[name]:
        raise ValidationError(
            f"{arg}: module {name!r} is called {n_calls[name]} time(s) per forward pass, "
            f"so {name}[{call}] does not exist")
    ev = next(e for e in events if e.module == name and e.call == call)
    if side == "output" and not ev.out_tensor:
        raise ValidationError(
            f"{arg}: module {name!r} returns {ev.kind.__name__} output that is not a tensor; "
            "name a module that returns one")
    if side == "input" and ev.in_shape is None:
        raise ValidationError(f"{arg}: module {name!r} takes no tensor as its first input")
    if side not in ("output", "input"):
        raise ValidationError(f"{arg}: side must be 'output' or 'input', got {side!r}")
    return Tap(module=name, label=str(label), call=call, side=side,
               position=None if position is None else int(position))


def resolve_layer_map(
    module: nn.Module,
    x,
    *,
    layers=None,
    preacts=None,
    embedding=None,
    lmn_from=None,
    position: int | None = None,
    defaults: Mapping | None = None,
) -> LayerMap:
    """Find the taps of one analysis in ``module``, from the user's names or the defaults.

    Parameters
    ----------
    module : torch.nn.Module
        The model (with any parameters: only the module structure and shapes are used).
    x : array
        A few raw input rows; one forward pass records which modules run, in which order.
    layers : sequence of str, optional
        Modules whose outputs are the hidden representations. ``"name[k]"`` is the k-th call of
        a module called several times. Default: every call of an activation module
        (``nn.ReLU``, ``nn.GELU``, ``nn.Tanh``, ``nn.SiLU``, ...) in the order they run.
    preacts : sequence of str, optional
        Modules whose *inputs* local complexity counts. Default: the inputs of those
        activation calls.
    embedding : str, optional
        Module whose output is the first continuous representation. Default: none for
        floating inputs (the input itself), the first ``nn.Embedding`` for integer inputs.
    lmn_from : str, optional
        Module output where the linear mapping number cuts the network. Default: the embedding
        for token inputs, the first hidden layer otherwise (Liu, Zhong and Tegmark 2023).
    position : int, optional
        For sequence models: read only this position of every hidden layer of 3 or more dims
        ``(N, S, d)`` and of the logits.
    defaults : mapping, optional
        The same keys, as a model that knows its own layers declares them
        (:meth:`ckptlab.models.ProbeModel.analysis_taps`); the explicit arguments win.

    Returns
    -------
    LayerMap

    Raises
    ------
    ValidationError
        A name that is not a module of the model, a module that does not run, the forward pass
        failing on the archive's inputs.
    """
    defaults = dict(defaults or {})
    xt = torch.as_tensor(np.asarray(x))
    tokens = not (xt.is_floating_point() or xt.is_complex())
    p0 = next((p for p in module.parameters() if p.is_floating_point()), None)
    if tokens:
        xt = xt.long()
    elif p0 is not None:
        xt = xt.to(p0.dtype)
    if p0 is not None:
        xt = xt.to(p0.device)
    events, out = _record_calls(module, xt)
    _logits(out, position)  # the output must be usable before anything else is checked
    n_calls = Counter(e.module for e in events)
    mods = dict(module.named_modules())
    problems: dict[str, str] = {}
    acts = [e for e in events if issubclass(e.kind, _ACTIVATIONS)]

    def taps(arg, given, default_fn, side):
        if given is None and arg in defaults:
            given = defaults[arg]
        if given is None:
            return default_fn()
        if isinstance(given, (str, Mapping, Tap)):
            given = [given]
        out = tuple(_parse(arg, g, module, events, n_calls, side=side,
                           position=position if side == "output" else None) for g in given)
        labels = [t.label for t in out]
        if len(set(labels)) != len(labels):
            raise ValidationError(f"{arg} must not repeat a layer, got {labels}")
        return out

    def default_layers():
        if not acts:
            problems["layers"] = (
                "the model has no activation modules (nn.ReLU, nn.GELU, nn.Tanh, ...) to take as "
                f"hidden layers: pass layers=[...] naming modules; its modules: "
                f"{_module_list(module)}")
            return ()
        return tuple(Tap(e.module, _label(e.module, e.call, n_calls), e.call, "output", position)
                     for e in acts)

    def default_preacts():
        if not acts:
            problems["preacts"] = (
                "the model has no activation modules whose inputs are the pre-activations: pass "
                "preacts=[...] naming them")
            return ()
        return tuple(Tap(e.module, _label(e.module, e.call, n_calls), e.call, "input", None)
                     for e in acts)

    layer_taps = taps("layers", layers, default_layers, "output")
    preact_taps = taps("preacts", preacts, default_preacts, "input")

    def single(arg, given):
        if given is None and arg in defaults:
            given = defaults[arg]
        if given is None:
            return None
        t = _parse(arg, given, module, events, n_calls, side="output", position=None)
        return Tap(t.module, t.label, t.call, "output", None)

    emb = single("embedding", embedding)
    if emb is None and tokens and "embedding" not in defaults:
        first = next((e for e in events if issubclass(e.kind, (nn.Embedding, nn.EmbeddingBag))),
                     None)
        if first is None:
            problems["embedding"] = (
                "the model takes integer inputs (token ids) and has no nn.Embedding: pass "
                "embedding= naming the module whose output is the first continuous "
                "representation")
        else:
            emb = Tap(first.module, _label(first.module, first.call, n_calls), first.call)
    cut = single("lmn_from", lmn_from)
    if cut is None and "lmn_from" not in defaults:
        if tokens:
            cut = emb
            if emb is None:
                problems["lmn_from"] = problems.get("embedding", "no embedding")
        elif layer_taps:
            first = layer_taps[0]
            cut = Tap(first.module, first.label, first.call, "output", None)
        else:
            problems["lmn_from"] = (
                "no hidden layer to cut at: pass lmn_from= naming the module whose output is "
                "the first hidden representation")
    if tokens and emb is None and "embedding" not in problems:
        problems["embedding"] = "no embedding module"

    kinds = {t.label: mods[t.module].__class__.__name__ for t in (*layer_taps, *preact_taps)
             if isinstance(mods[t.module], _ACTIVATIONS)}
    bounds = {t.label: _bounds(mods[t.module]) for t in layer_taps if t.side == "output"}
    pl = {t.label: isinstance(mods[t.module], PIECEWISE_LINEAR) for t in preact_taps}
    return LayerMap(
        layers=layer_taps, preacts=preact_taps, embedding=emb, lmn_from=cut,
        input_kind="tokens" if tokens else "continuous", input_shape=tuple(xt.shape[1:]),
        bounds={k: v for k, v in bounds.items() if v is not None}, kinds=kinds,
        piecewise_linear=pl, problems=problems,
    )


# ------------------------------------------------------------------------------- model source
class ModelSource:
    """How every task gets its own fresh module: a picklable zero-argument factory.

    Parameters
    ----------
    factory : callable
        Returns a new ``nn.Module``. Workers of the ``processes`` and distributed schedulers
        receive it pickled (by reference for an importable function).
    description : str
        What the model is, for messages and the results' attrs.
    defaults : dict, optional
        The taps a ckptlab model declares (:meth:`ProbeModel.analysis_taps`).
    """

    def __init__(self, factory: Callable[[], nn.Module], description: str,
                 defaults: dict | None = None):
        self.factory = factory
        self.description = description
        self.defaults = defaults

    def build(self) -> nn.Module:
        return self.factory()


class _Copy:
    """Factory that returns deep copies of one module instance (each task its own)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self) -> nn.Module:
        return copy.deepcopy(self.module)


def user_source(model) -> ModelSource:
    """A :class:`ModelSource` from what a user passes as ``model=``.

    Raises
    ------
    ValidationError
        ``model`` is neither an ``nn.Module`` nor a callable, the factory raises, or it returns
        something that is not an ``nn.Module``.
    """
    if isinstance(model, nn.Module):
        return ModelSource(_Copy(model), _class_name(model), _own_taps(model))
    if not callable(model):
        raise ValidationError(
            f"model must be a torch.nn.Module or a zero-argument factory returning one, got "
            f"{type(model).__name__}")
    built = call_factory(model)
    return ModelSource(model, _class_name(built), _own_taps(built))


def call_factory(factory) -> nn.Module:
    name = getattr(factory, "__qualname__", None) or repr(factory)
    try:
        built = factory()
    except Exception as exc:
        raise ValidationError(
            f"model: the factory {name} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(built, nn.Module):
        raise ValidationError(
            f"model: the factory {name} must return a torch.nn.Module, got "
            f"{type(built).__name__}")
    return built


def _class_name(model: nn.Module) -> str:
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def _own_taps(model: nn.Module) -> dict | None:
    from ..models import ProbeModel

    return model.analysis_taps() if isinstance(model, ProbeModel) else None


def check_state_fits(module: nn.Module, names_shapes: Mapping[str, tuple], what: str) -> None:
    """Raise a ValidationError naming every difference between a model's state dict and
    the archive's parameters (missing, unexpected, other shape)."""
    own = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in own if k not in names_shapes]
    extra = [k for k in names_shapes if k not in own]
    shapes = [f"{k} (archive {tuple(names_shapes[k])}, model {own[k]})" for k in own
              if k in names_shapes and tuple(names_shapes[k]) != own[k]]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"not in the archive: {', '.join(missing[:10])}")
        if extra:
            parts.append(f"not in the model: {', '.join(extra[:10])}")
        if shapes:
            parts.append(f"other shape: {', '.join(shapes[:10])}")
        raise ValidationError(
            f"model: {what} does not fit the archive's checkpoints; " + "; ".join(parts))
