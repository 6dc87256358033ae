"""The register's self-check (`python -m indexer duplicates`) at scale.

    python -m bench.selfcheck [--n 1000000] [--preset ivf-sq8] [--out out/selfcheck]

Writes an index directory of N synthetic marks (bench.synthetic vectors, the store's real
format, the family decision as the build would record it), then times
indexer.duplicates.find over all of it: every stored vector searched as a query.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from bench import synthetic
from bench.startup import write_synthetic_index
from indexer import decision, duplicates
from indexer.index.reader import open_index
from indexer.network.encoder import load_encoder

log = logging.getLogger(__name__)


def run(n: int, preset: str, out: Path) -> dict:
    encoder = load_encoder(runtime="torch")  # its identity only: nothing is encoded
    with tempfile.TemporaryDirectory(prefix="selfcheck-") as tmp:
        root = Path(tmp) / "index"
        # The family decision a real build records. bench.synthetic's "families" are 200
        # vectors each around one centre, far closer than a register's renditions, so the
        # bound and threshold are set where few pairs pass: the figure is the search.
        written = write_synthetic_index(root, encoder, synthetic.vectors(n, seed=n), preset,
                                        decision=decision.FAMILY, family_similarity=0.97,
                                        threshold=0.5)
        index = open_index(root)
        try:
            t0 = time.perf_counter()
            report = duplicates.find(index)
            seconds = time.perf_counter() - t0
            duplicates.write(report, index, out)
        finally:
            index.close()
    return {"n": n, "preset": preset, "write_s": written["write_s"], "check_s": seconds,
            "marks_per_s": n / seconds, "pairs": len(report.pairs),
            "groups": len(report.groups)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.selfcheck",
                                description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--preset", default="ivf-sq8")
    p.add_argument("--out", type=Path, default=Path("out/selfcheck"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(json.dumps(run(args.n, args.preset, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
