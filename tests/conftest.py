import pytest

from trainers import TrainConfig, train


def _train(path, **kw):
    cfg = TrainConfig(**kw)
    train(cfg, path)
    return path


@pytest.fixture(scope="session")
def tanh_run(tmp_path_factory):
    """12-bit task, tanh MLP (bounded layers), 13 checkpoints."""
    p = tmp_path_factory.mktemp("runs") / "tanh.zarr"
    return _train(p, task="ib12", model_args={"widths": [6, 4], "activation": "tanh"},
                  batch_size=256, steps=40, lr=0.01, ckpt_per_decade=4, ckpt_dense_until=3)


@pytest.fixture(scope="session")
def relu_run(tmp_path_factory):
    """Digits, ReLU MLP (unbounded layers), ~14 checkpoints."""
    p = tmp_path_factory.mktemp("runs") / "relu.zarr"
    return _train(p, task="digits", task_args={"n_train": 120}, model_args={"widths": [12, 8]},
                  steps=60, lr=0.01, ckpt_per_decade=5, ckpt_dense_until=3)


@pytest.fixture(scope="session")
def token_run(tmp_path_factory):
    """Addition mod 7, token MLP (LC in embedding space)."""
    p = tmp_path_factory.mktemp("runs") / "tokens.zarr"
    return _train(p, task="modular", task_args={"p": 7, "train_fraction": 0.6},
                  model_args={"widths": [16], "embed_dim": 4}, steps=30, lr=0.01,
                  ckpt_per_decade=4, ckpt_dense_until=2)
