"""The presets' settings: what the README and the preset comments say they are."""

from click.testing import CliRunner

from cli.main import cli
from trainers import PRESETS, get_preset
from trainers.loop import build_task, model_spec_for


def test_presets_lists_quick_transformer():
    res = CliRunner().invoke(cli, ["presets"])
    assert res.exit_code == 0
    lines = {line.split()[0]: line for line in res.output.splitlines() if line.strip()}
    assert set(lines) == set(PRESETS)
    assert "transformer" in lines["quick-transformer"]


def test_quick_transformer_is_the_paper_family_with_relu():
    cfg = get_preset("quick-transformer").validate()
    task = build_task(cfg)
    spec = model_spec_for(cfg, task)
    assert spec["name"] == "transformer" and spec["kwargs"]["activation"] == "relu"
    assert spec["kwargs"]["n_layers"] == 1 and spec["kwargs"]["d_model"] == 64
    assert len(task.x_train) + len(task.x_test) == 47 * 47 and cfg.device == "cpu"
    assert cfg.batch_size == 0 and cfg.weight_decay == 1.0


def test_paper_mod96_reading():
    cfg = get_preset("paper-mod96")
    # the paper's own settings
    assert (cfg.lr, cfg.weight_decay, cfg.steps) == (1e-3, 0.0, 1_000_000)
    assert cfg.model_args == {"n_layers": 2, "n_heads": 4, "d_model": 128, "d_mlp": 512,
                              "activation": "gelu"}
    # ours: the Fermat table (9120 equations, 40% = 3648 for training), batch 512, no warm-up
    task = build_task(cfg)
    assert task.params["division"] == "fermat"
    assert (len(task.x_train), len(task.x_test)) == (3648, 5472)
    assert (cfg.batch_size, cfg.warmup_steps, cfg.lr_schedule) == (512, 0, "constant")
