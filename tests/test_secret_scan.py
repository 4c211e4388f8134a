"""The session's secret scan (tests/conftest.py) can fail: it finds a secret in an
output or a file, and skips the token files themselves. (Its own needles here: the
planted secrets written to a file would trip the session's scan.)"""

from conftest import scan_for_secrets

KEY, HF, TOKEN = "sk-needle-" + "k" * 8, "hf_needle" + "h" * 8, "needle-token" + "t" * 8


def test_scan_finds_secrets(tmp_path):
    log = tmp_path / "head.log"
    log.write_text(f"spark-vllm: starting\nAuthorization: Bearer {KEY}\n")
    (tmp_path / "auth_token").write_text(TOKEN)  # where the token belongs: not a leak
    found = scan_for_secrets({KEY, HF, TOKEN}, ["clean", f"HF_TOKEN={HF}".encode()], list(tmp_path.iterdir()))
    assert sorted(found) == sorted([f"output #1: {HF[:12]}...", f"{log}: {KEY[:12]}..."])
    assert scan_for_secrets({KEY, HF, TOKEN}, ["nothing here"], [tmp_path / "auth_token"]) == []


def test_env_shell_and_json_never_show_secrets():
    """Secrets in the environment stay out of `env --shell` / `--json` (which print the
    communication plan only)."""
    import subprocess
    import sys

    from conftest import API_KEY, RAY_TOKEN, REPO, clean_env

    env = clean_env(RAY_AUTH_TOKEN=RAY_TOKEN, VLLM_API_KEY=API_KEY)
    for flag in ("--shell", "--json"):
        r = subprocess.run([sys.executable, "-m", "launch", "env", flag, "--iface", "lo"], capture_output=True,
                           text=True, timeout=60, cwd=REPO, env=env)
        assert r.returncode == 0 and "VLLM_HOST_IP" in r.stdout, r.stderr
        assert all(s not in r.stdout + r.stderr for s in (RAY_TOKEN, API_KEY, env["HF_TOKEN"]))
