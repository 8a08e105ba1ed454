"""Micro-benchmark of the pure mail layer: parse, bounce detection, quote splitting, fingerprint.

Times each function on every mail of the ingest benchmark's generated corpus (``bench.ingest``'s
seeded generator) and on every file of the shared corpora, and prints µs per mail: the median over
mails (each mail's time is its best of ``--runs``) and the mean (what throughput depends on).

    .venv/bin/python -m bench.mail_layer [-n 2000] [--seed 7] [--runs 5] [--corpora DIR]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.ingest import build_corpus
from helpdesk.intake.prepare import customer_text
from helpdesk.mail.bounce import detect_bounce
from helpdesk.mail.parse import parse_message
from helpdesk.mail.threading import fingerprint

DEFAULT_CORPORA = Path(__file__).resolve().parent.parent.parent / "shared" / "corpora"
_NOT_MAIL = {".json", ".md", ".png", ".wav", ".gitattributes"}


def corpus_files(root: Path) -> list[bytes]:
    """Every file of the shared corpora that is not an index, a README or a licence."""
    out = []
    for path in sorted(root.rglob("*")):
        skip = path.suffix.lower() in _NOT_MAIL or path.name.upper().startswith(("NOTICE", "LICENSE"))
        if path.is_file() and not skip:
            out.append(path.read_bytes())
    return out


def _time(func: Callable[[Any], Any], items: list[Any], runs: int) -> list[float]:
    """Best-of-``runs`` time per item, in µs."""
    best = [float("inf")] * len(items)
    gc.collect()
    gc.disable()
    try:
        for _ in range(runs):
            for i, item in enumerate(items):
                start = time.perf_counter_ns()
                func(item)
                elapsed = (time.perf_counter_ns() - start) / 1000
                if elapsed < best[i]:
                    best[i] = elapsed
    finally:
        gc.enable()
    return best


def measure(label: str, raws: list[bytes], runs: int) -> None:
    parsed = [parse_message(raw) for raw in raws]
    rows = [
        ("parse_message", _time(parse_message, raws, runs)),
        ("detect_bounce", _time(lambda m: detect_bounce(m.message), parsed, runs)),
        ("split_reply(_html)", _time(customer_text, parsed, runs)),
        ("fingerprint", _time(fingerprint, parsed, runs)),
    ]
    size = sum(len(r) for r in raws) / max(len(raws), 1) / 1024
    print(f"{label}: {len(raws)} mails, mean {size:.1f} KB")
    print(f"  {'function':<20} {'median µs':>10} {'mean µs':>10} {'max µs':>10}")
    total = 0.0
    for name, times in rows:
        mean = statistics.fmean(times)
        total += mean
        print(f"  {name:<20} {statistics.median(times):>10.1f} {mean:>10.1f} {max(times):>10.0f}")
    print(f"  {'sum of means':<20} {'':>10} {total:>10.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="generated mails (default 2000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=5, help="repetitions; each mail's best time counts")
    parser.add_argument("--corpora", type=Path, default=DEFAULT_CORPORA)
    args = parser.parse_args(argv)
    measure(f"bench mails (seed {args.seed})", build_corpus(args.n, args.seed).mails, args.runs)
    if args.corpora.is_dir():
        measure(f"shared corpora ({args.corpora})", corpus_files(args.corpora), args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
