from __future__ import annotations

import json
from pathlib import Path

from bench.generate import main


def test_benchmark_smoke_run_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["--tiny", "--requests", "3", "--card-requests", "2", "--new-tokens", "4"]
    assert main([*args, "--image-size", "256", "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["engine"]["requests"] == 3
    assert result["model_card_way"]["requests"] == 2
    for side in ("engine", "model_card_way"):
        assert result[side]["reports_per_hour"] > 0
        assert result[side]["ms_per_output_token"] > 0
    assert result["speedup_reports_per_hour"] > 0
    assert result["bandwidth_floor"]["engine_batch1_ms"] > 0
    assert "| reports per hour |" in (out / "results.md").read_text()
