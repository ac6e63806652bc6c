"""Does the web console slow scoring down? Throughput with and without a busy reader.

The real service (real MHFD scoring in a worker process, ledger, built-in sinks, the
web console on a free port of 127.0.0.1) scores ``--count`` tiles dropped at once,
alternately with no client and with a client (its own process) that fetches the Now page, the wafer
map, ``/api/generation`` and ``/metrics`` ``--rate`` times a second (what a few open browser tabs
and a Prometheus scrape do, and more). Each run is first tile copied → last verdict;
``--rounds`` alternations (the order swapped every round, so a drift of the machine's
load does not favour one side), the median of each, and each round's own ratio with
their range (the machine may be shared). Wall time on a shared machine moves with the
neighbours' load, so the CPU is counted too: the service process's extra CPU time in
a polled run, as a share of what a run without a client needed (the service's CPU and
the workers' scoring time as the results record it). Target: under 2 % slower.

Usage: ``python bench/web_load.py [--count 24] [--size 1024] [--rate 10] [--rounds 3]
[--keep-alive]``. ``--server-only [--against TREE] [--seconds 5]``: the console server
by itself (a ledger scored first), its CPU per request from /proc, alternated with the
server of another checkout (before/after a change) in one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _judged import judged
from focuswatch import synth
from focuswatch.app import build_service
from focuswatch.config import Config, ScoringConfig, WatchConfig, WebConfig
from focuswatch.ledger import Ledger
from focuswatch.sdnotify import Notifier
from focuswatch.web import WebConsole

PAGES = ("", "wafer", "api/generation", "metrics")


# The client runs in its own process, as a browser would: only the server's own work
# lands in the service's process. It stops on SIGTERM (SIGINT may be ignored: a
# background job's children inherit that) and says how many pages it was served.
# With --keep-alive it holds one connection open, as a browser and Prometheus do.
_CLIENT = """
import http.client, signal, sys, time, urllib.parse, urllib.request
url, rate, pages = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(",")
keep = sys.argv[4] == "keep"
period, n, failed, start = 1.0 / rate, 0, 0, time.monotonic()
conn = None
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
while not stop:
    page = pages[(n + failed) % len(pages)]
    try:
        if keep:
            if conn is None:
                conn = http.client.HTTPConnection(urllib.parse.urlsplit(url).netloc, timeout=10)
            conn.request("GET", urllib.parse.urlsplit(url).path + page)
            conn.getresponse().read()
        else:
            with urllib.request.urlopen(url + page, timeout=10) as r:
                r.read()
        n += 1
    except (OSError, http.client.HTTPException):
        failed += 1
        if conn is not None:
            conn.close()
            conn = None
    time.sleep(max(0.0, start + (n + failed) * period - time.monotonic()))
print(n, failed)
"""


def _client(url: str, rate: float, *, keep_alive: bool) -> subprocess.Popen[str]:
    pages = ",".join(PAGES)
    return subprocess.Popen(
        [sys.executable, "-c", _CLIENT, url, str(rate), pages, "keep" if keep_alive else "new"],
        stdout=subprocess.PIPE,
        text=True,
    )


@dataclass
class Run:
    wall_s: float  # first tile copied -> last verdict
    service_cpu_s: float  # the service's own process: main loop, web server, senders
    worker_s: float  # the scoring workers' time, as the results record it
    served: int = 0
    failed: int = 0


def _scoring_s(state: Path) -> float:
    """The workers' own time (reading and scoring, as each result records it)."""
    led = Ledger.open(state, readonly=True)
    try:
        row = led.connection.execute("SELECT sum(read_ms + score_ms) FROM results").fetchone()
    finally:
        led.close()
    return float(row[0] or 0.0) / 1000.0


def one_run(staging: Path, work: Path, *, rate: float, keep_alive: bool = False) -> Run:
    watch, state = work / "watch", work / "state"
    watch.mkdir(parents=True)
    cfg = Config(
        state_dir=state,
        watch=WatchConfig(path=watch, quiet_s=0.2, observer="inotify", rescan_interval_s=3600.0),
        scoring=ScoringConfig(workers=1),
        web=WebConfig(host="127.0.0.1", port=0),
    )
    svc = build_service(cfg, notifier=Notifier(env={}))
    svc.start()
    web = next(s for s in svc.sinks if isinstance(s, WebConsole))
    want = sum(1 for _ in staging.rglob("*.tif"))
    client = _client(web.url, rate, keep_alive=keep_alive) if rate > 0 and web.url else None
    served = failed = 0
    cpu0 = time.process_time()
    try:
        t0 = time.perf_counter()
        for folder in sorted(p for p in staging.iterdir() if p.is_dir()):
            shutil.copytree(folder, watch / folder.name)
        while judged(svc) < want:
            svc.turn(0.05)
        took = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        try:
            if client is not None:
                served, failed = _stop_client(client)
        finally:
            svc.stop()
    return Run(took, cpu, _scoring_s(state), served, failed)


def _stop_client(client: subprocess.Popen[str]) -> tuple[int, int]:
    """(pages served, requests failed); (-1, -1) if it did not say."""
    client.terminate()
    try:
        out, _ = client.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        client.kill()
        client.communicate()
        return -1, -1
    served, failed = (int(x) for x in out.split())
    return served, failed


# --server-only: the console server alone in its own process, over a ledger scored
# beforehand; it writes its URL to a file (its log lines go to stdout) and serves until
# its standard input closes.
_SERVER = """
import sys
from focuswatch.config import WebConfig
from focuswatch.web import WebConsole
web = WebConsole(WebConfig(host="127.0.0.1", port=0), sys.argv[1])
web.start()
with open(sys.argv[2], "w") as f:
    f.write(web.url or "")
sys.stdin.read()
web.close()
"""


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_only(args: argparse.Namespace) -> int:
    """CPU per request of the console server by itself (``--against``: and of another
    tree's, alternated with it), over one ledger that takes a commit every 0.2 s (the
    service's heartbeat pace while it scores), polled as in a whole run."""
    import http.client
    import urllib.parse
    import urllib.request

    trees = {"this tree": str(Path(__file__).resolve().parent.parent / "daemon")}
    if args.against:
        trees["--against"] = str(Path(args.against).resolve() / "daemon")
    with tempfile.TemporaryDirectory(prefix="focuswatch-webload-") as tmp:
        staging = Path(tmp) / "staging"
        synth.write_wafer(
            staging, sections=max(1, args.count // 4), rows=2, cols=2, size=args.size, seed=1
        )
        one_run(staging, Path(tmp) / "scored", rate=0)
        state = Path(tmp) / "scored" / "state"
        servers: dict[str, tuple[subprocess.Popen[str], str]] = {}
        try:
            for name, tree in trees.items():
                url_file = Path(tmp) / f"url-{len(servers)}"
                proc = subprocess.Popen(
                    [sys.executable, "-c", _SERVER, str(state), str(url_file)],
                    env=dict(os.environ, PYTHONPATH=tree),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )
                deadline = time.monotonic() + 60
                while not (url_file.exists() and url_file.read_text()):
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit(f"the server of {tree} did not start")
                    time.sleep(0.1)
                servers[name] = (proc, url_file.read_text())
            writer = Ledger.open(state)
            used = dict.fromkeys(servers, 0.0)
            asked = dict.fromkeys(servers, 0)
            period = 1.0 / args.rate
            for r in range(args.rounds):
                for name in list(servers) if r % 2 == 0 else list(servers)[::-1]:
                    proc, url = servers[name]
                    parts = urllib.parse.urlsplit(url)
                    conn = http.client.HTTPConnection(parts.netloc, timeout=10)
                    cpu0, t0, n, wrote = _process_cpu_s(proc.pid), time.monotonic(), 0, 0.0
                    while time.monotonic() - t0 < args.seconds:
                        if time.monotonic() - wrote >= 0.2:
                            writer.set_meta("heartbeat", time.time())
                            wrote = time.monotonic()
                        page = PAGES[n % len(PAGES)]
                        if args.keep_alive:
                            conn.request("GET", parts.path + page)
                            conn.getresponse().read()
                        else:
                            with urllib.request.urlopen(url + page, timeout=10) as resp:
                                resp.read()
                        n += 1
                        time.sleep(max(0.0, t0 + n * period - time.monotonic()))
                    conn.close()
                    used[name] += _process_cpu_s(proc.pid) - cpu0
                    asked[name] += n
            writer.close()
        finally:
            for proc, _ in servers.values():
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(30)
    how = "one kept-alive connection" if args.keep_alive else "a new connection per request"
    print(
        f"the console server alone, {args.rate:g} requests/s ({how}), a commit every 0.2 s, "
        f"{args.rounds} rounds of {args.seconds:g} s"
    )
    for name in servers:
        span = args.rounds * args.seconds
        print(
            f"  {name:10s} {1000 * used[name] / asked[name]:5.2f} ms of its CPU per request, "
            f"{100 * used[name] / span:4.1f} % of a core ({asked[name]} requests)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=24, help="tiles per run (sections of 2x2)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rate", type=float, default=10.0, help="requests per second")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--keep-alive",
        action="store_true",
        help="the client keeps its connection open (a browser does); default: one per request",
    )
    ap.add_argument(
        "--server-only",
        action="store_true",
        help="measure the console server by itself: its CPU per request (Linux)",
    )
    ap.add_argument(
        "--against",
        metavar="TREE",
        help="with --server-only: also a server from this checkout (its daemon/), alternated",
    )
    ap.add_argument(
        "--seconds", type=float, default=5.0, help="with --server-only: each round's length"
    )
    args = ap.parse_args(argv)
    if args.server_only:
        return server_only(args)
    with tempfile.TemporaryDirectory(prefix="focuswatch-webload-") as tmp:
        staging = Path(tmp) / "staging"
        synth.write_wafer(
            staging, sections=max(1, args.count // 4), rows=2, cols=2, size=args.size, seed=1
        )
        quiet: list[Run] = []
        busy: list[Run] = []
        for r in range(args.rounds):
            for side in ("quiet", "busy") if r % 2 == 0 else ("busy", "quiet"):
                if side == "quiet":
                    quiet.append(one_run(staging, Path(tmp) / f"q{r}", rate=0))
                else:
                    busy.append(
                        one_run(
                            staging, Path(tmp) / f"b{r}", rate=args.rate, keep_alive=args.keep_alive
                        )
                    )
    q = statistics.median(x.wall_s for x in quiet)
    b = statistics.median(x.wall_s for x in busy)
    ratios = [100 * (bb.wall_s / qq.wall_s - 1) for qq, bb in zip(quiet, busy, strict=True)]
    # What the polling costs in CPU: the service process's extra CPU in a busy run, as
    # a share of all the CPU the run needed (service and workers) without a client.
    costs = [
        100 * (bb.service_cpu_s - qq.service_cpu_s) / (qq.service_cpu_s + qq.worker_s)
        for qq, bb in zip(quiet, busy, strict=True)
    ]
    # The same cost per page served: what one request costs the service's process,
    # whatever the run's length (a loaded machine lengthens runs, and so adds pages).
    per_page = [
        1000 * (bb.service_cpu_s - qq.service_cpu_s) / bb.served
        for qq, bb in zip(quiet, busy, strict=True)
        if bb.served > 0
    ]
    served = sum(x.served for x in busy)
    failed = sum(x.failed for x in busy)
    polled = sum(x.wall_s for x in busy)

    def runs(xs: list[Run]) -> str:
        return ", ".join(f"{x.wall_s:.2f}" for x in xs)

    how = "one kept-alive connection" if args.keep_alive else "a new connection per request"
    print(
        f"{args.count} tiles of {args.size}² px, one worker, {args.rounds} rounds alternated; "
        f"the client: {how}"
    )
    print(f"  no client:           {q:7.2f} s   (runs: {runs(quiet)})")
    print(
        f"  {args.rate:g} requests/s:     {b:7.2f} s   (runs: {runs(busy)}; {served} pages "
        f"served, {served / polled:.1f}/s, {failed} failed)"
    )
    print(f"  wall time: slower by {100 * (b / q - 1):+.1f} % (medians; target: under 2 %)")
    print(
        f"    each round: {', '.join(f'{x:+.1f} %' for x in ratios)} "
        f"(range {min(ratios):+.1f} to {max(ratios):+.1f} %)"
    )
    print(
        f"  CPU: the service process {statistics.median(x.service_cpu_s for x in quiet):.2f} s "
        f"quiet, {statistics.median(x.service_cpu_s for x in busy):.2f} s polled; the "
        f"workers' scoring {statistics.median(x.worker_s for x in quiet):.2f} s quiet, "
        f"{statistics.median(x.worker_s for x in busy):.2f} s polled"
    )
    print(
        f"  polling costs {statistics.median(costs):+.1f} % of the run's CPU (median; each "
        f"round: {', '.join(f'{x:+.1f}' for x in costs)}; range {min(costs):+.1f} to "
        f"{max(costs):+.1f} %)"
    )
    if per_page:
        print(
            f"  per page served: {statistics.median(per_page):.1f} ms of the service's CPU "
            f"(median; each round: {', '.join(f'{x:.1f}' for x in per_page)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
