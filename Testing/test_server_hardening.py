"""Issue #15, the server's half: a token file others can read (item 7), the audit log under unauthenticated
requests (item 5), per-token session quotas and eviction (item 6), error codes (item 14)."""

from __future__ import annotations

import pytest
from server_fixtures import write_tokens

from MedSegReasoning.server.cli import main as serve_main


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_serve_refuses_a_token_file_others_can_read_and_says_the_chmod(tmp_path, capsys, mode):
    path = tmp_path / "tokens"
    write_tokens(path)
    path.chmod(mode)
    code = serve_main(["--token-file", str(path), "--state-dir", str(tmp_path / "state"), "--segmenter", "none"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"chmod 600 {path}" in err and "Traceback" not in err
    assert "loading models" not in err, "refused before any model loads"
