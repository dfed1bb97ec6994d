"""Tokens (#16): the 'name:token' line mistake gets a hint in the 401, and the server prints a ready curl line
that reads the token from the file (the token itself is never printed)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from support.server import live_server, scripted_engine, write_replay, write_tokens

from MedSegReasoning.server.auth import curl_example, ensure_default_token_file, shell_token_expression

HERE = Path(__file__).resolve().parent


def test_the_whole_token_file_line_is_refused_with_a_hint_at_the_name_prefix(tmp_path):
    with live_server(tmp_path, scripted_engine(write_replay(tmp_path / "r.jsonl"))) as (server, tokens):
        whole_line = httpx.get(server.url + "/v1/health", headers={"Authorization": f"Bearer alice:{tokens['alice']}"})
        assert whole_line.status_code == 401
        error = whole_line.json()["error"]
        assert error["code"] == "token_invalid"
        assert "name prefix 'alice:'" in error["message"] and "after the first ':'" in error["message"]
        assert tokens["alice"] not in whole_line.text
        other = httpx.get(server.url + "/v1/health", headers={"Authorization": "Bearer someone:" + "z" * 32})
        assert "contains ':'" in other.json()["error"]["message"]
        plain = httpx.get(server.url + "/v1/health", headers={"Authorization": "Bearer " + "z" * 32})
        assert ":" not in plain.json()["error"]["message"].split("server:")[1].split("(")[0]
        assert "the file the server was started with" in plain.json()["error"]["message"]


def test_the_printed_curl_line_works_in_a_shell(tmp_path):
    """A real server started on the auto-created file ('local:<token>') prints a curl line that reaches it."""
    token_file = ensure_default_token_file(tmp_path / "cfg" / "server-token")
    secret = token_file.read_text().strip().split(":", 1)[1]
    child = subprocess.Popen(
        [
            sys.executable,
            str(HERE.parent / "support" / "server.py"),
            "--state-dir",
            str(tmp_path / "state"),
            "--token-file",
            str(token_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    try:
        said = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = child.stderr.readline()
            if not line:
                break
            said.append(line)
            if "try it: " in line:
                break
        text = "".join(said)
        assert "try it: curl " in text, text
        assert secret not in text
        command = text.split("try it: ")[1].strip()
        assert f"$(cut -d: -f2- {token_file})" in command
        out = subprocess.run(
            ["bash", "-c", command + " -s -w '\\n%{http_code}'"], capture_output=True, text=True, timeout=30
        )
        assert out.stdout.strip().endswith("200"), (command, out.stdout, out.stderr)
        assert '"status":"ok"' in out.stdout.replace(" ", "")
    finally:
        child.terminate()
        child.wait(15)


@pytest.mark.parametrize(
    "lines",
    [
        ["# users", "", "carol.b:{t}", "dave:{u}"],
        ["dave:{t}", "carol:{u}"],
        ["{t}"],
        ["# a bare token", "{t}", "dave:{u}"],
    ],
)
def test_the_shell_expression_reads_the_first_token_of_hand_written_files(tmp_path, lines):
    secret, other = "s" * 20 + "Tok3n_-x", "u" * 24
    token_file = tmp_path / "my tokens"
    token_file.write_text("\n".join(line.format(t=secret, u=other) for line in lines) + "\n")
    expression = shell_token_expression(token_file)
    assert secret not in expression
    out = subprocess.run(["bash", "-c", f'printf %s "{expression}"'], capture_output=True, text=True, timeout=10)
    assert out.stdout == secret, (expression, out.stderr)


def test_curl_example_quotes_paths_with_spaces(tmp_path):
    path = tmp_path / "my tokens"
    write_tokens(path, ("alice",))
    assert "'" + str(path) + "'" in curl_example("http://127.0.0.1:1", path)
