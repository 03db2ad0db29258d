"""The environment a run happened in: Python, torch, CUDA, device, threads, the toolkit's commit.

Status: stable. Searches record it in ``search.json`` when they start, so a report rebuilt later,
elsewhere, still says where the numbers came from.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

__all__ = ["environment", "git_commit"]


def git_commit() -> str:
    """``git rev-parse HEAD`` of the checkout this package runs from; "unknown" for an installed copy."""
    root = Path(__file__).resolve().parents[1]
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root:  # e.g. site-packages inside a repo
            return "unknown"
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def environment() -> dict[str, str]:
    """``{'python', 'torch', 'CUDA', 'device', 'CPU threads', 'optuna', 'gsa-search commit', 'host'}``.

    Example:
        >>> sorted(environment())[:2]
        ['CPU threads', 'CUDA']
    """
    rows: dict[str, str] = {"python": platform.python_version()}
    try:
        import torch

        rows["torch"] = torch.__version__
        rows["CUDA"] = torch.version.cuda or "none (CPU build)"
        rows["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA device visible)"
        rows["CPU threads"] = f"{torch.get_num_threads()} torch threads, {os.cpu_count()} logical CPUs"
    except Exception as error:  # noqa: BLE001 - must not fail on a broken torch install
        rows["torch"] = f"not importable ({type(error).__name__})"
        rows["CPU threads"] = f"{os.cpu_count()} logical CPUs"
    try:
        from importlib.metadata import version

        rows["optuna"] = version("optuna")
    except Exception:  # noqa: BLE001
        pass
    rows["gsa-search commit"] = git_commit()
    rows["host"] = platform.node() or "unknown"
    return rows
