"""``fleet http token``: appends a token line to the tokens file (0600), prints the token once,
refuses a name already there. In process (typer's runner), files in tmp_path only."""

from __future__ import annotations

import stat
from pathlib import Path

from typer.testing import CliRunner

from fleet.cli import app
from fleet.http.auth import Authenticator, Principal, Role, parse_tokens


def _token(tokens: Path, name: str, role: str) -> tuple[int, str]:
    args = ["http", "token", name, "--role", role, "--tokens-file", str(tokens)]
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def test_a_token_is_appended_to_a_private_file_and_printed_once(tmp_path: Path) -> None:
    tokens = tmp_path / "http-tokens"
    code, printed = _token(tokens, "alice", "operator")
    assert code == 0, printed
    token = printed.strip()
    assert token.startswith("flt_") and token not in tokens.read_text()
    assert stat.S_IMODE(tokens.stat().st_mode) == 0o600
    code, printed = _token(tokens, "grafana", "viewer")
    assert code == 0, printed
    auth = Authenticator(parse_tokens(tokens.read_text()))
    assert auth.identify(token) == Principal("alice", Role.OPERATOR)
    assert auth.identify(printed.strip()) == Principal("grafana", Role.VIEWER)


def test_a_name_already_in_the_file_or_a_bad_one_is_refused_and_nothing_written(
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "http-tokens"
    assert _token(tokens, "alice", "operator")[0] == 0
    before = tokens.read_text()
    code, printed = _token(tokens, "alice", "viewer")
    assert code == 78 and "already has a token named 'alice'" in printed
    code, printed = _token(tokens, "two words", "viewer")
    assert code == 78 and "token name" in printed
    assert _token(tokens, "bob", "admin")[0] != 0  # not a role
    assert tokens.read_text() == before
