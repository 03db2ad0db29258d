"""Backbone registry: whole networks (image -> class logits) built from configs, like blocks.

Status: stable. Each backbone registers a frozen config dataclass and an ``nn.Module`` class whose
constructor takes that config:

    @register_backbone("resnet", config=ModelConfig)
    class GSAResNet(nn.Module): ...

A config knows how to fit itself to a dataset (:meth:`BackboneConfig.fit_to_data`) and serialises
to a plain dict with a ``"backbone"`` key; :func:`model_config_from_dict` turns such a dict back
into the right config class (a dict without the key is a ``"resnet"`` config, so results stored
before backbones had names still load). :func:`build_model` builds any registered backbone, so the
trainer and the runners never name a model class.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, TypeVar

from torch import nn

from ..config import ConfigMixin
from ..registry import Registry

__all__ = [
    "BackboneConfig",
    "DEFAULT_BACKBONE",
    "backbone_config_class",
    "build_model",
    "list_backbones",
    "model_config_from_dict",
    "register_backbone",
]

DEFAULT_BACKBONE = "resnet"  # what a config dict without a "backbone" key describes

B = TypeVar("B", bound="BackboneConfig")
M = TypeVar("M", bound=nn.Module)


@dataclasses.dataclass(frozen=True)
class BackboneConfig(ConfigMixin):
    """Base class of backbone configs. ``backbone_type`` is set by :func:`register_backbone`.

    Subclasses with fields ``num_classes``, ``in_channels`` and ``image_size`` get
    :meth:`fit_to_data` for free; others override it.
    """

    backbone_type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone_type, **super().to_dict()}

    @classmethod
    def from_dict(cls: type[B], data: dict[str, Any]) -> B:
        """Inverse of :meth:`to_dict`. On the base class it dispatches on the ``"backbone"`` key."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        if cls is BackboneConfig:
            return model_config_from_dict(data)  # type: ignore[return-value]
        fields = dict(data)
        name = fields.pop("backbone", cls.backbone_type)
        if name != cls.backbone_type:
            raise ValueError(
                f"{cls.__name__}.from_dict: the dict describes backbone {name!r}, not {cls.backbone_type!r}; "
                "use model_config_from_dict to load any backbone"
            )
        return super().from_dict(fields)  # type: ignore[misc]

    def fit_to_data(self: B, *, num_classes: int, in_channels: int, image_size: int) -> B:
        """This config for a dataset of ``num_classes`` classes of ``in_channels`` x ``image_size``^2 images."""
        names = {f.name for f in dataclasses.fields(self)}
        missing = sorted({"num_classes", "in_channels", "image_size"} - names)
        if missing:
            raise NotImplementedError(
                f"{type(self).__name__} has no field(s) {', '.join(missing)}: override fit_to_data"
            )
        return self.replace(num_classes=num_classes, in_channels=in_channels, image_size=image_size)

    def flops(self) -> int:
        """Multiply-accumulates of one forward pass on one image of the configured size, in closed
        form (the convention of :func:`gsa_search.measure.count_flops`, which the tests check it
        against). Optional: without it, :func:`gsa_search.measure.model_macs` traces the model."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form FLOPs")


_BACKBONES: Registry[tuple[type[BackboneConfig], Callable[[Any], nn.Module]]] = Registry("backbone")


def register_backbone(name: str, *, config: type[BackboneConfig]) -> Callable[[type[M]], type[M]]:
    """Class decorator registering an ``nn.Module`` built as ``cls(cfg)`` under ``name``.

    Example:
        >>> import dataclasses
        >>> @dataclasses.dataclass(frozen=True)
        ... class LinearConfig(BackboneConfig):
        ...     num_classes: int = 10
        ...     in_channels: int = 3
        ...     image_size: int = 32
        >>> @register_backbone("doctest_linear", config=LinearConfig)
        ... class Linear(nn.Sequential):
        ...     def __init__(self, cfg):
        ...         super().__init__(nn.Flatten(), nn.Linear(cfg.in_channels * cfg.image_size**2, cfg.num_classes))
        ...         self.cfg = cfg
        >>> cfg = model_config_from_dict({"backbone": "doctest_linear", "num_classes": 4})
        >>> build_model(cfg.fit_to_data(num_classes=3, in_channels=1, image_size=8))[1].out_features
        3
    """
    if not (isinstance(config, type) and issubclass(config, BackboneConfig) and dataclasses.is_dataclass(config)):
        raise ValueError(f"register_backbone({name!r}): config must be a BackboneConfig dataclass, got {config!r}")
    if config.__dict__.get("backbone_type"):
        raise ValueError(
            f"register_backbone({name!r}): {config.__name__} is already the config of backbone {config.backbone_type!r}"
        )

    def decorator(cls: type[M]) -> type[M]:
        _BACKBONES.add(name, (config, cls))
        config.backbone_type = name
        return cls

    return decorator


def list_backbones(pattern: str | None = None) -> list[str]:
    """Registered backbone names (``'resnet'``, ...), optionally filtered by a glob."""
    return _BACKBONES.names(pattern)


def backbone_config_class(name: str) -> type[BackboneConfig]:
    """The config class of backbone ``name`` (an unknown name lists the known ones)."""
    return _BACKBONES.get(name)[0]


def model_config_from_dict(data: dict[str, Any]) -> BackboneConfig:
    """The config a ``to_dict()`` dict describes: ``{'backbone': 'resnet', ...}``; no key means ``'resnet'``."""
    if not isinstance(data, dict):
        raise ValueError(f"a model config dict is expected, got {type(data).__name__}")
    name = data.get("backbone", DEFAULT_BACKBONE)
    return backbone_config_class(name).from_dict(data)


def build_model(cfg: BackboneConfig | dict[str, Any]) -> nn.Module:
    """Build the backbone a config (or its dict form) describes; ``cfg`` is kept on the module as ``.cfg``."""
    if isinstance(cfg, dict):
        cfg = model_config_from_dict(cfg)
    if not isinstance(cfg, BackboneConfig):
        raise ValueError(
            f"build_model: cfg must be a backbone config (e.g. ModelConfig) or its dict, got {type(cfg).__name__}"
        )
    config_cls, module_cls = _BACKBONES.get(cfg.backbone_type)
    if not isinstance(cfg, config_cls):
        raise ValueError(f"build_model: backbone {cfg.backbone_type!r} expects a {config_cls.__name__}, got {type(cfg).__name__}")
    return module_cls(cfg)
