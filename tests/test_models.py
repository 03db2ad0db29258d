"""Backbone and preset tests, parametrised over the backbone registry, the proxy presets and one
full-size preset."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from gsa_search.blocks import ConvConfig, GSAConfig
from gsa_search.models import (
    DEPTHS,
    BackboneConfig,
    GSAResNet,
    ModelConfig,
    backbone_config_class,
    build_model,
    create_model,
    list_backbones,
    list_models,
    model_config,
    model_config_from_dict,
    register_backbone,
    stage_feature_sizes,
)

PROXIES = list_models("proxy_*")
BACKBONES = list_backbones()


def test_required_presets_exist():
    names = set(list_models())
    for depth in (26, 38, 50):
        assert {f"resnet{depth}", f"gsa_resnet{depth}"} <= names
    assert {"explicit_resnet26", "explicit_resnet50"} <= names
    assert len(PROXIES) >= 5
    assert list_models("proxy_*") == sorted(n for n in names if n.startswith("proxy_"))


def _check_forward_backward(model, image_size, num_classes, batch=2):
    torch.manual_seed(0)
    x = torch.randn(batch, 3, image_size, image_size)
    out = model(x)
    assert out.shape == (batch, num_classes)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"


@pytest.mark.parametrize("name", PROXIES)
def test_proxy_forward_backward(name):
    # zero-initialised residual BNs would block gradients into the branches at step 0 by design
    model = create_model(name, num_classes=10, zero_init_residual=False)
    _check_forward_backward(model, 32, 10)


@pytest.mark.parametrize("name", PROXIES)
def test_every_parameter_learns_once_residual_branches_open(name):
    """After one optimiser step the zero-init BN weights are non-zero and every parameter is reached."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, image_size=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, f"parameters with no gradient after the branches opened: {dead}"


@pytest.mark.parametrize("name", PROXIES)
def test_proxy_eval_mode_is_deterministic(name):
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.slow
def test_full_size_gsa_resnet26_forward_backward():
    model = create_model("gsa_resnet26", num_classes=100, image_size=64, zero_init_residual=False)
    _check_forward_backward(model, 64, 100)


def test_resnet50_matches_the_torchvision_parameter_count():
    torchvision = pytest.importorskip("torchvision")
    ours = sum(p.numel() for p in create_model("resnet50").parameters())
    theirs = sum(p.numel() for p in torchvision.models.resnet50().parameters())
    assert ours == theirs == 25_557_032


def test_gsa_resnet50_has_about_the_papers_parameter_count():
    # Shen et al. report 18.1M for GSA-ResNet-50 against 25.6M for ResNet-50
    params = sum(p.numel() for p in create_model("gsa_resnet50").parameters())
    assert 17.5e6 < params < 18.7e6


@pytest.mark.parametrize("depth, blocks", sorted(DEPTHS.items()))
def test_depth_presets(depth, blocks):
    assert model_config(f"resnet{depth}").stage_blocks == blocks
    assert model_config(f"gsa_resnet{depth}").stage_blocks == blocks


@pytest.mark.parametrize("name", PROXIES + ["gsa_resnet50"])
def test_config_round_trips_through_a_json_dict(name):
    cfg = model_config(name)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert ModelConfig.from_dict(data) == cfg
    assert build_model(data).cfg == cfg


def test_mixers_get_their_stage_resolution():
    model = create_model("gsa_resnet26", image_size=224)
    assert stage_feature_sizes(model.cfg) == [(56, 56), (56, 28), (28, 14), (14, 7)]
    first_block_sizes = [stage[0].mixer.cfg.feature_size for stage in model.stages]
    second_block_sizes = [stage[1].mixer.cfg.feature_size for stage in model.stages[1:3]]
    assert first_block_sizes == [56, 56, 28, 14]
    assert second_block_sizes == [28, 14]
    assert model.stages[0][0].mixer.positional.rel_col.shape[1] == 2 * 55 + 1


def test_per_stage_mixers_and_overrides():
    cfg = model_config("proxy_gsa_late", heads=2, num_classes=3)
    assert [m.block_type for m in cfg.mixers] == ["conv", "conv", "gsa", "gsa"]
    assert [getattr(m, "heads", None) for m in cfg.mixers] == [None, None, 2, 2]
    assert cfg.num_classes == 3
    custom = ModelConfig(stage_blocks=(1, 1), mixers=(ConvConfig(), GSAConfig(heads=2)), stem="cifar",
                         base_width=8, num_classes=4, image_size=16)
    assert build_model(custom)(torch.randn(1, 3, 16, 16)).shape == (1, 4)


def test_width_multiplier_scales_channels():
    narrow = create_model("proxy_resnet", width_multiplier=0.5)
    assert narrow.cfg.stage_widths() == [8, 16, 32, 64]
    assert narrow.num_features == 64 * 4


def test_imagenet_stem_and_odd_image_size():
    model = create_model("proxy_gsa_resnet", stem="imagenet", image_size=45)
    assert model(torch.randn(1, 3, 45, 45)).shape == (1, 10)


def test_input_larger_than_the_model_was_built_for_is_rejected():
    model = create_model("proxy_gsa_resnet", image_size=16)
    with pytest.raises(ValueError, match="larger than the 16x16 its global span was built for"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: create_model("resnet51"), r"unknown model preset 'resnet51'; known: .*resnet50"),
        (lambda: create_model("proxy_resnet", heads=4), r"unknown override 'heads'; allowed: .*num_classes"),
        (lambda: ModelConfig(stage_blocks=()), "model.stage_blocks must be a non-empty sequence"),
        (lambda: ModelConfig(stage_blocks=(1, 0)), r"model\.stage_blocks\[\] must be a positive integer"),
        (lambda: ModelConfig(stage_blocks=(1, 1), mixers=("conv",) * 3), "one per stage"),
        (lambda: ModelConfig(stem="vit"), r"model\.stem must be one of 'cifar', 'imagenet'"),
        (lambda: ModelConfig(num_classes=1), r"model\.num_classes must be an integer >= 2"),
        (lambda: ModelConfig(width_multiplier=0), r"model\.width_multiplier must be a positive finite number"),
        (lambda: ModelConfig(width_multiplier=0.001), "leaves no channels"),
        (lambda: ModelConfig.from_dict({"depth": 50}), r"unknown field\(s\) depth"),
        (lambda: ModelConfig(mixers="transformer"), r"unknown block 'transformer'"),
    ],
)
def test_invalid_model_configs(build, match):
    with pytest.raises(ValueError, match=match):
        build()


# --- the backbone registry ---------------------------------------------------------------------------


def test_resnet_is_a_registered_backbone_and_the_default_of_stored_dicts():
    assert "resnet" in BACKBONES and ModelConfig.backbone_type == "resnet"
    assert backbone_config_class("resnet") is ModelConfig
    cfg = model_config("proxy_gsa_late")
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["backbone"] == "resnet"
    assert model_config_from_dict(data) == BackboneConfig.from_dict(data) == ModelConfig.from_dict(data) == cfg
    legacy = {k: v for k, v in data.items() if k != "backbone"}  # stored before backbones had names
    assert model_config_from_dict(legacy) == ModelConfig.from_dict(legacy) == cfg
    assert isinstance(build_model(legacy), GSAResNet) and isinstance(create_model("proxy_resnet"), GSAResNet)


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_fits_to_data_builds_and_round_trips(name):
    cfg = backbone_config_class(name)().fit_to_data(num_classes=3, in_channels=2, image_size=16)
    assert isinstance(cfg, BackboneConfig) and cfg.backbone_type == name
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["backbone"] == name and model_config_from_dict(data) == cfg
    model = build_model(data)
    assert model.cfg == cfg
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 2, 16, 16))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_fit_to_data_sets_the_data_fields_only():
    cfg = model_config("proxy_gsa_resnet", width_multiplier=0.5)
    fitted = cfg.fit_to_data(num_classes=7, in_channels=1, image_size=16)
    assert fitted == cfg.replace(num_classes=7, in_channels=1, image_size=16)

    @dataclasses.dataclass(frozen=True)
    class NoDataFields(BackboneConfig):
        depth: int = 2

    with pytest.raises(NotImplementedError, match=r"NoDataFields has no field\(s\) image_size, in_channels, num_classes"):
        NoDataFields().fit_to_data(num_classes=2, in_channels=1, image_size=8)


def test_backbone_registry_errors():
    @dataclasses.dataclass(frozen=True)
    class OtherConfig(BackboneConfig):
        num_classes: int = 10

    with pytest.raises(ValueError, match=r"unknown backbone 'vit'; known: .*resnet"):
        model_config_from_dict({"backbone": "vit"})
    with pytest.raises(ValueError, match=r"backbone 'resnet' is already registered"):
        register_backbone("resnet", config=OtherConfig)(torch.nn.Identity)
    assert OtherConfig.backbone_type == ""  # a failed registration leaves the config unnamed
    with pytest.raises(ValueError, match=r"ModelConfig is already the config of backbone 'resnet'"):
        register_backbone("resnet_again", config=ModelConfig)
    with pytest.raises(ValueError, match=r"config must be a BackboneConfig dataclass"):
        register_backbone("plain", config=dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"describes backbone 'other', not 'resnet'"):
        ModelConfig.from_dict({**model_config("proxy_resnet").to_dict(), "backbone": "other"})
    with pytest.raises(ValueError, match=r"build_model: cfg must be a backbone config .*got str"):
        build_model("proxy_resnet")  # type: ignore[arg-type]
    assert "resnet_again" not in list_backbones() and "plain" not in list_backbones()


def test_model_config_accepts_numpy_scalars_and_stores_plain_numbers():
    """A results table hands configs back with numpy scalars; the config stores plain numbers."""
    cfg = ModelConfig(stage_blocks=(np.int64(1), np.int64(2)), mixers="conv", stem="cifar", base_width=np.int64(8),
                      width_multiplier=np.float64(0.5), num_classes=np.int64(3), image_size=np.int64(16))
    plain = ModelConfig(stage_blocks=(1, 2), mixers="conv", stem="cifar", base_width=8, width_multiplier=0.5,
                        num_classes=3, image_size=16)
    assert cfg == plain and json.loads(json.dumps(cfg.to_dict())) == plain.to_dict()
    assert [type(v) for v in cfg.stage_blocks] == [int, int] and type(cfg.base_width) is int


# --- feature_size is derived, never stored -------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: create_model("proxy_gsa_resnet", feature_size=64),
        lambda: model_config("proxy_gsa_resnet", feature_size=64),
        lambda: model_config("proxy_gsa_late", feature_size=8),
        lambda: create_model("proxy_resnet", feature_size=32),
    ],
    ids=["create_model", "model_config", "hybrid", "no-gsa-stage"],
)
def test_feature_size_override_is_rejected(build):
    """The backbone sets each stage's feature_size from image_size, so an override would be stored
    in the config and silently ignored by the model."""
    with pytest.raises(ValueError, match=r"feature_size=\d+ cannot be overridden: the backbone sets each stage's "
                                         r"feature_size from image_size; set image_size instead"):
        build()


def test_model_config_rejects_a_mixer_feature_size_it_would_ignore():
    fields = dict(stage_blocks=(1, 1), stem="cifar", base_width=8, num_classes=4, image_size=16)
    match = r"model\.mixers\[1\]\.feature_size=64 would be ignored: .*set image_size instead"
    with pytest.raises(ValueError, match=match):
        ModelConfig(mixers=(ConvConfig(), GSAConfig(heads=2, feature_size=64)), **fields)
    cfg = ModelConfig(mixers=(ConvConfig(), GSAConfig(heads=2)), **fields)
    with pytest.raises(ValueError, match=match):
        cfg.replace(mixers=(ConvConfig(), GSAConfig(heads=2, feature_size=64)))
    data = cfg.to_dict()
    data["mixers"][1]["feature_size"] = 64
    with pytest.raises(ValueError, match=match):
        model_config_from_dict(data)
    # what is built is derived from image_size, and the stored config says so (feature_size None)
    model = create_model("proxy_gsa_resnet", image_size=64)
    assert all(m.feature_size is None for m in model.cfg.mixers)
    assert [stage[0].mixer.cfg.feature_size for stage in model.stages] == [64, 64, 32, 16]


@pytest.mark.parametrize(
    ("name", "image_size"),
    [(name, 9) for name in list_models()] + [(name, 32) for name in list_models("proxy_*")],
)
def test_closed_form_flops_equal_the_traced_count(name, image_size):
    from gsa_search.measure import count_flops, model_macs

    cfg = model_config(name, image_size=image_size, num_classes=7, in_channels=2)
    traced = count_flops(build_model(cfg), (1, 2, image_size, image_size)).per_image
    assert cfg.flops() == traced
    assert model_macs(cfg, (1, 2, image_size, image_size)) == traced


def test_closed_form_flops_equal_the_traced_count_on_sampled_search_configs():
    import optuna

    from gsa_search.measure import count_flops
    from search_spaces import get_space

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    for i in range(12):
        trial = study.ask()
        config = get_space("gsa_full_v1")(trial)
        size = (8, 11, 16)[i % 3]
        cfg = config.model.fit_to_data(num_classes=10, in_channels=1, image_size=size)
        assert cfg.flops() == count_flops(build_model(cfg), (1, 1, size, size)).per_image, trial.params
        study.tell(trial, 0.0)
