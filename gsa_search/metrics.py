"""Metric names, defined once, with the direction in which each is better.

Status: stable. Trainers, runners and reports use these constants, never string literals, so a
results table always has the same column names whichever backend produced it.
"""

from __future__ import annotations

__all__ = [
    "ACCURACY",
    "TOP5",
    "TEST_ACCURACY",
    "TEST_LOSS",
    "VAL_LOSS",
    "TRAIN_LOSS",
    "FLOPS",
    "PARAMS",
    "LATENCY_MS",
    "TRAIN_TIME_S",
    "IMAGES_PER_S",
    "EPOCH",
    "DIRECTIONS",
    "FLOPS_CONVENTION",
]

ACCURACY = "accuracy"  # top-1 validation accuracy in [0, 1]
TOP5 = "top5"  # top-5 validation accuracy (datasets with more than 10 classes)
VAL_LOSS = "val_loss"
TEST_ACCURACY = "test_accuracy"  # top-1 accuracy of the final model on the test split, when there is one
TEST_LOSS = "test_loss"
TRAIN_LOSS = "train_loss"
FLOPS = "flops"  # multiply-accumulates per image (see FLOPS_CONVENTION)
PARAMS = "params"
LATENCY_MS = "latency_ms"
TRAIN_TIME_S = "train_time_s"
IMAGES_PER_S = "images_per_s"
EPOCH = "epoch"

DIRECTIONS = {
    ACCURACY: "maximize",
    TOP5: "maximize",
    VAL_LOSS: "minimize",
    TEST_ACCURACY: "maximize",
    TEST_LOSS: "minimize",
    TRAIN_LOSS: "minimize",
    FLOPS: "minimize",
    PARAMS: "minimize",
    LATENCY_MS: "minimize",
    TRAIN_TIME_S: "minimize",
    IMAGES_PER_S: "maximize",
}

FLOPS_CONVENTION = "multiply-accumulates per image (1 MAC = 1 FLOP, the GSA/ResNet papers' convention)"
