"""The watchdog's, the reaper's and the restart budget's decisions over plain values, the
probe against a local server, and the recovery loop after a wedge with the engine and
the reaper swapped for stand-ins through its parameters (the real run is
test_watchdog.py)."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from launch.exitcodes import exit_code_for
from orchestrator.errors import EngineWedged
from orchestrator.ops.supervision import reaper
from orchestrator.ops.supervision.budget import RestartBudget, decide
from orchestrator.ops.supervision.recovery import RecoveryPolicy, serve_supervised
from orchestrator.ops.supervision.supervisor import Supervisor
from orchestrator.ops.supervision.watchdog import (ERROR, OK, PROBE, PROBE_MARK, STALL, TIMEOUT, Prober, Watch,
                                                   Watchdog, Wedge, judge, poll_interval, probe_due, probe_verdict,
                                                   quiet_probes)
from orchestrator.serve.compat import EngineCounters, read_engine_counters, server_api_key

from test_supervision_units import SERVING, free_port, get


# --- judge: the counters ----------------------------------------------------------------
def test_running_without_tokens_for_the_stall_timeout_is_a_wedge():
    w, wedge = judge(Watch(), EngineCounters(2, 100), now=10.0, stall=8)
    assert wedge is None and w.progress_at == 10.0
    w, wedge = judge(w, EngineCounters(2, 100), now=17.9, stall=8)
    assert wedge is None
    w, wedge = judge(w, EngineCounters(2, 100), now=18.0, stall=8)
    assert wedge.cause == STALL and wedge.silent_s == pytest.approx(8.0)
    assert "2 request(s) running and no token produced for 8.0 s" in wedge.describe()


def test_tokens_moving_or_idle_is_no_wedge():
    w, _ = judge(Watch(), EngineCounters(2, 100), now=0.0, stall=8)
    for t, tokens in ((5.0, 140), (12.0, 190), (19.0, 230)):  # slow but moving
        w, wedge = judge(w, EngineCounters(2, tokens), now=t, stall=8)
        assert wedge is None
    # Idle for an hour, then a request: it gets the whole stall timeout.
    w, _ = judge(w, EngineCounters(0, 230), now=3600.0, stall=8)
    w, wedge = judge(w, EngineCounters(1, 230), now=3601.0, stall=8)
    assert wedge is None
    assert judge(w, EngineCounters(1, 230), now=3608.0, stall=8)[1] is not None


def test_counters_reset_by_an_engine_restart_count_as_progress():
    w, _ = judge(Watch(), EngineCounters(1, 5000), now=0.0, stall=8)
    w, wedge = judge(w, EngineCounters(1, 3), now=7.0, stall=8)
    assert wedge is None and w.progress_at == 7.0


def test_without_vllms_metrics_only_the_probe_decides():
    w = Watch(progress_at=0.0, probe_at=0.0)
    assert judge(w, None, now=999.0, stall=8) == (w, None)
    assert probe_due(w, None, now=4.0, interval=4)  # metrics off: probe even under load


# --- the probe --------------------------------------------------------------------------
def test_probe_only_when_idle_on_and_due():
    w = Watch(probe_at=10.0)
    assert not probe_due(w, EngineCounters(0, 0), now=13.9, interval=4)
    assert probe_due(w, EngineCounters(0, 0), now=14.0, interval=4)
    assert not probe_due(w, EngineCounters(1, 0), now=99.0, interval=4)  # busy: the counters tell
    assert not probe_due(w, EngineCounters(0, 0), now=99.0, interval=0)  # --probe-interval 0: off


def test_a_probe_is_a_wedge_only_when_it_times_out():
    wedge = probe_verdict(TIMEOUT, 8.0, stall=8)
    assert wedge.cause == PROBE and "did not finish within 8 s" in wedge.reason
    assert probe_verdict(OK, 0.1, 8) is None
    assert probe_verdict(ERROR, 0.1, 8) is None  # vLLM answered: a dead engine is vLLM's to report


def test_no_probe_and_no_verdict_once_the_server_is_stopping():
    """SIGTERM/SIGINT: vLLM shuts its tokenizer pool before it drains, and a probe landing
    then makes it log a traceback; a probe that a drain held is no wedge."""
    w = Watch(probe_at=0.0)
    assert probe_due(w, EngineCounters(0, 0), now=99.0, interval=4)
    assert not probe_due(w, EngineCounters(0, 0), now=99.0, interval=4, stopping=True)
    assert not probe_due(w, None, now=99.0, interval=4, stopping=True)
    assert probe_verdict(TIMEOUT, 8.0, stall=8, stopping=True) is None


def test_poll_is_a_twelfth_of_the_stall_within_bounds():
    assert poll_interval(60) == 5.0 and poll_interval(8) == pytest.approx(8 / 12) and poll_interval(1) == 0.5


class Server:
    """A local stand-in for vLLM's server: /health 200; completions answered at once,
    or held for `hold` seconds; what it got is kept."""

    def __init__(self, hold: float = 0.0) -> None:
        self.hold, self.got = hold, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._send(200, b"")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.got.append((self.path, dict(self.headers), body))
                time.sleep(outer.hold)
                self._send(200, b'{"choices": [{"text": "x"}]}')

            def _send(self, code, body):
                try:
                    self.send_response(code)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_prober_sends_a_recognisable_one_token_request():
    server = Server()
    try:
        outcome, _ = Prober(server.url, "tiny", api_key="k1")(timeout=5)
        assert outcome == OK
        path, headers, body = server.got[0]
        assert path == f"/v1/completions?{PROBE_MARK}" and body["max_tokens"] == 1 and body["model"] == "tiny"
        assert headers["X-Request-Id"] == "spark-vllm-probe-1" and headers["Authorization"] == "Bearer k1"
        assert body["user"] == "spark-vllm-watchdog"
        server.hold = 3
        outcome, seconds = Prober(server.url, "tiny")(timeout=0.5)
        assert outcome == TIMEOUT and 0.4 < seconds < 2
    finally:
        server.close()
    assert Prober(server.url, "tiny")(timeout=1)[0] == ERROR  # refused: no verdict


def test_probe_lines_stay_out_of_the_access_log(caplog):
    quiet_probes()
    access = logging.getLogger("uvicorn.access")
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "POST", f"/v1/completions?{PROBE_MARK}", "1.1", 200)
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "POST", "/v1/completions", "1.1", 200)
    assert [r.args[2] for r in caplog.records] == ["/v1/completions"]


# --- vLLM's counters, as compat reads them ----------------------------------------------------
def test_read_engine_counters_sums_vllms_series():
    registry = CollectorRegistry()
    assert read_engine_counters(registry) is None  # not registered yet (or --disable-log-stats)
    running = Gauge("vllm:num_requests_running", "", ["model_name", "engine"], registry=registry)
    gen = Counter("vllm:generation_tokens", "", ["model_name", "engine"], registry=registry)
    prompt = Counter("vllm:prompt_tokens", "", ["model_name", "engine"], registry=registry)
    running.labels("m", "0").set(2)
    running.labels("m", "1").set(1)
    gen.labels("m", "0").inc(40)
    prompt.labels("m", "0").inc(7)
    assert read_engine_counters(registry) == EngineCounters(3, 47)


def test_server_api_key_as_vllm_reads_it():
    class Args:
        api_key = ["", "k2"]
    assert server_api_key(Args(), {"VLLM_API_KEY": "env"}) == "k2"
    Args.api_key = None
    assert server_api_key(Args(), {"VLLM_API_KEY": "env"}) == "env" and server_api_key(Args(), {}) is None


# --- the budget ---------------------------------------------------------------------------
def test_budget_allows_max_restarts_within_the_window_with_growing_pauses():
    b = RestartBudget(max_restarts=3, window=3600, first_pause=5, max_pause=300)
    pauses = []
    past: tuple[float, ...] = ()
    for t in (100.0, 200.0, 300.0):
        v = decide(b, past, t)
        assert v.restart
        pauses.append(v.pause)
        past += (t,)
    assert pauses == [5, 10, 20]
    spent = decide(b, past, 400.0)
    assert not spent.restart and spent.used == 3 and "--max-restarts 3 is spent" in spent.describe()
    again = decide(b, past, 100.0 + 3600)  # the first fell out of the window
    assert again.restart and again.used == 2 and again.pause == 20


def test_budget_zero_never_restarts_and_pauses_are_capped():
    assert not decide(RestartBudget(max_restarts=0), (), 0.0).restart
    assert decide(RestartBudget(max_restarts=20, first_pause=5, max_pause=300), tuple(range(10)), 10.0).pause == 300
    with pytest.raises(ValueError):
        RestartBudget(max_restarts=-1)


# --- the reaper's selection ----------------------------------------------------------------
def actor(cls, job, pid, state="ALIVE", node="n2", ip="192.168.100.11"):
    return {"ActorClassName": cls, "JobID": job, "Pid": pid, "State": state,
            "Address": {"NodeID": node, "IPAddress": ip}}


def test_reaper_selects_vllms_workers_and_their_jobs_placement_groups():
    actors = {"a1": actor("RayWorkerProc", "0a000000", 11), "a0": actor("RayWorkerProc", "0a000000", 10, node="n1",
                                                                        ip="192.168.100.10"),
              "old": actor("RayWorkerProc", "09000000", 9, state="DEAD"), "x": actor("Other", "0b000000", 12)}
    groups = {"ffff0a000000": {"state": "CREATED"}, "eeee09000000": {"state": "REMOVED"},
              "dddd0b000000": {"state": "CREATED"}}
    r = reaper.select(actors, groups)
    assert [(x.ip, x.pid) for x in r.ranks] == [("192.168.100.10", 10), ("192.168.100.11", 11)]
    assert r.groups == ("ffff0a000000",)  # the workers' job's; another job's is left alone
    ended = reaper.Ended((reaper.NodeEnd("192.168.100.10", gone=(10,)),
                          reaper.NodeEnd("192.168.100.11", killed=(11,), unlinked=("/dev/shm/a", "/dev/shm/b"))), 1, ())
    assert ended.describe() == ("tensor-parallel workers: 192.168.100.10: pid 10 already ended; 192.168.100.11: "
                                "pid 11 killed, 2 /dev/shm file(s) removed; 1 placement group(s) removed")


def test_shm_paths_from_proc_maps():
    maps = ("7f0000000000-7f0000400000 rw-s 00000000 00:1a 123 /dev/shm/35587-tp:0-[0-1]-cpushm_1\n"
            "7f0000400000-7f0000800000 rw-s 00000000 00:1a 124 /dev/shm/plasma0 (deleted)\n"
            "7f0000800000-7f0000900000 r-xp 00000000 08:01 99 /usr/lib/libc.so.6\n"
            "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n")
    assert reaper.shm_paths(maps) == {"/dev/shm/35587-tp:0-[0-1]-cpushm_1"}


def test_end_here_unlinks_only_what_no_live_process_maps(tmp_path):
    """On this machine: a file nobody maps goes; one this process maps stays."""
    import mmap
    import os

    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    if shm is None:
        pytest.skip("no /dev/shm")
    free, held = f"{shm}/svtest-{os.getpid()}-free", f"{shm}/svtest-{os.getpid()}-held"
    for path in (free, held):
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)
    with open(held, "r+b") as f, mmap.mmap(f.fileno(), 4096) as mapped:
        try:
            killed, gone, unlinked = reaper.end_here([2 ** 22 + 7], [free, held])
            assert (killed, gone, unlinked) == ([], [2 ** 22 + 7], [free]) and mapped[0] == 0
            assert not os.path.exists(free) and os.path.exists(held)
        finally:
            os.unlink(held)


# --- the thread and the recovery loop, with stand-ins -------------------------------------------
def test_watchdog_thread_sees_an_unanswered_probe_and_stops_the_engine():
    server, stops = Server(hold=5), []
    try:
        dog = Watchdog(server.url + "/health", Prober(server.url, "tiny"), lambda: stops.append(1) or [4242],
                       snapshot=lambda: "remains", stall=0.5, probe_interval=0.2, read=lambda: EngineCounters(0, 0),
                       poll=0.05)
        with dog:
            deadline = time.monotonic() + 10
            while dog.wedge is None and time.monotonic() < deadline:
                time.sleep(0.05)
        assert dog.wedge.cause == PROBE and dog.remains == "remains" and stops
    finally:
        server.close()


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_watchdog_stands_down_when_the_server_stops_with_a_probe_in_flight():
    """The stop comes while a probe is held (a drain): the probe's timeout is no wedge,
    nothing is killed, and no probe follows."""
    server, stops, stopping = Server(hold=2), [], threading.Event()
    try:
        dog = Watchdog(server.url + "/health", Prober(server.url, "tiny"), lambda: stops.append(1) or [4242],
                       stall=0.5, probe_interval=0.2, read=lambda: EngineCounters(0, 0), poll=0.05,
                       stopping=stopping)
        with dog:
            wait_until(lambda: server.got)
            stopping.set()
            time.sleep(1.5)  # the probe times out after 0.5 s; probes were due every 0.2 s
        assert dog.wedge is None and stops == [] and len(server.got) == 1
    finally:
        server.close()


def test_watchdog_judges_no_stall_once_the_server_is_stopping():
    """Requests running, then the stop: the counters freeze (the drain's end, a slow
    shutdown) for longer than the stall timeout, and that is no wedge."""
    server, stops, stopping, tokens = Server(), [], threading.Event(), [0]

    def read():
        if not stopping.is_set():
            tokens[0] += 1  # generating
        return EngineCounters(1, tokens[0])

    try:
        dog = Watchdog(server.url + "/health", Prober(server.url, "tiny"), lambda: stops.append(1) or [4242],
                       snapshot=lambda: "remains", stall=0.3, probe_interval=0, read=read, poll=0.05,
                       stopping=stopping)
        with dog:
            wait_until(lambda: dog.remains == "remains" and tokens[0] > 3)  # armed and judging
            stopping.set()
            time.sleep(1.0)
        assert dog.wedge is None and stops == [] and server.got == []
    finally:
        server.close()


class FakeDog:
    """The watchdog as the loop sees it: a wedge during the attempts numbered in `wedge_on`."""

    def __init__(self, attempts, wedge_on):
        self.attempts, self.wedge_on = attempts, wedge_on
        self.wedge = self.detected_at = self.remains = None

    def __enter__(self):
        if len(self.attempts) in self.wedge_on:
            self.wedge, self.detected_at, self.remains = Wedge(STALL, "stand-in stall", 8.0), time.monotonic(), "old"
        return self

    def __exit__(self, *exc):
        pass


def run_wedges(wedge_on, budget):
    attempts, ended, seen = [], [], []
    quiet = Supervisor(lambda: SERVING, poll=10, prober=lambda ip, port: "ok", stop_engine=list)
    serve_supervised(attempts.append, lambda: SERVING, RecoveryPolicy(budget=budget), "127.0.0.1", free_port(),
                     supervisor=lambda s, d: quiet, watchdog=lambda: FakeDog(attempts, wedge_on),
                     end_engine=lambda remains: ended.append(remains) or reaper.Ended((), 0, ()),
                     on_recovering=seen.append, on_restarting=lambda w, v: seen.append(v.pause))
    return attempts, ended, seen


def test_a_wedge_ends_the_old_engine_and_restarts_after_a_pause():
    attempts, ended, seen = run_wedges({0, 1}, RestartBudget(max_restarts=3, first_pause=0.01))
    assert [a.number for a in attempts] == [0, 1, 2] and attempts[1].cause.cause == STALL
    assert ended == ["old", "old"] and [s for s in seen if isinstance(s, float)] == [0.01, 0.02]


def test_a_wedge_past_the_budget_exits_18_after_ending_the_engine():
    with pytest.raises(EngineWedged) as err:
        run_wedges({0, 1}, RestartBudget(max_restarts=1, first_pause=0.01))
    assert exit_code_for(err.value) == 18 and "--max-restarts 1 is spent" in str(err.value)
    with pytest.raises(EngineWedged):
        run_wedges({0}, RestartBudget(max_restarts=0))


def test_the_port_answers_503_naming_the_wedge_meanwhile():
    port, answers = free_port(), []

    def end_engine(remains):
        answers.append(get(f"http://127.0.0.1:{port}/v1/completions", {"model": "m", "prompt": "x"}))
        return reaper.Ended((), 0, ())

    quiet = Supervisor(lambda: SERVING, poll=10, prober=lambda ip, p: "ok", stop_engine=list)
    attempts = []
    serve_supervised(attempts.append, lambda: SERVING, RecoveryPolicy(budget=RestartBudget(first_pause=0)),
                     "127.0.0.1", port, supervisor=lambda s, d: quiet, watchdog=lambda: FakeDog(attempts, {0}),
                     end_engine=end_engine)
    status, headers, body = answers[0]
    assert status == 503 and headers["Retry-After"] and "wedged: stand-in stall" in json.loads(body)["error"]["message"]
    assert [a.number for a in attempts] == [0, 1]
