from pathlib import Path

import pytest

from rvepfl.config import Config, apply_overrides, config_hash, dumps_config, load_config
from rvepfl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_quick_toml_is_the_default_config():
    assert load_config(ROOT / "configs" / "quick.toml") == Config()


def test_paper_toml_has_the_published_hyperparameters():
    cfg = load_config(ROOT / "configs" / "paper.toml")
    assert (cfg.data.num_clients, cfg.train.rounds, cfg.train.local_epochs, cfg.train.batch_size) == (150, 100, 10, 256)
    assert (cfg.train.lr, cfg.train.adam_eps, cfg.train.lr_decay) == (1e-3, 1e-7, 1e-3)
    assert cfg.model.kl_weight == 0.0 and cfg.model.sample_at_eval


def test_round_trip_through_toml(tmp_path):
    cfg = apply_overrides(Config(), {"train.rounds": 3, "data.partition": "dirichlet", "seed": 7})
    path = tmp_path / "c.toml"
    path.write_text(dumps_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "text, match",
    [
        ("[train]\nlcoal_epochs = 2\n", r"Unknown config key `train.lcoal_epochs`: did you mean `local_epochs`"),
        ("bogus = 1\n", r"Unknown config key `bogus`"),
        ("[train]\nrounds = 'ten'\n", r"Expected `train.rounds` to be an integer, got 'ten'"),
        ("[train]\nrounds = 0\n", r"Expected `train.rounds` >= 1, got 0"),
        ("[data]\ndataset = 'svhn'\n",
         r"Expected `data.dataset` to be one of 'mnist', 'fmnist', 'cifar10', got 'svhn'"),
        ("[data]\nnum_clients = -3\n", r"Expected `data.num_clients` >= 1, got -3"),
        ("[data]\ntest_fraction = 1.5\n", r"Expected `data.test_fraction` in \(0, 1\)"),
        ("[model]\nsample_at_eval = 1\n", r"Expected `model.sample_at_eval` to be true or false"),
        ("method = 'nope'\n", r"Unknown method 'nope': choose one of rvepfl, fedavg"),
        ("data = 3\n", r"Expected `data` to be a table"),
        ("[train\nrounds = 3\n", r"Malformed TOML"),
    ],
)
def test_bad_config_files_are_rejected_with_one_line(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config("/nonexistent/x.toml")


def test_overrides_are_validated():
    with pytest.raises(ConfigError, match="train.batch_size"):
        apply_overrides(Config(), {"train.batch_size": 0})
    with pytest.raises(ConfigError, match="Unknown config key `train.nope`"):
        apply_overrides(Config(), {"train.nope": 1})


def test_hash_ignores_speed_settings_but_not_experiment_settings():
    base = Config()
    assert config_hash(base) == config_hash(apply_overrides(base, {"threads": 1, "device": "cpu", "name": "x"}))
    assert config_hash(base) != config_hash(apply_overrides(base, {"seed": 1}))
    assert config_hash(base) != config_hash(apply_overrides(base, {"train.lr": 2e-3}))
