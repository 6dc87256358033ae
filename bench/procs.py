"""The project's CLIs as child processes, run the way an operator would, and timed."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from indexer.cli import index_info


def run_build(images: Path, manifest: Path, out: Path, *extra: str, quiet: bool = False
              ) -> tuple[float, dict, dict]:
    """`python -m indexer build [EXTRA...]`: (wall seconds, `indexer info` of the result,
    its report)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "indexer", "build", "--images", str(images),
                    "--manifest", str(manifest), "--out", str(out), "--no-progress", *extra],
                   check=True, stdout=subprocess.DEVNULL if quiet else None)
    wall = time.perf_counter() - t0
    info = index_info(out)
    return wall, info, json.loads((Path(info["path"]) / "report.json").read_text())


def start_server(index: Path, *extra: str, log_path: Path | None = None
                 ) -> tuple[subprocess.Popen, str, float]:
    """(process, "host:port", seconds from spawn to "listening on"), on a free port."""
    t0 = time.perf_counter()
    err = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "server", "--index", str(index), "--port",
                             "0", *extra], stdout=subprocess.PIPE, stderr=err, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on"):
        proc.kill()
        raise RuntimeError(f"server did not start{f'; see {log_path}' if log_path else ''}")
    return proc, line.split()[-1].removesuffix("(TLS)"), time.perf_counter() - t0


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    kb = _status_kb(pid, "VmRSS")
    return float("nan") if kb is None else kb / 1024


def high_water_mark(pid: int) -> int:
    """Peak resident memory of a process since it exec'd (Linux's VmHWM), in bytes; 0 once
    it has exited."""
    try:
        return (_status_kb(pid, "VmHWM") or 0) * 1024
    except OSError:
        return 0


def _status_kb(pid: int, key: str) -> int | None:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None
