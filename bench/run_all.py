"""Run every benchmark, one after the other, each in its own process:
bench/datapath_bench.py, bench/compiler_bench.py, bench/prefix_bench.py,
bench/tiers_bench.py, bench/revoke_bench.py, then bench/traffic_bench.py.
Their output (a table, then a JSON line) passes through as it comes; the last line printed
is one JSON object holding each benchmark's JSON under its name, and the
goals of all of them.

Each benchmark still runs on its own: `.venv/bin/python bench/<name>_bench.py`.
Exit status: 0 when every benchmark ran (goals are reported, never
asserted), 1 otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = (("datapath", HERE / "datapath_bench.py"), ("compiler", HERE / "compiler_bench.py"),
              ("prefix", HERE / "prefix_bench.py"), ("tiers", HERE / "tiers_bench.py"),
              ("revoke", HERE / "revoke_bench.py"), ("traffic", HERE / "traffic_bench.py"))


def run(name: str, script: Path) -> dict:
    """Run one benchmark, echoing its stdout; its last line parsed."""
    started = time.monotonic()
    last = ""
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if line.strip():
                last = line.strip()
        status = proc.wait()
    if status != 0:
        return {"error": f"{script.name} exited with status {status}", "seconds": round(time.monotonic() - started, 1)}
    try:
        result = json.loads(last)
    except json.JSONDecodeError:
        return {"error": f"{script.name}: last line is not JSON", "seconds": round(time.monotonic() - started, 1)}
    if not isinstance(result, dict):
        return {"error": f"{script.name}: last line is not a JSON object"}
    return result


def main(argv: list[str] | None = None) -> int:
    names = list(argv if argv is not None else sys.argv[1:]) or [n for n, _ in BENCHMARKS]
    unknown = set(names) - {n for n, _ in BENCHMARKS}
    if unknown:
        print(f"run_all: unknown benchmark(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    results: dict[str, dict] = {}
    for name, script in BENCHMARKS:
        if name in names:
            print(f"== {name} benchmark ({script.name})", flush=True)
            results[name] = run(name, script)
            print(flush=True)
    combined = {
        "benchmarks": list(results),
        "goals": {f"{name}.{goal}": ok for name, r in results.items() for goal, ok in (r.get("goals") or {}).items()},
        "errors": {name: r["error"] for name, r in results.items() if "error" in r},
        **results,
    }
    print(json.dumps(combined, separators=(",", ":")), flush=True)
    return 1 if combined["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
