"""Datasets for proxy training, and GPU-resident augmentation / batching.

Status: stable. A dataset registry (``register_dataset`` / ``load_dataset`` / ``list_datasets``)
whose loaders all return a validated :class:`DatasetBundle`: normalised ``float32`` tensors
``(N, C, H, W)`` and ``int64`` labels for a *train*, a *validation* and (where the data has one) a
*test* split, which a training loop moves to the device once and then slices (the airbench recipe:
the whole dataset resident on the GPU, augmentation done there too). Searches rank trials on the
validation split; the test split is for the final report only.

Layout (one idea per module):

- :mod:`.bundle`: :class:`DatasetBundle` (with its validation) and :class:`DatasetError`.
- :mod:`.registry`: the registry, :func:`load_dataset` and the option checks.
- :mod:`._common`: stratified splits, resizing and ``finish_bundle`` (training-split statistics ->
  normalise every split -> bundle), shared by the loaders.
- one loader per module, each registering itself on import:

  - :mod:`.digits` ``digits``: scikit-learn's bundled real 8x8 digits (offline, the embedded default).
  - :mod:`.digits_pairs` ``digits-pairs``: a long-range proxy task (two digits in opposite corners,
    label "same class?").
  - :mod:`.cifar` ``cifar10`` / ``cifar100``: the real CIFAR pickles; validation held out of the
    training batches, the official test batch as the test split.
  - :mod:`.imagefolder` ``imagefolder``: torchvision's ``ImageFolder`` layout (``train/``, ``val/``,
    ``test/``); large folders are streamed through ``DataLoader``s.
  - :mod:`.synthetic` ``synthetic``: seeded random tensors, for tests and benchmarks.
- :mod:`.augment`: :func:`augment` (translation with a fill value + flip, on device) and
  :func:`batches`.

Example:
    >>> bundle = load_dataset("digits", seed=0)
    >>> bundle.train_x.shape[1:], bundle.num_classes, bundle.has_test
    (torch.Size([1, 32, 32]), 10, False)
    >>> xb, yb = next(batches(bundle.train_x, bundle.train_y, batch_size=64, shuffle=False))
    >>> augment(xb, pad=4, flip=bundle.flip, fill=bundle.black).shape
    torch.Size([64, 1, 32, 32])
"""

from __future__ import annotations

from . import cifar, digits, digits_pairs, imagefolder, synthetic  # noqa: F401 - registers the loaders
from .augment import augment, batches
from .bundle import DatasetBundle, DatasetError
from .registry import list_datasets, load_dataset, register_dataset

__all__ = [
    "DatasetBundle",
    "DatasetError",
    "augment",
    "batches",
    "list_datasets",
    "load_dataset",
    "register_dataset",
]
