"""A deterministic writer for crash tests and ``make stress``: a small MLP, a checkpoint every step.

``python tests/store/_mlp_writer.py PATH [--steps N] [--resume] [--hold]`` trains an 8-32-32-4
tanh MLP with Adam on a fixed random task, full batch, one thread (bit-identical from run to
run on one machine), saving every step with its optimizer state through the Recorder with
``commit_interval=0``, so commits follow each other and a kill lands inside a write most of the
time. It prints ``ready`` once the Recorder holds the archive and ``done`` at the end;
``--hold`` then waits to be killed (for lock tests).

:func:`train` is the same in-process: :func:`train` with ``resume=True`` continues a killed
run from its newest resume state, which must end identical to an uninterrupted run.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from ckptlab.store import Recorder, Run
from ckptlab.store import format as fmt

SPEC = {"name": "mlp-writer", "kwargs": {"widths": [8, 32, 32, 4]}}


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, :4].argmax(dim=1)).long()
    return x, y


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
        torch.nn.Linear(32, 4),
    )


def train(path, *, steps: int = 300, resume: bool = False, on_ready=None) -> int:
    """Train to ``steps`` checkpoints (steps 0..steps-1); returns the first step trained here."""
    torch.set_num_threads(1)
    x, y = make_data()
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    start, mode, truncate = 0, "w-", None
    if resume and fmt.exists(path):
        run = Run(path)
        state = run.training_state() if run.n else None
        if state is not None:
            k = int(state["step"])
            i = int(np.searchsorted(run.steps, k))
            model.load_state_dict(run.state_dict(i))
            opt.load_state_dict(state["optimizer"])
            start, mode, truncate = k + 1, "a", k
            # the update from checkpoint k to k + 1 was not recorded: redo it
            _update(model, opt, x, y)
        else:
            mode = "w"
    rec = Recorder(path, model_spec=SPEC, data={"x_train": x, "y_train": y}, mode=mode,
                   truncate_after=truncate, commit_interval=0.0, queue_size=4)
    with rec:
        if on_ready is not None:
            on_ready()
        for step in range(start, steps):
            with torch.no_grad():
                loss = torch.nn.functional.cross_entropy(model(x), y).item()
            rec.save(step, model, metrics={"loss": loss, "lr": 1e-2}, optimizer=opt,
                     state={"step": step}, keep_state=True)
            if step + 1 < steps:
                _update(model, opt, x, y)
    return start


def _update(model, opt, x, y) -> None:
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--hold", action="store_true")
    a = ap.parse_args(argv)
    train(a.path, steps=a.steps, resume=a.resume, on_ready=lambda: print("ready", flush=True))
    print("done", flush=True)
    if a.hold:
        rec = Recorder(a.path, mode="a")  # hold the lock until killed
        print("holding", rec.n_committed, flush=True)
        while True:
            time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1:])
