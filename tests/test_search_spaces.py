"""Every shipped search space: define-by-run, replayable on FixedTrial (what Ray hands back), and
every sampled config builds a model (or is rejected before training with the builder's error)."""

from __future__ import annotations

import json
import textwrap

import optuna
import pytest
import torch

from gsa_search.models import build_model
from gsa_search.trial import TrialConfig
from search_spaces import get_space, list_spaces, register_space

SHIPPED = ["gsa_block_v1", "train_hparams_v1", "gsa_full_v1"]


def _sample(space, seed: int, n: int):
    """``n`` (params, config) pairs drawn by a seeded random sampler (no training)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        config = space(trial)
        out.append((dict(trial.params), config))
        study.tell(trial, 0.0)
    return out


def test_shipped_spaces_are_registered_and_versioned():
    assert set(SHIPPED) <= set(list_spaces())
    assert all(name.rsplit("_", 1)[-1].startswith("v") for name in list_spaces())


@pytest.mark.parametrize("name", SHIPPED)
def test_fixed_trial_replay_rebuilds_the_same_config(name):
    space = get_space(name)
    for params, config in _sample(space, seed=1, n=25):
        assert isinstance(config, TrialConfig)
        replayed = space(optuna.trial.FixedTrial(params))
        assert replayed.key() == config.key()
        # the flat dict survives JSON (what Ray and the results table store)
        assert space(optuna.trial.FixedTrial(json.loads(json.dumps(params)))).key() == config.key()


@pytest.mark.parametrize("name", SHIPPED)
def test_every_sampled_config_builds_and_runs(name):
    space = get_space(name)
    seen = set()
    for params, config in _sample(space, seed=2, n=20):
        model_cfg = config.model.fit_to_data(num_classes=10, in_channels=1, image_size=8)
        model = build_model(model_cfg)
        with torch.no_grad():
            assert model.eval()(torch.randn(2, 1, 8, 8)).shape == (2, 10)
        seen.add(params.get("mixer", "gsa"))
    if name != "train_hparams_v1":
        assert len(seen) >= 3  # the space really varies the mixer


def test_gsa_block_space_is_conditional():
    space = get_space("gsa_block_v1")
    for params, config in _sample(space, seed=3, n=40):
        if params["mixer"] == "conv":
            assert "heads" not in params and "attention_stages" not in params
            assert all(m.block_type == "conv" for m in config.model.mixers)
        if params.get("positional") == "none":
            assert "content" not in params and "rel_span_axial" not in params and "rel_span_2d" not in params
        if params["mixer"] == "explicit":
            assert "heads" not in params and "placement" in params


def test_user_space_loads_from_a_file(tmp_path):
    path = tmp_path / "my_space.py"
    path.write_text(textwrap.dedent("""
        from gsa_search.models import model_config
        from gsa_search.trial import TrialConfig

        def space(trial):
            heads = trial.suggest_categorical("heads", [1, 2])
            return TrialConfig(model=model_config("proxy_gsa_resnet", heads=heads), recipe={"epochs": 1})
    """))
    space = get_space(f"{path}:space")
    config = space(optuna.trial.FixedTrial({"heads": 2}))
    assert config.model.mixers[0].heads == 2 and config.recipe == {"epochs": 1}


def test_space_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown search space 'nope'"):
        get_space("nope")
    with pytest.raises(ValueError, match="does not exist"):
        get_space(str(tmp_path / "missing.py") + ":space")
    (tmp_path / "s.py").write_text("def other(trial):\n    return None\n")
    with pytest.raises(ValueError, match="no function 'space'.*other"):
        get_space(f"{tmp_path / 's.py'}:space")
    with pytest.raises(ValueError, match="already registered"):
        register_space("gsa_block_v1")(lambda trial: None)
