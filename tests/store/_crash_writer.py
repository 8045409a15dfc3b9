"""Child process for the crash-safety test: writes deterministic checkpoints until killed.

Checkpoint k has step k and parameters that are a known function of k, so the parent can
check every committed checkpoint bit for bit. After each flush the child prints how many
checkpoints are committed; the archive must hold at least that many after a SIGKILL.
"""

import sys

import numpy as np
import torch

from ckptlab.store import Recorder


def params(k: int) -> dict:
    g = np.random.default_rng(k)
    return {
        "a.weight": torch.from_numpy(g.standard_normal((16, 8)).astype(np.float32)),
        "a.bias": torch.from_numpy(np.full(16, k, np.float32)),
        "b.weight": torch.from_numpy(g.standard_normal((3, 16))),  # float64
    }


def main(path: str, mode: str) -> None:
    rec = Recorder(path, model_spec={"name": "test"}, mode=mode, queue_size=4)
    start = 0 if rec.last_step is None else rec.last_step + 1
    print("ready", flush=True)
    k = start
    while True:
        rec.save(k, params(k), metrics={"loss": 1.0 / (k + 1)}, state={"k": k, "t": params(k)["a.bias"]})
        if k % 7 == 0:
            rec.flush()
            print("committed", rec.n_committed, flush=True)
        k += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
