"""Run every benchmark, print the tables, write the figures as JSON.

    python -m benchmarks [--quick] [--json FILE] [--markdown FILE] [--only NAME[,NAME...]]

Sections (each also runs alone as ``python -m benchmarks.<name>``):
- ``scaling``: fleet vs bare in-process engines on the same K files; N=1 vs N=2 consumers; the
  oversubscribed layouts for contrast;
- ``overhead``: per-job fixed overhead on a 10 s clip, and the Celery prefork peer side by side
  (makespan, overhead, RSS per worker);
- ``memory``: RSS/PSS per consumer for 1, 2, 4 consumers, fresh interpreters and
  ``supervisor.preload = fork`` side by side (memory, makespan, kill → replaced); the
  copy-on-write (load-then-fork) experiment behind preload's design;
- ``fleet``: the supervisor's own layout benchmark (threads chosen by the supervisor);
- ``engine``: the engine alone (load, RTF, RSS, threads-per-process layouts).
- ``clustering``: FunASR's speaker clustering vs ``cluster_speakers`` (time, peak memory, accuracy by
  windows and speaker request; few-window false splits/merges).
- ``long``: long recordings (10 min .. 4 h; quick: 10 and 20 min): peak RSS and wall time, with
  and without ``num_speakers = 2``, and the ratios against issue 12's goals.

Headline keys of the JSON: ``fleet_overhead_ratio``, ``scaling_n2_over_n1``, ``overhead_p50_ms``,
``overhead_p95_ms``, ``celery_makespan_ratio`` (fleet ÷ Celery), ``rss_per_consumer_mb``,
``extra_consumer_rss_fraction``. Figures only: nothing here is a pass/fail test. Services: the
local RabbitMQ (``FLEET_BENCH_AMQP_URL``) and SeaweedFS servers started on the spot.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SECTIONS = ("scaling", "overhead", "memory", "fleet", "engine", "clustering", "long")
HEADLINE = {
    "fleet_overhead_ratio": ("scaling", "fleet_overhead_ratio"),
    "scaling_n2_over_n1": ("scaling", "scaling_n2_over_n1"),
    "oversubscribed_over_n2": ("scaling", "oversubscribed_over_n2"),
    "overhead_p50_ms": ("overhead", "overhead_p50_ms"),
    "overhead_p95_ms": ("overhead", "overhead_p95_ms"),
    "celery_makespan_ratio": ("overhead", "celery_makespan_ratio"),
    "rss_per_consumer_mb": ("memory", "rss_per_consumer_mb"),
    "pss_per_consumer_mb": ("memory", "pss_per_consumer_mb"),
    "extra_consumer_rss_fraction": ("memory", "extra_consumer_rss_fraction"),
    "cow_saving_vs_two_consumers_mb": ("memory", "cow_saving_vs_two_consumers_mb"),
    "preload_saving_mb_n2": ("memory", "preload_saving_mb_n2"),
    "preload_saving_mb_n4": ("memory", "preload_saving_mb_n4"),
    "preload_makespan_ratio_n2": ("memory", "preload_makespan_ratio_n2"),
    "replace_s_exec": ("memory", "replace_s_exec"),
    "replace_s_fork": ("memory", "replace_s_fork"),
}


def _tables(name: str, module: Any, result: dict[str, Any]) -> str:
    for fn in ("tables", "render"):
        if hasattr(module, fn):
            return str(getattr(module, fn)(result))
    return json.dumps(result, indent=2, default=str)


def _sanitize(value: Any) -> Any:
    """JSON without NaN/Infinity (strict parsers reject them): those become null."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 10 minutes on 2 idle cores)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    parser.add_argument("--markdown", type=Path, default=None, help="write the printed tables here too")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated sections (default: {','.join(SECTIONS)})"
    )
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")

    from funasr_fleet.settings import usable_cores

    started = time.monotonic()
    out: dict[str, Any] = {
        "quick": args.quick,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": usable_cores(),
        "python": platform.python_version(),
        "sections": {},
        "errors": {},
        "seconds": {},
    }
    printed: list[str] = []
    for name in wanted:
        t = time.monotonic()
        print(f"== {name} ==", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            result = module.run(quick=args.quick)
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
            traceback.print_exc()
            out["errors"][name] = f"{type(exc).__name__}: {exc}"
            continue
        finally:
            out["seconds"][name] = round(time.monotonic() - t, 1)
        out["sections"][name] = result
        text = _tables(name, module, result)
        printed.append(f"## {name}\n\n{text}")
        print(printed[-1], flush=True)
    for key, (section, field) in HEADLINE.items():
        out[key] = out["sections"].get(section, {}).get(field)
    out["total_seconds"] = round(time.monotonic() - started, 1)
    headline = "\n".join(f"- {k}: {out[k]:.3f}" if isinstance(out[k], float) else f"- {k}: {out[k]}" for k in HEADLINE)
    printed.append(f"## headline\n\n{headline}\n")
    print(printed[-1])
    if args.json:
        args.json.write_text(json.dumps(_sanitize(out), indent=2, default=str))
    if args.markdown:
        args.markdown.write_text("\n".join(printed))
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
