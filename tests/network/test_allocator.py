"""indexer.network.allocator keeps freed blocks in the heap instead of handing them back."""
from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# In a fresh process: how much resident memory freeing a touched 16 MB array gives back.
SCRIPT = """
import os, sys
import numpy as np
from indexer.network.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
a = np.ones(16 << 20, np.uint8)
before = rss()
del a
print(before - rss())
"""


def _given_back(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_activations_stay_in_the_process():
    assert _given_back("default") > 12 << 20  # mapped on its own, unmapped when freed
    assert _given_back("keep") < 1 << 20  # kept in the heap for the next pass
