"""The full public LogoBench through the real CLIs and server (slow; skips without the data)."""
from __future__ import annotations

import json

import pytest

from bench.eval import main
from tests.conftest import LOGOBENCH

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (LOGOBENCH / "registry.csv").is_file(),
                                 reason="../shared/logobench is not present")]


def test_logobench_end_to_end(tmp_path):
    assert main(["--data", str(LOGOBENCH), "--out", str(tmp_path), "--latency-rounds", "10"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["indexed"] == 2600 and m["queries"] == 1680 and m["errors"] == 0
    # Well above the raw-feature baseline (0.748) LogoBench's README reports.
    assert m["recall@1"] >= 0.80 and m["recall@10"] >= 0.88
    assert m["recall@1_by_transform"]["identity"] == 1.0
    assert m["fpr"] <= 0.02
