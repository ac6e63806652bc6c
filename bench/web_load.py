"""Does the web console slow scoring down? Throughput with and without a busy reader.

The real service (real MHFD scoring in a worker process, ledger, built-in sinks, the
web console on a free port of 127.0.0.1) scores ``--count`` tiles dropped at once,
alternately with no client and with a client (its own process) that fetches the Now page, the wafer
map and ``/api/generation`` ``--rate`` times a second (what a few open browser tabs
and a Prometheus scrape do, and more). Each run is first tile copied → last verdict;
``--rounds`` alternations, and the median of each. Target: under 2 % slower.

Usage: ``python bench/web_load.py [--count 24] [--size 1024] [--rate 10] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from focuswatch import synth
from focuswatch.app import build_service
from focuswatch.config import Config, ScoringConfig, WatchConfig, WebConfig
from focuswatch.ledger import Ledger
from focuswatch.sdnotify import Notifier
from focuswatch.web import WebConsole

PAGES = ("", "wafer", "api/generation", "metrics")


def _judged(state: Path) -> int:
    led = Ledger.open(state, readonly=True)
    try:
        return int(led.connection.execute("SELECT count(*) FROM results").fetchone()[0])
    finally:
        led.close()


# The client runs in its own process, as a browser would: only the server's own work
# lands in the service's process.
_CLIENT = """
import sys, time, urllib.request
url, rate, pages = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(",")
period, n, start = 1.0 / rate, 0, time.monotonic()
try:
    while True:
        with urllib.request.urlopen(url + pages[n % len(pages)], timeout=10) as r:
            r.read()
        n += 1
        time.sleep(max(0.0, start + n * period - time.monotonic()))
except KeyboardInterrupt:
    print(n)
"""


def _client(url: str, rate: float) -> subprocess.Popen[str]:
    pages = ",".join(PAGES)
    return subprocess.Popen(
        [sys.executable, "-c", _CLIENT, url, str(rate), pages],
        stdout=subprocess.PIPE,
        text=True,
    )


def one_run(staging: Path, work: Path, *, rate: float) -> tuple[float, int]:
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
    client = _client(web.url, rate) if rate > 0 and web.url else None
    served = 0
    try:
        t0 = time.perf_counter()
        for folder in sorted(p for p in staging.iterdir() if p.is_dir()):
            shutil.copytree(folder, watch / folder.name)
        while _judged(state) < want:
            svc.turn(0.05)
        took = time.perf_counter() - t0
    finally:
        if client is not None:
            client.send_signal(signal.SIGINT)
            out, _ = client.communicate(timeout=10)
            served = int(out.strip() or 0)
        svc.stop()
    return took, served


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--count", type=int, default=24, help="tiles per run (sections of 2x2)")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rate", type=float, default=10.0, help="requests per second")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="focuswatch-webload-") as tmp:
        staging = Path(tmp) / "staging"
        synth.write_wafer(
            staging, sections=max(1, args.count // 4), rows=2, cols=2, size=args.size, seed=1
        )
        quiet: list[float] = []
        busy: list[float] = []
        requests = 0
        for r in range(args.rounds):
            quiet.append(one_run(staging, Path(tmp) / f"q{r}", rate=0)[0])
            took, n = one_run(staging, Path(tmp) / f"b{r}", rate=args.rate)
            busy.append(took)
            requests += n
    q, b = statistics.median(quiet), statistics.median(busy)
    print(f"{args.count} tiles of {args.size}² px, one worker, {args.rounds} rounds alternated")
    print(f"  no client:              {q:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in quiet)})")
    print(
        f"  {args.rate:g} requests/s:        {b:7.2f} s   "
        f"(runs: {', '.join(f'{x:.2f}' for x in busy)}; {requests} requests served)"
    )
    print(f"  slower by {100 * (b / q - 1):+.1f} % (target: under 2 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
