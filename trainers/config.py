"""Training configuration: one typed dataclass, a comment per field saying why its default is so."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from ckptlab._checks import check_choice, check_float, check_int
from ckptlab.errors import ValidationError

__all__ = ["TrainConfig", "apply_overrides", "checkpoint_steps", "lr_at", "LR_SCHEDULES"]

LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Everything a run needs, JSON-able, recorded in the archive so a run can be resumed."""

    # --- data -------------------------------------------------------------------------
    task: str = "modular"  # a name from trainers.tasks.TASKS
    task_args: dict = field(default_factory=dict)  # passed to the task builder (p, op, ...)
    label_noise: float = 0.0  # fraction of training labels reassigned (epoch-wise double descent)
    # --- model ------------------------------------------------------------------------
    model: str = "mlp"  # a name from ckptlab.models.MODEL_REGISTRY
    model_args: dict = field(default_factory=dict)  # input/output sizes are filled from the task
    # --- optimisation -----------------------------------------------------------------
    optimizer: str = "adamw"  # "adamw" (every setting in the spec) or "sgd"
    lr: float = 1e-3  # the grokking papers' AdamW learning rate
    # Linear warm-up: update s uses lr * min(1, (s + 1) / warmup_steps). Power et al. (and the
    # PyTorch re-implementations of their set-up) warm up for 10 updates; Nanda et al. and the
    # two-phase paper state none, hence 0 (off).
    warmup_steps: int = 0
    # After warm-up: "constant" (every grokking paper we reproduce) or "cosine" (half a cosine
    # from lr down to 0 at the last update), for users who want an annealed run; no preset uses it.
    lr_schedule: str = "constant"
    weight_decay: float = 0.0  # the two-phase paper uses none; grokking presets set their own
    betas: tuple = (0.9, 0.98)  # beta2 0.98 as in Power et al. / Nanda et al. grokking runs
    momentum: float = 0.0  # SGD only
    loss: str = "cross_entropy"  # or "mse" against one-hot targets (Omnigrok)
    batch_size: int = 0  # 0 = full batch: deterministic, and the usual grokking set-up
    steps: int = 10_000  # optimizer updates; checkpoint `steps` is the final model
    dtype: str = "float32"  # "float64" for numerically delicate analyses
    device: str = "cpu"  # "cuda" for the GPU presets
    threads: int = 1  # torch CPU threads; small models gain nothing from more, and suffer on shared cores
    seed: int = 0  # model init, data split and minibatch order all derive from it
    # --- checkpoints ------------------------------------------------------------------
    ckpt_per_decade: int = 40  # log-spaced: transitions unfold over decades of steps
    ckpt_dense_until: int = 20  # every step up to here (the first steps move the most)
    ckpt_every: int = 0  # also every N steps (0 = off); merged with the log schedule
    # --- interventions that aim to shorten the second phase (README, "Shortening the second
    # phase"); each is off by default, and off leaves training bit-identical to a run without it
    # Grokfast-EMA (Lee et al. 2024, arXiv 2405.20233): between backward and the step, keep
    # g_ema <- alpha g_ema + (1 - alpha) g (started from the first gradient) and step with
    # g + lambda g_ema, amplifying the slow component of the gradient. alpha 0.98 is the
    # reference code's default; lambda 0 turns it off (the reference code's default is 2.0).
    grokfast_alpha: float = 0.98
    grokfast_lambda: float = 0.0
    # Omnigrok (Liu et al. 2022): after every step rescale all parameters so their total L2
    # norm stays fixed: "init" (the norm at initialisation) or a number (the initial
    # parameters are rescaled onto it before step 0). None (off): weight decay alone moves it.
    norm_constraint: float | str | None = None
    # The nonlinear information bottleneck (Kolchinsky, Tracey and Wolpert 2019) as an explicit
    # compression term: loss + nib_beta x the Kolchinsky-Tracey upper bound on I(X;T), in
    # bits, of the module nib_layer's output on the minibatch, with noise sigma =
    # nib_resolution x the layer's spread (mean 10th-neighbour distance on the batch, as the
    # analysis's kde_rel; held constant in the gradient: trainers.interventions says why).
    # beta 0 is off: standard training never optimises I(X;T) directly, which is the claim
    # this tests. nib_layer None is the model's first hidden layer ("acts.0" for the MLP,
    # "blocks.0.act" for the transformer); resolution 1 is kde_rel's middle resolution.
    nib_beta: float = 0.0
    nib_layer: str | None = None
    nib_resolution: float = 1.0

    def validate(self) -> TrainConfig:
        """Check every field; return self. Raises ValidationError naming the field."""
        check_float("label_noise", self.label_noise, min=0.0, max=1.0, max_inclusive=False)
        check_choice("optimizer", self.optimizer, ("adamw", "sgd"))
        check_float("lr", self.lr, min=0.0, min_inclusive=False)
        check_int("warmup_steps", self.warmup_steps, min=0)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_float("weight_decay", self.weight_decay, min=0.0)
        if (
            not isinstance(self.betas, (list, tuple))
            or len(self.betas) != 2
            or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)
        ):
            raise ValidationError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = tuple(float(b) for b in self.betas)
        check_float("momentum", self.momentum, min=0.0, max=1.0, max_inclusive=False)
        check_choice("loss", self.loss, ("cross_entropy", "mse"))
        check_int("batch_size", self.batch_size, min=0)
        check_int("steps", self.steps, min=1)
        check_choice("dtype", self.dtype, ("float32", "float64"))
        check_choice("device", self.device, ("cpu", "cuda"))
        check_int("seed", self.seed, min=0)
        check_int("threads", self.threads, min=1)
        check_int("ckpt_per_decade", self.ckpt_per_decade, min=0)
        check_int("ckpt_dense_until", self.ckpt_dense_until, min=0)
        check_int("ckpt_every", self.ckpt_every, min=0)
        check_float("grokfast_alpha", self.grokfast_alpha, min=0.0, max=1.0, max_inclusive=False)
        check_float("grokfast_lambda", self.grokfast_lambda, min=0.0)
        self.norm_constraint = _check_norm_constraint(self.norm_constraint)
        check_float("nib_beta", self.nib_beta, min=0.0)
        if self.nib_layer is not None and (not isinstance(self.nib_layer, str)
                                           or not self.nib_layer):
            raise ValidationError(f"nib_layer must be None or a module name of the model "
                                  f"(e.g. 'acts.0'), got {self.nib_layer!r}")
        check_float("nib_resolution", self.nib_resolution, min=0.0, min_inclusive=False)
        if self.nib_beta and self.batch_size == 1:
            raise ValidationError("batch_size must be 0 or >= 2 when nib_beta > 0 (the I(X;T) "
                                  "bound compares the rows of a batch), got 1")
        for name in ("task_args", "model_args"):
            if not isinstance(getattr(self, name), dict):
                raise ValidationError(f"{name} must be a dict, got {getattr(self, name)!r}")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValidationError(
                f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
            )
        return cls(**d).validate()


def _check_norm_constraint(value):
    """None, "init", or a finite number > 0 (returned as float)."""
    if value is None or value == "init":
        return value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and math.isfinite(value) and value > 0:
        return float(value)
    raise ValidationError(f"norm_constraint must be None, 'init' or a finite number > 0, got "
                          f"{value!r}")


def lr_at(cfg: TrainConfig, step: int) -> float:
    """The learning rate of the update taken at ``step`` (the one that makes step ``step + 1``).

    A pure function of the step, so a resumed run needs no scheduler state to stay
    bit-identical. Linear warm-up over ``cfg.warmup_steps`` updates, then ``cfg.lr_schedule``:
    constant, or half a cosine from ``cfg.lr`` at the end of warm-up to 0 at ``cfg.steps``.
    With the defaults (no warm-up, constant) it is exactly ``cfg.lr``.
    """
    w = cfg.warmup_steps
    if w and step < w:
        return cfg.lr * (step + 1) / w
    if cfg.lr_schedule == "cosine" and cfg.steps > w:
        frac = min(1.0, (step - w) / (cfg.steps - w))
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    return cfg.lr


def checkpoint_steps(steps: int, *, per_decade: int, dense_until: int, every: int) -> list[int]:
    """The steps at which to checkpoint: always 0 and ``steps``, plus the three schedules.

    ``per_decade`` points per decade on a log axis (rounded to integers and deduplicated),
    every step up to ``dense_until``, and every ``every`` steps.
    """
    out = {0, steps}
    out.update(range(0, min(dense_until, steps) + 1))
    if every:
        out.update(range(0, steps + 1, every))
    if per_decade and steps >= 1:
        n = int(math.ceil(math.log10(steps) * per_decade)) + 1
        out.update(int(round(10 ** (i / per_decade))) for i in range(n))
    return sorted(s for s in out if 0 <= s <= steps)


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg: TrainConfig, overrides) -> TrainConfig:
    """Apply ``key=value`` strings; values are JSON (``[64,64]``, ``true``, ``1e-3``) or text.

    Dotted keys reach into dict fields: ``model_args.widths=[128]``, ``task_args.p=59``.
    """
    d = cfg.to_dict()
    names = set(d)
    for item in overrides:
        if "=" not in item:
            raise ValidationError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        value = _parse_value(text)
        head, _, sub = key.partition(".")
        if head not in names:
            raise ValidationError(
                f"--set: unknown config key {head!r}; known: {', '.join(sorted(names))}"
            )
        if sub:
            if not isinstance(d[head], dict):
                raise ValidationError(f"--set: {head!r} is not a dict, cannot set {key!r}")
            d[head] = {**d[head], sub: value}
        else:
            d[head] = value
    return TrainConfig.from_dict(d)
