"""`eventkeep bench overload`: a real `eventkeep serve` driven by wrk first at a load it sustains,
then at about ten times that rate; prints the admitted rate, the refused rate (503 OVERLOADED or
STORE_UNAVAILABLE, 429) and the admitted requests' p99, the server's peak memory, and checks that
every acknowledged command is in the store.

The workload is `POST /v1/users` (one event each, every email new). The sustained phase is wrk's
closed loop on a few connections (each sends its next command when the last is answered): the
rate the server sustains. The overload phase opens many connections, each pausing between its
requests so that together they offer `--factor` times that rate (a refused client that retried at
once would offer far more); short trial runs first find the pause that offers it (an answer's own
time is part of each connection's cycle), and the report prints the rate actually offered beside
the sustained one. The admitted p99 is measured on the client by a probe that sends one command
at a time during the overload (wrk's own percentiles mix refused answers, which are fast, into
the admitted ones), and on the server by its latency histogram.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

WRK_SCRIPT = r"""
counter, ok, refused, other = 0, 0, 0, 0  -- globals: done() reads them with thread:get
local threads = {}
function setup(thread)
  thread:set("tag", "RUN" .. tostring(#threads))
  table.insert(threads, thread)
end
function delay()
  return DELAY_MS
end
function request()
  counter = counter + 1
  local body = string.format(
    '{"email":"b%s-%d@bench.example","first_name":"Bench","last_name":"Load"}', tag, counter)
  return wrk.format("POST", "/v1/users", nil, body)
end
function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1
  elseif status == 503 or status == 429 then refused = refused + 1
  else other = other + 1; io.stderr:write("unexpected " .. status .. " " .. body .. "\n") end
end
function done(summary, latency, requests)
  local t = {ok = 0, refused = 0, other = 0}
  for _, thread in ipairs(threads) do
    t.ok = t.ok + thread:get("ok")
    t.refused = t.refused + thread:get("refused")
    t.other = t.other + thread:get("other")
  end
  io.write(string.format(
    'BENCH {"ok":%d,"refused":%d,"other":%d,"errors":%d,"seconds":%f,"p50_ms":%f,"p99_ms":%f}\n',
    t.ok, t.refused, t.other,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
"""


@dataclass
class Phase:
    connections: int
    ok: int
    refused: int
    other: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    steady: Steady | None = None

    @property
    def admitted_rate(self) -> float:
        return self.ok / self.seconds

    @property
    def refused_rate(self) -> float:
        return self.refused / self.seconds

    @property
    def offered_rate(self) -> float:
        return (self.ok + self.refused + self.other) / self.seconds


@dataclass
class Probe:
    """One command at a time, as a client would send them, timed on the client."""

    base: str
    headers: dict[str, str]
    admitted: list[float] = field(default_factory=list)
    refused: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.base, headers=self.headers, timeout=30) as client:
            while not self.stopping.is_set():
                body = {
                    "email": f"p{uuid.uuid4().hex}@bench.example",
                    "first_name": "Probe",
                    "last_name": "Load",
                }
                started = time.perf_counter()
                try:
                    answer = client.post("/v1/users", json=body)
                except httpx.HTTPError:
                    continue
                elapsed = time.perf_counter() - started
                if answer.is_success:
                    self.admitted.append(elapsed)
                elif answer.status_code in (429, 503):
                    self.refused += 1
                    time.sleep(0.01)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rss_kib(pid: int) -> int:
    """Resident memory of `pid` and its children (the workers), in KiB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for each in pids:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_wrk(
    base: str,
    key: str,
    connections: int,
    seconds: float,
    script: Path,
    pause_ms: int = 0,
    window: Counting | None = None,
) -> Phase:
    """wrk for `seconds`; each connection pauses `pause_ms` after each answer before its next
    request (0: back to back, wrk's closed loop). With `window`, the server's own counts are
    read after its `ramp` seconds and again after its `seconds` (see `Counting`)."""
    threads = max(1, min(4, connections))
    # Emails unique to this run of wrk: each phase registers new users only.
    run = uuid.uuid4().hex[:12] + "-"
    script.write_text(WRK_SCRIPT.replace("RUN", run).replace("DELAY_MS", str(pause_ms)))
    total = seconds + (window.ramp + window.seconds if window else 0)
    if window is not None:
        window.open()
    wrk = subprocess.Popen(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(total))}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            "-H",
            f"Authorization: Bearer {key}",
            "-H",
            "Content-Type: application/json",
            base,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    steady = window.measure() if window else None
    stdout, stderr = wrk.communicate()
    if wrk.returncode:
        raise RuntimeError(f"wrk failed ({wrk.returncode}): {stderr[-500:]}")
    unexpected = stderr.splitlines()
    if unexpected:
        print(f"{len(unexpected)} unexpected answers, e.g. {unexpected[0][:300]}", file=sys.stderr)
    line = next(line for line in stdout.splitlines() if line.startswith("BENCH "))
    phase = Phase(connections=connections, **json.loads(line.removeprefix("BENCH ")))
    phase.steady = steady
    return phase


@dataclass
class Steady:
    """Rates the server counted in a window of a run, once its connections were open."""

    seconds: float
    offered_per_s: float  # requests that reached the server: answered or refused at admission
    admitted_per_s: float  # answered 2xx
    refused_per_s: float  # 503 (at admission or STORE_UNAVAILABLE) or 429


@dataclass
class Counting:
    """Reads the server's counters of `POST /v1/users` (answers by status, and refusals at
    admission) every second of a run, and gives the rates between the first reading after
    `ramp` seconds and the last, `seconds` later.

    wrk's own totals start with its connections opening: hundreds at once wait in the
    server's accept queue while its event loop is busy (seconds, under overload), so a short
    run's totals understate the rate its connections offer once open. The readings go over
    one connection opened before wrk's (a new one would wait in that queue too), read often
    enough that the server keeps it open."""

    base: str
    admin_key: str
    ramp: float = 4.0
    seconds: float = 4.0
    _client: httpx.Client | None = None

    def open(self) -> None:
        self._client = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=60
        )
        self.counts()

    def measure(self) -> Steady:
        started = time.monotonic()
        readings: list[tuple[float, tuple[float, float, float]]] = []
        while (now := time.monotonic()) - started < self.ramp + self.seconds:
            if now - started >= self.ramp:
                readings.append((now, self.counts()))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - now)))
        if self._client is not None:
            self._client.close()
        (first, before), (last, after) = readings[0], readings[-1]
        took = max(last - first, 1e-9)
        ok, refused, other = (b - a for a, b in zip(before, after, strict=True))
        return Steady(
            seconds=round(took, 2),
            offered_per_s=round((ok + refused + other) / took, 1),
            admitted_per_s=round(ok / took, 1),
            refused_per_s=round(refused / took, 1),
        )

    def counts(self) -> tuple[float, float, float]:
        """(answered 2xx, refused: 503 or 429, other answers) so far."""
        assert self._client is not None, "open() first"
        text = self._client.get("/metrics").text
        ok = refused = other = 0.0
        for line in text.splitlines():
            if line.startswith("eventkeep_admission_refused_total "):
                refused += float(line.rsplit(" ", 1)[1])
            elif line.startswith("eventkeep_http_requests_total{") and (
                'route="/v1/users"' in line and 'method="POST"' in line
            ):
                status = line.split('status="', 1)[1].split('"', 1)[0]
                value = float(line.rsplit(" ", 1)[1])
                if status.startswith("2"):
                    ok += value
                elif status in ("503", "429"):
                    refused += value
                else:
                    other += value
        return ok, refused, other


MAX_PACING_TRIALS = 6
PACING_TOLERANCE = 1.2  # a trial offering up to this times the rate asked is taken
PACING_MARGIN = 1.1  # the overload aims at this times `--factor` times the sustained rate


@dataclass
class Pacing:
    """The pause that makes `connections` offer `rate`, found by trial runs."""

    rate: float
    connections: int
    pause_ms: int
    trials: list[dict[str, float]] = field(default_factory=list)
    acknowledged: int = 0  # commands the trial runs had acknowledged


Trial = Callable[[int], tuple[float, int]]  # a pause (ms) -> rate offered, commands acknowledged


def pace(trial: Trial, connections: int, rate: float, held: int) -> Pacing:
    """Finds each connection's pause so that together they offer `rate` requests a second.

    A connection's cycle is its pause plus the time its answer takes, and under overload an
    answer (even a refusal) waits for the server's busy event loop, so a pause computed from
    the rate alone offers too little. Each short trial measures the rate offered (counted by
    the server once the connections are open) and the answer time it implies, and the next
    pause takes that time off, staying strictly between the pauses already seen to offer too
    much and too little; a few trials settle it.
    The `held` connections the server keeps admitted wait for their answers, so only the others
    are counted as cycling."""
    cycling = max(1, connections - held)
    first = max(1, round(cycling / rate * 1e3))
    pacing = Pacing(rate=rate, connections=connections, pause_ms=first)
    enough: int | None = None  # the longest pause seen to offer at least `rate`
    too_little: int | None = None  # the shortest pause seen to offer less
    pause = first
    for _ in range(MAX_PACING_TRIALS):
        offered, acknowledged = trial(pause)
        offered = max(offered, 1.0)
        pacing.acknowledged += acknowledged
        pacing.trials.append({"pause_ms": pause, "offered_per_s": round(offered, 1)})
        if offered >= rate:
            enough = pause if enough is None else max(enough, pause)
            if offered <= rate * PACING_TOLERANCE:
                break
        else:
            too_little = pause if too_little is None else min(too_little, pause)
            if pause == 0:
                break  # back to back already: more is not to be had from these connections
        estimate = _next_pause(pacing.trials, cycling, rate)
        low = -1 if enough is None else enough
        high = too_little if too_little is not None else max(estimate, low + 1) + 1
        if high - low <= 1:
            break  # no whole millisecond left between them
        pause = min(max(estimate, low + 1), high - 1)
        if enough is not None and too_little is not None and not low < estimate < high:
            pause = (low + high) // 2
    pacing.pause_ms = enough if enough is not None else pause
    return pacing


def _next_pause(trials: list[dict[str, float]], cycling: int, rate: float) -> int:
    """The pause to try next: through the last two trials (a secant: the offered rate falls as
    the pause grows), or after one, the cycle the rate asks for less the answer time the trial
    implies (answers get faster as the pause grows, so this alone can overshoot)."""
    pause, offered = trials[-1]["pause_ms"], trials[-1]["offered_per_s"]
    if len(trials) >= 2 and trials[-2]["offered_per_s"] != offered:
        before, offered_before = trials[-2]["pause_ms"], trials[-2]["offered_per_s"]
        slope = (pause - before) / (offered - offered_before)
        return round(pause + (rate - offered) * slope)
    answer_s = max(0.0, cycling / offered - pause / 1e3)
    return round((cycling / rate - answer_s) * 1e3)


def admitted_histogram(base: str, admin: str) -> dict[float, float]:
    """The server's cumulative latency buckets of the admitted `POST /v1/users` so far."""
    text = httpx.get(
        f"{base}/metrics", headers={"Authorization": f"Bearer {admin}"}, timeout=60
    ).text
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("eventkeep_http_request_duration_seconds_bucket{") and (
            'route="/v1/users"' in line and 'status="201"' in line and 'method="POST"' in line
        ):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float(le)] = buckets.get(float(le), 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def p99_between(before: dict[float, float], after: dict[float, float]) -> float | None:
    """p99 in ms (a bucket's upper bound) of the answers counted between two histograms."""
    buckets = {bound: count - before.get(bound, 0.0) for bound, count in after.items()}
    if not buckets or buckets[max(buckets)] <= 0:
        return None
    total = buckets[max(buckets)]
    for bound in sorted(buckets):
        if buckets[bound] >= 0.99 * total:
            return bound * 1000
    return None


def overload(
    *,
    seconds: float,
    base_connections: int,
    factor: float,
    overload_connections: int,
    workers: int,
    max_in_flight: int | None,
    home: Path | None,
) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: run infra/bench-tools")
    from eventkeep.bootstrap import build
    from eventkeep.settings import Settings

    scratch = Path(tempfile.mkdtemp(prefix="eventkeep-bench-"))
    env = dict(os.environ)
    port = _free_port()
    env |= {
        "EVENTKEEP_PORT": str(port),
        "EVENTKEEP_RATE_LIMIT": "0",  # the admission limit is under test, not the key's
        "EVENTKEEP_LOG_LEVEL": "WARNING",
        "EVENTKEEP_HOME": str(home or scratch / "home"),
    }
    if max_in_flight is not None:
        env["EVENTKEEP_MAX_IN_FLIGHT"] = str(max_in_flight)
    settings = Settings(home=Path(env["EVENTKEEP_HOME"]))
    client_key = _new_key(env, "client")
    admin_key = _new_key(env, "admin")  # for the server's /metrics
    with build(settings, role="bench") as system:
        head_before = system.recorder.max_notification_id() or 0
    server = subprocess.Popen(
        [sys.executable, "-m", "eventkeep", "serve", "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(scratch / "serve.log", "wb"),  # noqa: SIM115 (closed with the process)
    )
    base = f"http://127.0.0.1:{port}"
    script = scratch / "overload.lua"
    try:
        _wait_ready(base, server)
        warm_up = run_wrk(base, client_key, base_connections, 2, script)
        sustained = run_wrk(base, client_key, base_connections, seconds, script)
        rss_before = _rss_kib(server.pid)
        probe = Probe(base, {"Authorization": f"Bearer {client_key}"})
        prober = threading.Thread(target=probe.run, daemon=True)
        peak = [rss_before]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                peak[0] = max(peak[0], _rss_kib(server.pid))
                sampling.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        prober.start()
        target = factor * sustained.admitted_rate
        histogram_before = admitted_histogram(base, admin_key)
        admitted_at_once = workers * (
            max_in_flight or Settings.model_fields["max_in_flight"].default
        )
        counting = Counting(base, admin_key, ramp=3, seconds=4)

        def trial(pause_ms: int) -> tuple[float, int]:
            run = run_wrk(base, client_key, overload_connections, 1, script, pause_ms, counting)
            assert run.steady is not None
            return run.steady.offered_per_s, run.ok

        # Aimed a little above: a run offers within about 10 % of its trials on these cores.
        pacing = pace(trial, overload_connections, target * PACING_MARGIN, admitted_at_once)
        overloaded = run_wrk(
            base,
            client_key,
            overload_connections,
            1,
            script,
            pacing.pause_ms,
            Counting(base, admin_key, ramp=4, seconds=seconds),
        )
        steady = overloaded.steady
        assert steady is not None
        probe.stopping.set()
        prober.join(35)
        sampling.set()
        sampler.join(2)
        server_p99 = p99_between(histogram_before, admitted_histogram(base, admin_key))
        alive = server.poll() is None
    finally:
        server.terminate()
        server.wait(30)
    with build(settings, role="bench") as system:
        stored = (system.recorder.max_notification_id() or 0) - head_before
    acknowledged = (
        warm_up.ok + sustained.ok + pacing.acknowledged + overloaded.ok + len(probe.admitted)
    )
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        "mode": settings.mode,
        "workers": workers,
        "max_in_flight": max_in_flight or Settings.model_fields["max_in_flight"].default,
        "sustained": {
            "connections": sustained.connections,
            "admitted_per_s": round(sustained.admitted_rate, 1),
            "p50_ms": round(sustained.p50_ms, 2),
            "p99_ms": round(sustained.p99_ms, 2),
        },
        "overload": {
            "connections": overloaded.connections,
            "target_per_s": round(target, 1),
            "pause_ms": pacing.pause_ms,
            "pacing_trials": pacing.trials,
            # Counted by the server over `window_s`, once the connections were open.
            "window_s": steady.seconds,
            "offered_per_s": steady.offered_per_s,
            "offered_vs_sustained": round(steady.offered_per_s / sustained.admitted_rate, 1),
            "admitted_per_s": steady.admitted_per_s,
            "refused_per_s": steady.refused_per_s,
            # wrk's totals, from its first connection to its last answer.
            "whole_run_offered_per_s": round(overloaded.offered_rate, 1),
            "whole_run_admitted_per_s": round(overloaded.admitted_rate, 1),
            "whole_run_refused_per_s": round(overloaded.refused_rate, 1),
            "other_answers": overloaded.other,
            "socket_errors": overloaded.errors,
            "admitted_p99_ms_client_probe": round(percentile(probe.admitted, 0.99) * 1000, 2),
            "admitted_p50_ms_client_probe": round(percentile(probe.admitted, 0.50) * 1000, 2),
            "probe_admitted": len(probe.admitted),
            "probe_refused": probe.refused,
            # The admitted answers of the trials and the overload, from the server's histogram.
            "admitted_p99_ms_server_histogram_bound": server_p99,
            "all_answers_p99_ms_wrk": round(overloaded.p99_ms, 2),
        },
        "memory": {"rss_mib_before": rss_before // 1024, "rss_mib_peak": peak[0] // 1024},
        "server_alive_after": alive,
        "acknowledged_commands": acknowledged,
        "events_stored": stored,
        "nothing_acknowledged_lost": stored >= acknowledged,
    }


def _new_key(env: dict[str, str], role: str) -> str:
    """A key made by `eventkeep keys create` (it prints the key alone on its last line)."""
    made = subprocess.run(
        [sys.executable, "-m", "eventkeep", "keys", "create", "--role", role, "--name", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


def _wait_ready(base: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("eventkeep serve exited before it was ready")
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("eventkeep serve was not ready within 60 s")
