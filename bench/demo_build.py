"""How long the demo county takes to build, per stage, and how much memory it needs.

    .venv/bin/python bench/demo_build.py            # 20,000 residents into a temporary SQLite file
    .venv/bin/python bench/demo_build.py --smoke    # 600 residents (CI)
    .venv/bin/python bench/demo_build.py --database-url postgresql+psycopg://...  # an EMPTY database

Prints the builder's own progress lines (time per stage), then the total and the peak RSS.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--residents", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--smoke", action="store_true", help="600 residents, for CI")
    parser.add_argument("--database-url", default="", help="build here instead of a temporary SQLite file")
    args = parser.parse_args()
    residents = 600 if args.smoke else args.residents

    with tempfile.TemporaryDirectory(prefix="hr-demo-bench-") as tmp:
        os.environ["HEALTHRELAY_DATA_DIR"] = tmp
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        os.environ["HEALTHRELAY_DATABASE_URL"] = url

        from healthrelay.core.db import reset_caches
        from healthrelay.core.migrate import upgrade
        from healthrelay.demo.build import build_demo_if_missing

        reset_caches()
        began = time.perf_counter()
        upgrade(url)
        migrated = time.perf_counter() - began
        print(f"database: {url.split('@')[-1]}  (migrations {migrated:.2f}s)")
        stages: list[tuple[str, float]] = []

        def progress(line: str) -> None:
            print(line, flush=True)
            match = re.match(r"\[\d+/\d+\] (\w+): .*\(([\d.]+)s, total", line)
            if match:
                stages.append((match.group(1), float(match.group(2))))

        start = time.perf_counter()
        built = build_demo_if_missing(seed=args.seed, residents=residents, progress=progress)
        total = time.perf_counter() - start
        reset_caches()
    if not built:
        print("the database already held the demo; use an empty one", file=sys.stderr)
        return 1
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print()
    print(f"{'stage':<16}{'seconds':>10}")
    for name, seconds in stages:
        print(f"{name:<16}{seconds:>10.2f}")
    print(f"{'total build':<16}{total:>10.2f}   ({residents:,} residents, seed {args.seed}, commit included)")
    print(f"peak RSS: {peak_mb:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
