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
    service, raw, phash = (m["methods"][k] for k in ("service", "raw-pooled", "phash"))
    assert m["indexed"] == 2600 and service["queries"] == 1680 and service["errors"] == 0
    # Well above both baselines, measured in the same run.
    # (2026-11-27, colour + ink views: recall@1 0.958, recall@10 0.983, TPR 0.781 at
    # FPR 0.007; colour alone: 0.944, 0.980, 0.763 at 0.011.)
    assert service["recall@1"] >= 0.945 and service["recall@10"] >= 0.97
    assert service["recall@1"] > raw["recall@1"] + 0.1 > phash["recall@1"] + 0.1
    assert service["tpr@fpr1%"] > raw["tpr@fpr1%"] + 0.3 and service["tpr"] >= 0.75
    assert service["recall@1_by_transform"]["identity"] == 1.0
    assert service["fpr"] <= 0.02
