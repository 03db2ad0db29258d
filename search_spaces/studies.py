"""The shipped ablation studies: the GSA paper's design questions, at proxy scale, on ``digits-pairs``.

Status: new; every name is versioned (``..._v1`` never changes meaning; a changed study gets a new
name). ``gsa-search ablate NAME`` runs one; copy ``search_spaces/studies/*.toml`` to write your own.

Data: ``digits-pairs`` (two real digits in opposite corners; label "same class?"), the long-range
task where a global mixer should matter, referenced by name with no options so its current defaults
(and image size) apply; the recipe is the runner's default for it (the tuned digits recipe), except
in the training study. Models: the CIFAR-stem proxies of :mod:`gsa_search.models.presets` (one
bottleneck per stage, base width 16, so stage widths 16/32/64/128; GSA proxies have 4 heads and
global axial positional attention + content attention in every stage). Seeds: 3 by default; seed
``s`` gives the same data, initialisation and order in every cell, so differences pair by seed.

Baselines, and why:

1. ``gsa_content_positional_v1`` -- content-only vs positional-only vs both. Baseline: the paper's
   GSA module (both paths, ``proxy_gsa_resnet``); each ablation removes one path.
2. ``gsa_axial_vs_2d_v1`` -- axial vs 2D positional attention: 2D local windows ``r = 1, 2, 3`` and
   a global 2D window (quadratic in the map size: it is allowed but costs O((HW)^2) per head, which
   the FLOPs column shows). Baseline: the paper's global axial attention.
3. ``gsa_rel_span_v1`` -- relative span of the axial positional attention: local ``r = 1, 2, 3``
   (the same spans as the 2D windows of study 2, so the two studies read across) vs global
   (baseline, the paper's choice).
4. ``gsa_heads_dim_key_v1`` -- heads (1, 2, 4, 8) x key channels per head (``auto`` = the value
   width ``C/heads``, the paper's choice; 4; 16) at fixed width (``heads * d_v = C`` always), full
   factorial so the interaction (total key channels) is visible; main effects are reported.
   Baseline: 4 heads, ``auto`` (``proxy_gsa_resnet``).
5. ``gsa_query_norm_v1`` -- softmax of the queries over channels in the content path ("efficient
   attention", which GSA drops) on vs off (baseline off, as the paper).
6. ``gsa_stages_v1`` -- which stages use GSA (the rest keep the 3x3 conv): none, last, last two,
   all. Baseline: all stages (the paper's GSA-ResNet), so every cell answers "what is lost by
   keeping convolutions in the early stages".
7. ``gsa_block_type_v1`` -- the spatial mixer: 3x3 conv vs GSA vs explicit (Gaussian) attention vs
   full multi-head softmax attention, every stage, same widths (matched width: the bottleneck
   widths are the preset's; attention blocks use 4 heads with ``heads * d_v = C``). Baseline: the
   conv ResNet (``proxy_resnet``), because both papers report their block against the ResNet it
   replaces: each comparison reads "block X instead of the 3x3 conv", in accuracy and in cost.
8. ``gsa_train_lr_smoothing_v1`` -- training hyperparameters of a fixed GSA model
   (``proxy_gsa_resnet``): peak learning rate (1e-3, 3e-3, 1e-2) x label smoothing (0, 0.1), full
   factorial. Baseline: the tuned digits recipe's values (lr 3e-3, label smoothing 0.1), written
   into the baseline recipe so the baseline levels stay the baseline if that recipe is re-tuned.

Studies 1 and 7 are also shipped as ``search_spaces/studies/*.toml`` (the tests check they give the
same cells as the definitions here).
"""

from __future__ import annotations

from gsa_search.blocks import block_config

from .ablation import AblationStudy, Baseline, register_study

__all__ = ["SHIPPED", "GSA_PROXY_BLOCK", "LONG_RANGE_DATASET"]

LONG_RANGE_DATASET = "digits-pairs"
GSA_PROXY_BLOCK = block_config("gsa", heads=4)  # the GSA block of proxy_gsa_resnet
CONV = "conv"


def _gsa_baseline(**changes: object) -> Baseline:
    return Baseline(model="proxy_gsa_resnet", dataset=LONG_RANGE_DATASET, **changes)  # type: ignore[arg-type]


SHIPPED = [
    AblationStudy(
        name="gsa_content_positional_v1",
        description="GSA paths: content-only vs positional-only vs both (the paper's module)",
        baseline=_gsa_baseline(),
        factors={"paths": {
            "both": {},
            "content_only": {"positional": "none"},
            "positional_only": {"content": False},
        }},
        baseline_levels={"paths": "both"},
    ),
    AblationStudy(
        name="gsa_axial_vs_2d_v1",
        description="positional attention: global axial (paper) vs 2D windows r=1,2,3 and a global 2D window",
        baseline=_gsa_baseline(),
        factors={"positional": {
            "axial_global": {},
            "2d_r1": {"positional": "2d", "rel_span": 1},
            "2d_r2": {"positional": "2d", "rel_span": 2},
            "2d_r3": {"positional": "2d", "rel_span": 3},
            "2d_global": {"positional": "2d", "rel_span": "global"},
        }},
        baseline_levels={"positional": "axial_global"},
    ),
    AblationStudy(
        name="gsa_rel_span_v1",
        description="axial relative span: local r=1,2,3 vs global (paper)",
        baseline=_gsa_baseline(),
        factors={"rel_span": {
            "global": {},
            "r1": {"rel_span": 1},
            "r2": {"rel_span": 2},
            "r3": {"rel_span": 3},
        }},
        baseline_levels={"rel_span": "global"},
    ),
    AblationStudy(
        name="gsa_heads_dim_key_v1",
        description="heads x key channels per head at fixed width (full factorial)",
        baseline=_gsa_baseline(),
        design="full",
        factors={
            "heads": {"1": {"heads": 1}, "2": {"heads": 2}, "4": {"heads": 4}, "8": {"heads": 8}},
            "dim_key": {"auto": {}, "4": {"dim_key": 4}, "16": {"dim_key": 16}},
        },
        baseline_levels={"heads": "4", "dim_key": "auto"},
    ),
    AblationStudy(
        name="gsa_query_norm_v1",
        description="query normalisation (softmax over channels) in the content path: off (paper) vs on",
        baseline=_gsa_baseline(),
        factors={"query_norm": {"off": {}, "on": {"query_norm": True}}},
        baseline_levels={"query_norm": "off"},
    ),
    AblationStudy(
        name="gsa_stages_v1",
        description="which stages use GSA (the others keep the 3x3 conv): none, last, last two, all (paper)",
        baseline=_gsa_baseline(),
        factors={"gsa_stages": {
            "all": {},
            "none": {"mixers": CONV},
            "last": {"mixers": (CONV, CONV, CONV, GSA_PROXY_BLOCK)},
            "last_two": {"mixers": (CONV, CONV, GSA_PROXY_BLOCK, GSA_PROXY_BLOCK)},
        }},
        baseline_levels={"gsa_stages": "all"},
    ),
    AblationStudy(
        name="gsa_block_type_v1",
        description="spatial mixer at matched width: 3x3 conv (baseline) vs GSA vs explicit attention vs full MHSA",
        baseline=Baseline(model="proxy_resnet", dataset=LONG_RANGE_DATASET),
        factors={"mixer": {
            "conv": {},
            "gsa": {"mixers": GSA_PROXY_BLOCK},
            "explicit": {"mixers": block_config("explicit")},
            "mhsa": {"mixers": block_config("mhsa", heads=4)},
        }},
        baseline_levels={"mixer": "conv"},
    ),
    AblationStudy(
        name="gsa_train_lr_smoothing_v1",
        description="training hyperparameters of proxy_gsa_resnet: learning rate x label smoothing (full factorial)",
        baseline=_gsa_baseline(recipe={"lr": 3e-3, "label_smoothing": 0.1}),
        design="full",
        factors={
            "lr": {"1e-3": {"recipe": {"lr": 1e-3}}, "3e-3": {"recipe": {"lr": 3e-3}}, "1e-2": {"recipe": {"lr": 1e-2}}},
            "label_smoothing": {"0": {"recipe": {"label_smoothing": 0.0}}, "0.1": {"recipe": {"label_smoothing": 0.1}}},
        },
        baseline_levels={"lr": "3e-3", "label_smoothing": "0.1"},
    ),
]

for _study in SHIPPED:
    register_study(_study)
