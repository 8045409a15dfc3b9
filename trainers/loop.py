"""The training loop: one readable function, small named helpers (nanoGPT style).

``train(cfg, out)`` builds the task and the model, then runs the optimizer for ``cfg.steps``
updates, saving a checkpoint (parameters, train/test loss and accuracy, learning rate, wall
time, optimizer and RNG state) at every step of the schedule through :class:`ckptlab.Recorder`.
Step ``s`` is the model after ``s`` updates: step 0 is the initialisation. The interventions of
:mod:`trainers.interventions` (Grokfast, a norm constraint, a compression term) enter the loop
at the three places marked, only when the config turns them on.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ckptlab._progress import progress_bar
from ckptlab.errors import CkptlabError, TrainingDivergedError, ValidationError
from ckptlab.models import build_model
from ckptlab.store import Recorder, Run

from .config import TrainConfig, checkpoint_steps, lr_at
from .interventions import (GrokfastEMA, NIBPenalty, constrain_norm_, resolve_nib_layer,
                            total_norm)
from .tasks import TaskData, make_task

__all__ = ["train", "TrainResult", "build_task", "model_spec_for"]


@dataclass
class TrainResult:
    """What a finished run reports."""

    path: str
    steps: int
    checkpoints: int
    seconds: float
    final: dict  # the metrics at the last checkpoint


def build_task(cfg: TrainConfig) -> TaskData:
    """The task of ``cfg`` (label noise applied), built from its name and arguments."""
    kwargs = dict(cfg.task_args)
    if cfg.label_noise:
        kwargs["label_noise"] = {"fraction": cfg.label_noise, "seed": cfg.seed}
    kwargs.setdefault("seed", cfg.seed)
    return make_task(cfg.task, **kwargs)


def model_spec_for(cfg: TrainConfig, task: TaskData) -> dict:
    """The model spec: the preset's arguments plus the sizes the task dictates."""
    kw = dict(cfg.model_args)
    kw.setdefault("n_classes", task.n_classes)
    if task.input_kind == "tokens":
        kw.setdefault("vocab_size", task.vocab_size)
        kw.setdefault("n_tokens", int(task.x_train.shape[1]))
    elif cfg.model == "transformer":
        raise ValidationError(
            f"model 'transformer' needs a token task; task {cfg.task!r} has continuous inputs"
        )
    else:
        kw.setdefault("in_dim", int(np.prod(task.x_train.shape[1:])))
    return {"name": cfg.model, "kwargs": kw}


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValidationError("device 'cuda' was asked for but torch sees no CUDA device")
    return torch.device(cfg.device)


def _tensors(task: TaskData, dtype: torch.dtype, device: torch.device):
    def x(a):
        t = torch.from_numpy(np.asarray(a))
        return t.to(device) if task.input_kind == "tokens" else t.to(device, dtype)

    def y(a):
        return torch.from_numpy(np.asarray(a)).long().to(device)

    return x(task.x_train), y(task.y_train), x(task.x_test), y(task.y_test)


def _loss(cfg: TrainConfig, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if cfg.loss == "mse":  # Omnigrok: MSE against one-hot targets, mean over all entries
        return F.mse_loss(logits, F.one_hot(y, logits.shape[1]).to(logits.dtype))
    return F.cross_entropy(logits, y)


@torch.no_grad()
def evaluate(cfg, model, x, y, *, chunk: int = 65536) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on (x, y), in chunks to bound memory."""
    total_loss, correct = 0.0, 0
    for i in range(0, len(x), chunk):
        logits = model(x[i : i + chunk])
        yy = y[i : i + chunk]
        total_loss += _loss(cfg, logits, yy).item() * len(yy)
        correct += (logits.argmax(1) == yy).sum().item()
    return total_loss / len(x), correct / len(x)


def _optimizer(cfg: TrainConfig, model) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas
    )


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (the schedule is :func:`lr_at`, a pure
    function of the step, so resuming needs no scheduler state)."""
    for group in opt.param_groups:
        group["lr"] = lr


def _norm_target(cfg: TrainConfig, model) -> float | None:
    """The total parameter norm the constraint keeps: the initial one, a given one, or None."""
    if cfg.norm_constraint is None:
        return None
    if cfg.norm_constraint == "init":
        return float(total_norm(model.parameters()))
    return float(cfg.norm_constraint)


def _intervention_metrics(model, grokfast, nib, norm_target) -> dict:
    """What the interventions that are on did, for the checkpoint's metrics (none when off):
    the filtered and raw gradient norms and the penalty of the update that led here, and the
    total parameter norm."""
    out = {}
    if grokfast is not None:
        out.update(grokfast.metrics())
    if nib is not None:
        out.update(nib.metrics())
    if norm_target is not None:
        out["param_norm"] = float(total_norm(model.parameters()))
    return out


def get_batch(cfg, x, y, gen: torch.Generator):
    """Full batch, or a minibatch drawn with the run's own generator (resumable)."""
    if not cfg.batch_size or cfg.batch_size >= len(x):
        return x, y
    idx = torch.randint(len(x), (cfg.batch_size,), generator=gen).to(x.device)
    return x[idx], y[idx]


def train(
    cfg: TrainConfig,
    out,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``cfg`` and record every checkpoint of the schedule to the archive ``out``.

    Parameters
    ----------
    cfg : TrainConfig
        The run's configuration (validated here).
    out : str or path-like
        Archive path or URL.
    resume : bool, default False
        Continue the interrupted run at ``out`` from its newest checkpoint. The configuration
        is read from the archive (``cfg`` is ignored). On CPU the resumed run ends
        bit-identical to an uninterrupted one.
    overwrite : bool, default False
        Replace an existing archive at ``out``.
    progress : bool, optional
        Show a progress bar; by default only when stderr is a terminal.

    Raises
    ------
    ArchiveExistsError
        ``out`` exists and neither ``resume`` nor ``overwrite`` is set.
    TrainingDivergedError
        The training loss became NaN or infinite; every checkpoint before is kept.
    """
    if resume and overwrite:
        raise ValidationError("resume and overwrite exclude each other: choose one")
    start_step, at, run, state = 0, 0, None, None
    if resume:
        run = Run(out)
        cfg = TrainConfig.from_dict(run.config)
        state = run.training_state()
        if state is None or run.n == 0:
            raise CkptlabError(f"{out!s} holds no resumable state: it cannot be resumed")
        # the state is snapshot at most once per second, so it may be a few checkpoints
        # older than the newest one: resume from it and regenerate those (bit-identical)
        start_step = int(state["step"])
        at = int(np.searchsorted(run.steps, start_step))  # its checkpoint's position
        if at >= run.n or int(run.steps[at]) != start_step:
            raise CkptlabError(
                f"{out!s}: training state is for step {start_step}, which is not a checkpoint"
            )
    cfg.validate()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, out, resume=resume, overwrite=overwrite, progress=progress,
                      start_step=start_step, at=at, run=run, state=state)
    finally:
        torch.set_num_threads(threads_before)


def _train(cfg, out, *, resume, overwrite, progress, start_step, at, run, state) -> TrainResult:
    """The loop of :func:`train`; when resuming, ``at`` is the position of ``start_step``."""
    device = _device(cfg)
    dtype = getattr(torch, cfg.dtype)
    task = build_task(cfg)
    spec = model_spec_for(cfg, task)
    model = build_model(spec, seed=cfg.seed).to(device=device, dtype=dtype)
    # the interventions (each None when off); a bad nib_layer fails here, before any archive
    grokfast = (GrokfastEMA(model, alpha=cfg.grokfast_alpha, lamb=cfg.grokfast_lambda)
                if cfg.grokfast_lambda else None)
    if cfg.nib_layer is not None:
        resolve_nib_layer(model, cfg.nib_layer)  # checked even when the term is off
    nib = (NIBPenalty(model, cfg.nib_layer, beta=cfg.nib_beta, resolution=cfg.nib_resolution)
           if cfg.nib_beta else None)
    norm_target = _norm_target(cfg, model)  # from the initialisation, so also when resuming
    opt = _optimizer(cfg, model)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    if resume:
        model.load_state_dict({k: v.to(device) for k, v in run.state_dict(at).items()})
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        if grokfast is not None:
            grokfast.load_state_dict(state.get("grokfast_ema"))
    elif isinstance(cfg.norm_constraint, float):  # a given norm holds from step 0 on
        constrain_norm_(model.parameters(), norm_target)
    x_tr, y_tr, x_te, y_te = _tensors(task, dtype, device)
    schedule = checkpoint_steps(
        cfg.steps,
        per_decade=cfg.ckpt_per_decade,
        dense_until=cfg.ckpt_dense_until,
        every=cfg.ckpt_every,
    )
    schedule = [s for s in schedule if s > start_step or (s == 0 and not resume)]
    data = {
        "x_train": task.x_train,
        "y_train": task.y_train,
        "x_test": task.x_test,
        "y_test": task.y_test,
    }
    rec = Recorder(
        out,
        model_spec=spec,
        data=None if resume else data,
        config=cfg.to_dict(),
        task={"name": task.name, "params": task.params, "n_classes": task.n_classes,
              "input_kind": task.input_kind, "vocab_size": task.vocab_size},
        seed=cfg.seed,
        mode="a" if resume else ("w" if overwrite else "w-"),
        truncate_after=start_step if resume else None,
    )
    bar = progress_bar(cfg.steps, enabled=progress, desc="train", unit="step")
    bar.update(start_step)
    t0 = time.perf_counter()
    wall0 = 0.0
    if resume:
        wall0 = float(run.metrics().get("wall_time", np.zeros(run.n))[at])
    metrics: dict = {}
    next_ckpt = 0
    try:
        model.train()
        for step in range(start_step, cfg.steps + 1):
            if next_ckpt < len(schedule) and step == schedule[next_ckpt]:
                next_ckpt += 1
                tr_loss, tr_acc = evaluate(cfg, model, x_tr, y_tr)
                te_loss, te_acc = evaluate(cfg, model, x_te, y_te)
                metrics = {
                    "train_loss": tr_loss,
                    "train_acc": tr_acc,
                    "test_loss": te_loss,
                    "test_acc": te_acc,
                    "lr": lr_at(cfg, step),  # of the next update (warm-up, schedule)
                    "wall_time": wall0 + time.perf_counter() - t0,
                    **_intervention_metrics(model, grokfast, nib, norm_target),
                }
                if not math.isfinite(tr_loss):
                    raise TrainingDivergedError(
                        f"training diverged at step {step}: train loss is {tr_loss}; the "
                        f"checkpoints before it are kept in {out!s}"
                    )
                state = {"step": step, "generator": gen.get_state()}
                if grokfast is not None:  # its moving average, so a resume is bit-identical
                    state["grokfast_ema"] = grokfast.state_dict()
                rec.save(
                    step,
                    model,
                    metrics=metrics,
                    optimizer=opt,
                    state=state,
                    keep_state=True if step == cfg.steps else None,
                )
                bar.update(step - bar.n)
                bar.set_postfix_str(f"train acc {metrics['train_acc']:.3f}, "
                                    f"test acc {metrics['test_acc']:.3f}", refresh=False)
            if step == cfg.steps:
                break
            xb, yb = get_batch(cfg, x_tr, y_tr, gen)
            with nib.capture() if nib is not None else nullcontext():
                logits = model(xb)
            loss = _loss(cfg, logits, yb)
            if nib is not None:  # compression term: beta x an upper bound on I(X;T) of the layer
                loss = loss + nib.penalty()
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"training diverged at step {step}: train loss is {loss.item()}; the "
                    f"checkpoints before it are kept in {out!s}"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grokfast is not None:  # step with g + lambda * EMA(g)
                grokfast.filter_()
            set_lr(opt, lr_at(cfg, step))
            opt.step()
            if norm_target is not None:  # Omnigrok: back to the fixed total norm
                constrain_norm_(model.parameters(), norm_target)
    finally:
        bar.close()
        rec.close()
    return TrainResult(
        path=str(out),
        steps=cfg.steps,
        checkpoints=rec.n_committed,
        seconds=time.perf_counter() - t0,
        final=metrics,
    )
