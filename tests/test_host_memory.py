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
# another allocator preloaded (jemalloc, tcmalloc) serves the blocks instead of glibc's malloc
OWN_MALLOC = GLIBC and not os.environ.get("LD_PRELOAD")
needs_glibc = pytest.mark.skipif(not OWN_MALLOC, reason="the setting exists for glibc's own malloc only")

# Blocks of 64 MiB (a quarter of the kept threshold when glibc refused 1 GiB): 64 MiB is above
# glibc's largest adaptive mmap threshold (32 MiB), so without the setting every allocation is a
# fresh mapping whose pages fault in when written. Faults are compared with the first block's
# (4 KiB or, with transparent huge pages, 2 MiB each).
_PROBE = """
import json, resource, sys, torch
from gsa_search import host_memory
first = host_memory.retain_freed_memory()
again = host_memory.retain_freed_memory()
size = min(64 << 20, (host_memory.mmap_threshold or 1 << 40) // 4)
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(size // 4)  # float32
    block.fill_(1.0)
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"first": first, "again": again, "faults": faults}))
"""


def _probe(retain: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120,
        env={**os.environ, "GSA_SEARCH_RETAIN_MEMORY": retain},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@needs_glibc
def test_freed_blocks_are_reused_without_page_faults():
    kept = _probe("1")
    assert kept["first"] is True and kept["again"] is True
    assert kept["faults"][0] > 0  # the first block is new memory
    # later ones reuse it (the first few may still grow the heap around other allocations)
    assert max(kept["faults"][-4:]) * 20 < kept["faults"][0]


@needs_glibc
def test_switched_off_every_block_faults_in_again():
    off = _probe("0")
    assert off["first"] is False and off["again"] is False
    assert min(off["faults"][-4:]) * 2 >= off["faults"][0] > 0  # glibc's own: a fresh mapping each time


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
    env = {**os.environ, "GSA_SEARCH_RETAIN_MEMORY": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(GLIBC)
