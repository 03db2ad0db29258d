"""A torchvision ``ImageFolder`` with a fixed class list that skips hidden files and folders.

Status: stable, private. Used by the ``imagefolder`` loader for every split (train, val, test), so
all splits share one class list: the non-hidden sub-folders of ``train/``. Names starting with
``'.'`` (``.cache/``, ``.ipynb_checkpoints/``, ``._x.png``) are ignored at every level below the
root. Defined at module level (and kept in its own module, so ``import gsa_search.data`` does not
import torchvision) so that datasets pickle for ``DataLoader`` workers under ``spawn`` /
``forkserver``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from torchvision.datasets.folder import make_dataset as _tv_make_dataset

__all__ = ["FixedClassImageFolder", "visible_class_dirs"]


def visible_class_dirs(path: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the sub-folders of ``path`` whose names do not start with ``'.'``."""
    return sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith("."))


def _is_hidden(path: str, root: str) -> bool:
    return any(part.startswith(".") for part in Path(os.path.relpath(path, root)).parts)


class FixedClassImageFolder(ImageFolder):
    """``ImageFolder(root)`` whose classes are ``classes`` (index = position), not the folders found.

    A class with no folder (or no images) under ``root`` is allowed when ``allow_empty``; folders
    that are not in ``classes`` are never read.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        classes: Sequence[str],
        *,
        transform: Callable[[Any], Any] | None = None,
        allow_empty: bool = False,
    ) -> None:
        self.fixed_classes = tuple(classes)
        super().__init__(str(root), transform=transform, allow_empty=allow_empty)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return list(self.fixed_classes), {name: index for index, name in enumerate(self.fixed_classes)}

    @staticmethod
    def make_dataset(
        directory: str | os.PathLike[str],
        class_to_idx: dict[str, int],
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        root = str(directory)
        allowed = extensions if extensions is not None else IMG_EXTENSIONS

        def visible_image(path: str) -> bool:
            if _is_hidden(path, root):
                return False
            return is_valid_file(path) if is_valid_file is not None else has_file_allowed_extension(path, allowed)

        return _tv_make_dataset(root, class_to_idx, is_valid_file=visible_image, allow_empty=allow_empty)
