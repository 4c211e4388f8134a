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
