"""Tests for the gsa_search.data package as a whole: layout, public names, registry and option checks.

Loader-specific tests live beside this file: test_data_digits.py, test_data_cifar.py,
test_data_imagefolder.py, test_data_bundle.py (the bundle and ``finish_bundle``) and
test_data_augment.py (augmentation and batching).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import gsa_search.data as data_pkg
from gsa_search.data import (
    DatasetBundle,
    DatasetError,
    augment,
    batches,
    list_datasets,
    load_dataset,
    register_dataset,
)

# --------------------------------------------------------------------------------------------------
# Package layout
# --------------------------------------------------------------------------------------------------

_MODULES = ("bundle", "registry", "_common", "digits", "digits_pairs", "cifar", "imagefolder", "synthetic", "augment")
_LOADER_MODULES = {
    "digits": "digits",
    "digits-pairs": "digits_pairs",
    "cifar10": "cifar",
    "cifar100": "cifar",
    "imagefolder": "imagefolder",
    "synthetic": "synthetic",
}


def test_data_is_a_package_of_documented_modules() -> None:
    assert hasattr(data_pkg, "__path__"), "gsa_search.data is a package"
    assert not (Path(data_pkg.__file__).parent.parent / "data.py").exists()
    for name in _MODULES:
        module = importlib.import_module(f"gsa_search.data.{name}")
        assert module.__doc__ and len(module.__doc__.split()) > 10, f"{name} starts with a docstring"
    assert data_pkg.__doc__


def test_public_names() -> None:
    assert set(data_pkg.__all__) == {
        "DatasetBundle", "DatasetError", "augment", "batches", "list_datasets", "load_dataset", "register_dataset",
    }
    exported = {name: getattr(data_pkg, name) for name in data_pkg.__all__}
    assert exported["DatasetBundle"] is DatasetBundle and exported["augment"] is augment
    assert exported["batches"] is batches and exported["register_dataset"] is register_dataset
    assert issubclass(DatasetError, ValueError)


def test_one_loader_per_module() -> None:
    from gsa_search.data.registry import _DATASETS

    for dataset, module in _LOADER_MODULES.items():
        assert _DATASETS.get(dataset).__module__ == f"gsa_search.data.{module}"


@pytest.mark.parametrize("module", ["digits", "digits_pairs", "cifar", "imagefolder"])
def test_normalising_loaders_share_finish_bundle(module: str) -> None:
    """The "train statistics -> normalise every split -> bundle" step is written once, in _common."""
    source = inspect.getsource(importlib.import_module(f"gsa_search.data.{module}"))
    assert "finish_bundle(" in source and "normalize_(" not in source


def test_import_does_not_pull_in_torchvision() -> None:
    import subprocess
    import sys

    code = (
        "import sys, gsa_search; before = 'torchvision' in sys.modules; import gsa_search.data; "
        "print(before or 'torchvision' not in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", "torchvision is imported lazily, by the loaders that need it"


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


def test_registry_lists_builtin_datasets() -> None:
    assert {"digits", "digits-pairs", "cifar10", "cifar100", "imagefolder", "synthetic"} <= set(list_datasets())
    assert list_datasets("cifar*") == ["cifar10", "cifar100"]


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'; known: .*cifar10.*digits.*synthetic"):
        load_dataset("mnist")


def test_unknown_option_names_allowed_ones() -> None:
    with pytest.raises(DatasetError, match=r"digits: unknown option\(s\) colour; allowed: val_fraction"):
        load_dataset("digits", colour=True)


def test_duplicate_registration_is_an_error() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("digits")(lambda **kwargs: None)


# --------------------------------------------------------------------------------------------------
# Shared arguments and options: checked up front, one-line DatasetErrors naming option and range
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -3, 2.5, "32", True, 5000])
def test_bad_image_size(bad: object) -> None:
    with pytest.raises(DatasetError, match=r"image_size must be an integer in \[1, 4096\]"):
        load_dataset("synthetic", image_size=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True, None])
def test_bad_seed(bad: object) -> None:
    with pytest.raises(DatasetError, match=r"digits: seed must be an integer >= 0") as info:
        load_dataset("digits", seed=bad)
    assert "\n" not in str(info.value)


def test_bad_option_value() -> None:
    with pytest.raises(DatasetError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.5)
    with pytest.raises(DatasetError, match="canvas"):
        load_dataset("digits-pairs", canvas=16, digit_size=8)


@pytest.mark.parametrize("bad", [0, 1, -0.1, float("nan"), "0.2", True])
def test_val_fraction_must_be_in_open_unit_interval(bad: object) -> None:
    with pytest.raises(DatasetError, match=r"synthetic: option val_fraction must be a number in \(0, 1\)"):
        load_dataset("synthetic", num_samples=10, image_size=4, val_fraction=bad)


def test_integer_options_reject_non_integers() -> None:
    with pytest.raises(DatasetError, match=r"synthetic: option num_samples must be an integer >= 2, got 2.0"):
        load_dataset("synthetic", num_samples=2.0)
    with pytest.raises(DatasetError, match=r"option num_classes must be an integer >= 2, got True"):
        load_dataset("synthetic", num_classes=True)
    with pytest.raises(DatasetError, match=r"verify must be True or False"):
        load_dataset("synthetic", verify="yes")


def test_numpy_integers_are_accepted() -> None:
    """Configs rebuilt from a results table carry numpy scalars: seed, image_size and options take them."""
    plain = load_dataset("synthetic", num_samples=20, num_classes=3, image_size=4, seed=3)
    numpy = load_dataset(
        "synthetic", num_samples=np.int64(20), num_classes=np.int32(3), image_size=np.int64(4), seed=np.int64(3),
        val_fraction=np.float64(0.2),
    )
    assert torch.equal(plain.train_x, numpy.train_x) and numpy.image_size == 4
    assert type(numpy.image_size) is int and type(numpy.num_classes) is int
    assert "seed=3" in numpy.source
    digits = load_dataset("digits", seed=np.uint8(1), image_size=np.int16(8))
    assert digits.image_size == 8 and np.array_equal(digits.info["val_indices"], load_dataset("digits", seed=1, image_size=8).info["val_indices"])
