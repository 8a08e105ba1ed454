"""Microsoft 365 intake benchmark: the Graph mailbox adapter against the local Graph endpoint with
the latency of the real service, and Outlook's limits enforced by the endpoint.

    python -m bench.graph [-n 1000] [--runs 3] [--latency 0.05,0.15] [--after-import move|flag|delete|keep]

Each run delivers N generated customer mails into a fresh mailbox of the endpoint of
``tests/servers/graph.py`` (every request answered after a uniformly random 50-150 ms, at most 4
requests in flight per mailbox: a fifth is answered 429 and counted as a violation) and imports them
with ``GraphMailbox.poll`` into a fresh SQLite database (tickets, acknowledgements queued), then runs
one more, empty poll. It reports, as medians over the runs:

* msg/s: imported messages per second of the first poll (wall clock);
* requests per imported message, delta pages and folder lookups included (target: at most 2.1);
* the most requests the run sent in any 10 minutes, against the 10,000 quota per app and mailbox
  (runs shorter than 10 minutes: all of them), and the rate that would reach the quota;
* the most requests in flight at once, the violations the endpoint saw, 429 answers;
* the requests of the next round, which reads the moves back as removals (a delta page per 50), and of
  an empty round after it (one delta request).

Run by hand; pytest never collects this package (it is outside ``testpaths``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.ingest import machine
from helpdesk.config import validate
from helpdesk.intake.runner import Intake, utcnow
from helpdesk.mailboxes.graph import GraphMailbox
from helpdesk.mailboxes.graphapi import QUOTA, QUOTA_WINDOW
from helpdesk.oauth.tokens import Providers
from helpdesk.store.db import make_engine
from helpdesk.store.migrate import upgrade
from tests.conftest import TEST_REPLY_SECRET, base_config
from tests.mailgen import make_mail
from tests.servers.graph import GraphServer

ADDRESS = "support@contoso.example"


@dataclass
class Run:
    messages: int
    seconds: float
    requests: int
    window_max: int
    in_flight: int
    violations: int
    throttled: int
    removals: int
    empty_round: int

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def per_message(self) -> float:
        return self.requests / self.messages


def most_in_window(starts: list[float], window: float) -> int:
    """The most request starts within any ``window`` seconds."""
    best, left = 0, 0
    for right, at in enumerate(starts):
        while at - starts[left] > window:
            left += 1
        best = max(best, right - left + 1)
    return best


def one_run(n: int, latency: tuple[float, float], action: str) -> Run:
    os.environ.setdefault("HELPDESK_REPLY_SECRET", TEST_REPLY_SECRET)
    os.environ["HD_BENCH_GRAPH_TOKEN"] = "bench-token"
    with GraphServer() as server, tempfile.TemporaryDirectory() as tmp:
        server.add_mailbox(ADDRESS)
        server.tokens.add("bench-token")
        for i in range(n):
            server.deliver(ADDRESS, make_mail(subject=f"Enquiry {i}", message_id=f"bench-{i}@acme.example",
                                              sender=f"Customer {i % 97} <c{i % 97}@acme.example>"))
        data = base_config(database_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
                           oauth={"m365": {"kind": "static", "token": "${HD_BENCH_GRAPH_TOKEN}"}})
        data["channels"][0]["mailboxes"] = [{
            "name": "m365", "kind": "graph", "user": ADDRESS, "auth": "oauth2", "oauth": "m365",
            "graph_url": server.url, "after_import": action, "timeout": 30,
        }]
        config = validate(data)
        engine = make_engine(config.database_url)
        upgrade(engine)
        intake = Intake(engine, config, utcnow)
        box = GraphMailbox(config.mailboxes()[0][1], providers=Providers(config.oauth))
        server.latency = latency
        started = time.perf_counter()
        report = box.poll(intake)
        seconds = time.perf_counter() - started
        requests = len(server.hits)
        box.poll(intake)  # the moves come back as removals, a page per 50
        removals = len(server.hits) - requests
        box.poll(intake)
        empty_round = len(server.hits) - requests - removals
        box.close()
        engine.dispose()
        if report.fetched != n:
            sys.exit(f"imported {report.fetched} of {n} messages")
        starts = sorted(h.started for h in server.hits[:requests])
        return Run(
            messages=n, seconds=seconds, requests=requests, window_max=most_in_window(starts, QUOTA_WINDOW),
            in_flight=max(server.max_seen_in_flight.values(), default=0), violations=len(server.violations),
            throttled=sum(1 for h in server.hits if h.status == 429), removals=removals, empty_round=empty_round,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1000, help="messages per run (default 1000)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency", default="0.05,0.15", help="seconds per request, uniform in LOW,HIGH")
    parser.add_argument("--after-import", default="move", choices=["move", "flag", "delete", "keep"])
    args = parser.parse_args(argv)
    low, high = (float(x) for x in args.latency.split(","))
    print(f"machine: {machine()}")
    print(f"{args.n} messages, latency {low * 1000:.0f}-{high * 1000:.0f} ms per request, "
          f"after_import {args.after_import}, {args.runs} runs")
    runs = []
    for i in range(args.runs):
        run = one_run(args.n, (low, high), args.after_import)
        runs.append(run)
        print(f"  run {i + 1}: {run.rate:6.1f} msg/s, {run.per_message:.3f} requests/msg, {run.requests} requests "
              f"in {run.seconds:.1f} s, at most {run.in_flight} in flight, {run.violations} violations, "
              f"{run.throttled} x 429; next round (removals) {run.removals} requests, then an empty round "
              f"{run.empty_round} request(s)")
    rate = statistics.median(r.rate for r in runs)
    per_message = statistics.median(r.per_message for r in runs)
    window_max = max(r.window_max for r in runs)
    request_rate = statistics.median(r.requests / r.seconds for r in runs)
    print(f"median: {rate:.1f} msg/s, {per_message:.3f} Graph requests per imported message (target <= 2.1)")
    print(f"quota: at most {window_max} requests in any {QUOTA_WINDOW / 60:.0f} minutes of a run "
          f"(limit {QUOTA:,}); at {request_rate:.1f} requests/s a sustained import would reach the quota after "
          f"{QUOTA / request_rate / 60:.1f} minutes, where the client's own quota guard starts pacing "
          f"(about {QUOTA / QUOTA_WINDOW / per_message:.1f} msg/s sustained)")
    ok = per_message <= 2.1 and window_max <= QUOTA and all(r.violations == 0 for r in runs)
    print("within targets" if ok else "OUTSIDE targets")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
