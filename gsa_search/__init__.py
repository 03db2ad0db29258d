"""gsa-search: ablation studies and architecture/hyperparameter search over global self-attention blocks.

The domain library: spatial-mixer blocks (GSA, explicit attention, conv, full softmax attention),
backbones and their presets, datasets, the proxy trainer, cost measurement, one search trial and
Pareto fronts. It imports neither Optuna nor Ray (those live in ``runners/``).

What a user needs is importable from here; submodules hold the rest (``gsa_search.blocks.gsa`` for
the GSA building blocks, ``gsa_search.measure`` for per-layer tables, ...).

Example:
    >>> import gsa_search as gs
    >>> model = gs.create_model("proxy_gsa_resnet", num_classes=10)
    >>> gs.count_params(model) > 0
    True
"""

from . import metrics
from .blocks import (
    BlockConfig,
    ConvConfig,
    ExplicitConfig,
    GSAConfig,
    MHSAConfig,
    block_config,
    block_config_from_dict,
    create_block,
    list_blocks,
    register_block,
)
from .data import DatasetBundle, DatasetError, list_datasets, load_dataset, register_dataset
from .device import resolve_device
from .measure import (
    analytic_flops,
    count_flops,
    count_params,
    flops_breakdown,
    measure_latency,
    model_flops,
    model_macs,
)
from .models import (
    BackboneConfig,
    ModelConfig,
    build_model,
    create_model,
    list_backbones,
    list_models,
    model_config,
    model_config_from_dict,
    register_backbone,
    register_model,
)
from . import stats
from .pareto import pareto_mask
from .trainer import DivergenceError, OutOfMemoryError, Recipe, TrainError, train
from .trial import Budgets, Infeasible, InvalidConfig, TrialConfig, run_trial

__version__ = "0.1.0"

__all__ = [
    "BackboneConfig",
    "BlockConfig",
    "Budgets",
    "ConvConfig",
    "DatasetBundle",
    "DatasetError",
    "DivergenceError",
    "ExplicitConfig",
    "GSAConfig",
    "Infeasible",
    "InvalidConfig",
    "MHSAConfig",
    "ModelConfig",
    "OutOfMemoryError",
    "Recipe",
    "TrainError",
    "TrialConfig",
    "analytic_flops",
    "block_config",
    "block_config_from_dict",
    "build_model",
    "count_flops",
    "count_params",
    "create_block",
    "create_model",
    "flops_breakdown",
    "list_backbones",
    "list_blocks",
    "list_datasets",
    "list_models",
    "load_dataset",
    "measure_latency",
    "metrics",
    "model_config",
    "model_config_from_dict",
    "model_flops",
    "model_macs",
    "pareto_mask",
    "register_backbone",
    "register_block",
    "register_dataset",
    "register_model",
    "resolve_device",
    "run_trial",
    "stats",
    "train",
]
