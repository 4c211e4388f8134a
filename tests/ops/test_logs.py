"""Logs: readable lines or JSON, a size-rotated file with a retention count, Ray's own
rotation set to match, and the CLI flags and variables that choose them."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import pytest

from orchestrator import errors
from orchestrator.cluster.bootstrap import NodeRequest, plan_node
from orchestrator.net.discovery import Discovery
from orchestrator.ops.observation import logs

from conftest import REPO, clean_env


@pytest.fixture
def restore_logger():
    logger = logging.getLogger(logs.LOGGER)
    before = list(logger.handlers)
    yield logger
    for h in list(logger.handlers):
        if h not in before:
            logger.removeHandler(h)
            h.close()
    for h in before:
        if h not in logger.handlers:
            logger.addHandler(h)


def test_json_lines_rotate_with_a_retention_count(tmp_path, restore_logger):
    console = io.StringIO()
    logs.configure(logs.LogOptions("json", str(tmp_path), max_bytes=2048, backups=2), stream=console)
    for i in range(200):
        restore_logger.info("line %d of the test", i)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["spark-vllm.log", "spark-vllm.log.1", "spark-vllm.log.2"]  # no .3: two kept
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 2048
        rows = [json.loads(line) for line in p.read_text().splitlines()]
        assert rows and all(set(r) == {"ts", "level", "logger", "msg"} for r in rows)
    assert json.loads((tmp_path / "spark-vllm.log").read_text().splitlines()[-1])["msg"] == "line 199 of the test"
    last = json.loads(console.getvalue().splitlines()[-1])
    assert last["level"] == "info" and last["logger"] == "spark_vllm" and last["msg"] == "line 199 of the test"


def test_text_by_default_and_a_second_setup_replaces_the_first(tmp_path, restore_logger):
    first, second = io.StringIO(), io.StringIO()
    logs.configure(logs.LogOptions(), stream=first)
    logs.configure(logs.LogOptions(verbose=True), stream=second)
    restore_logger.debug("hello")
    assert first.getvalue() == "" and second.getvalue() == "spark-vllm: hello\n"


@pytest.mark.parametrize("kw", [{"format": "xml"}, {"max_bytes": 10}, {"backups": -1}])
def test_bad_options(kw):
    with pytest.raises(errors.UsageError):
        logs.LogOptions(**kw)


def test_rays_rotation_matches(make_iface):
    opts = logs.LogOptions(max_bytes=5 << 20, backups=3)
    spark = Discovery((make_iface(),), "netlink")
    env = plan_node(NodeRequest(ray_env=opts.ray_environment()), spark, {}).environment()
    assert env["RAY_ROTATION_MAX_BYTES"] == str(5 << 20) and env["RAY_ROTATION_BACKUP_COUNT"] == "3"
    # A value the user set wins, as for every variable spark-vllm plans.
    kept = plan_node(NodeRequest(ray_env=opts.ray_environment()), spark, {"RAY_ROTATION_BACKUP_COUNT": "9"})
    assert "RAY_ROTATION_BACKUP_COUNT" not in kept.environment()


@pytest.mark.parametrize("how", ["flags", "env"])
def test_cli_json_log_to_stderr_and_the_folder(tmp_path, how):
    folder = tmp_path / "logs"
    args = ["--log-format", "json", "--log-dir", str(folder)] if how == "flags" else []
    env = clean_env(SPARK_VLLM_RUN_DIR=str(tmp_path / "run"),
                    **({"SPARK_VLLM_LOG_FORMAT": "json", "SPARK_VLLM_LOG_DIR": str(folder)} if how == "env" else {}))
    r = subprocess.run([sys.executable, "-m", "launch", "stop", *args], capture_output=True, text=True,
                       timeout=60, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    line = json.loads(r.stderr.strip().splitlines()[-1])
    assert line["msg"] == "no spark-vllm node runs on this machine" and line["level"] == "info"
    assert json.loads((folder / "spark-vllm.log").read_text().splitlines()[-1])["msg"] == line["msg"]


def test_cli_error_reaches_the_log_file_too(tmp_path):
    folder = tmp_path / "logs"
    r = subprocess.run([sys.executable, "-m", "launch", "env", "--iface", "no-such-if", "--log-format", "json",
                        "--log-dir", str(folder)], capture_output=True, text=True, timeout=60, cwd=REPO,
                       env=clean_env())
    assert r.returncode == 3 and r.stderr.splitlines()[-1].startswith("spark-vllm: error: ")
    last = json.loads((folder / "spark-vllm.log").read_text().splitlines()[-1])
    assert last["level"] == "error" and "no-such-if" in last["msg"]


def test_cli_bad_log_dir_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run([sys.executable, "-m", "launch", "stop", "--log-dir", str(blocker / "sub")],
                       capture_output=True, text=True, timeout=60, cwd=REPO, env=clean_env())
    assert r.returncode == 2 and r.stderr.startswith("spark-vllm: error: cannot write logs in")
    assert "Traceback" not in r.stderr
