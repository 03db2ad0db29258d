"""``gsa_search.host_memory``: freed host memory stays in the process (glibc), so a loop that
allocates and frees the same large blocks stops faulting pages in; off when asked.

Each case runs in a fresh interpreter: the setting is process-wide and decided once.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# 64 MiB blocks: above glibc's largest adaptive mmap threshold (32 MiB), so without the setting
# every allocation is a fresh mapping whose pages fault in when written
_PROBE = """
import json, resource, sys, torch
from gsa_search import host_memory
first = host_memory.retain_freed_memory()
again = host_memory.retain_freed_memory()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(16 << 20)  # 64 MiB of float32
    block.fill_(1.0)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"first": first, "again": again, "faults": faults}))
"""


def _probe(**env: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting exists on Linux with glibc only")
def test_freed_blocks_are_reused_without_page_faults():
    kept = _probe(GSA_SEARCH_RETAIN_MEMORY="1")
    assert kept["first"] is True and kept["again"] is True
    pages = (64 << 20) // 4096
    assert kept["faults"][0] >= pages // 2  # the first block is new memory
    assert max(kept["faults"][2:]) < pages // 20  # later ones reuse it


@pytest.mark.skipif(not GLIBC, reason="the setting exists on Linux with glibc only")
def test_switched_off_every_block_faults_in_again():
    off = _probe(GSA_SEARCH_RETAIN_MEMORY="0")
    assert off["first"] is False and off["again"] is False
    pages = (64 << 20) // 4096
    assert min(off["faults"][2:]) >= pages // 2  # glibc's own behaviour: a fresh mapping each time


def test_training_applies_it():
    """``train()`` decides the setting for its process (here: kept on glibc, else not applicable)."""
    code = (
        "from gsa_search import host_memory\n"
        "from gsa_search.models import model_config\n"
        "from gsa_search.trainer import train\n"
        "assert host_memory._state is None\n"
        "train(model_config('proxy_resnet', width_multiplier=0.25), {'epochs': 1, 'device': 'cpu'})\n"
        "print(host_memory._state)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(GLIBC)
