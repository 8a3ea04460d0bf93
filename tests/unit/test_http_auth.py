"""The HTTP side's tokens, roles and bind policy (fleet.http.auth). Pure: no sockets, no files."""

from __future__ import annotations

import pytest

from fleet.errors import FleetConfigError
from fleet.http.auth import (
    ANONYMOUS,
    MAX_TOKEN_CHARS,
    Authenticator,
    Principal,
    Role,
    add_token,
    bearer,
    check_bind,
    is_loopback,
    parse_tokens,
    split_listen,
    token_line,
)

VIEWER_TOKEN = "flt_viewer-secret"
OPERATOR_TOKEN = "flt_operator-secret"
FILE = "\n".join(
    [
        "# tokens of the lab controller",
        token_line("grafana", Role.VIEWER, VIEWER_TOKEN),
        "",
        token_line("alice", Role.OPERATOR, OPERATOR_TOKEN) + "   # on call",
    ]
)


def test_a_tokens_file_parses_into_names_roles_and_digests_only() -> None:
    entries = parse_tokens(FILE)
    assert [(e.name, e.role) for e in entries] == [
        ("grafana", Role.VIEWER),
        ("alice", Role.OPERATOR),
    ]
    assert all(len(e.digest) == 32 for e in entries)
    assert VIEWER_TOKEN not in FILE and OPERATOR_TOKEN not in FILE


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("admin alice sha256:" + "0" * 64, "unknown role"),
        ("viewer alice sha256:" + "0" * 63, "short digest"),
        ("viewer alice md5:" + "0" * 64, "not sha256"),
        ("viewer al ice sha256:" + "0" * 64, "space in the name"),
        ("viewer alice " + "0" * 64, "no algorithm"),
        ("viewer", "no name"),
    ],
)
def test_a_bad_line_is_refused_naming_its_number(line: str, why: str) -> None:
    text = "# comment\n" + token_line("ok", Role.VIEWER, "t") + "\n" + line + "\n"
    with pytest.raises(FleetConfigError, match=r"tokens\.txt line 3:") as caught:
        parse_tokens(text, source="tokens.txt")
    assert line[:20] in str(caught.value), why


def test_a_name_twice_is_refused_naming_the_second_line() -> None:
    text = token_line("alice", Role.VIEWER, "a") + "\n" + token_line("alice", Role.OPERATOR, "b")
    with pytest.raises(FleetConfigError, match=r"line 2: 'alice' appears twice"):
        parse_tokens(text)


def test_identify_maps_each_token_to_its_principal_and_nothing_else() -> None:
    auth = Authenticator(parse_tokens(FILE))
    assert auth.configured
    assert auth.identify(VIEWER_TOKEN) == Principal("grafana", Role.VIEWER)
    assert auth.identify(OPERATOR_TOKEN) == Principal("alice", Role.OPERATOR)
    assert auth.identify("flt_guess") is None
    assert auth.identify("") is None
    assert auth.identify(None) is None
    assert auth.identify(VIEWER_TOKEN + "x") is None
    assert auth.identify("x" * (MAX_TOKEN_CHARS + 1)) is None


def test_only_the_operator_may_act() -> None:
    assert Principal("alice", Role.OPERATOR).may_act()
    assert not Principal("grafana", Role.VIEWER).may_act()


def test_without_tokens_everyone_is_the_anonymous_local_viewer() -> None:
    auth = Authenticator([])
    assert not auth.configured
    assert auth.identify(None) is ANONYMOUS
    assert auth.identify("anything") is ANONYMOUS
    assert ANONYMOUS.role is Role.VIEWER and not ANONYMOUS.may_act()


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("  Bearer   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_takes_the_token_of_a_bearer_header_only(
    header: str | None, token: str | None
) -> None:
    assert bearer(header) == token


@pytest.mark.parametrize(
    ("listen", "parsed"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_split_listen_reads_host_and_port(listen: str, parsed: tuple[str, int]) -> None:
    assert split_listen(listen) == parsed


@pytest.mark.parametrize("listen", ["8080", ":8080", "host:", "host:port", "host:65536", "h:-1"])
def test_split_listen_refuses_what_is_not_host_and_port(listen: str) -> None:
    with pytest.raises(FleetConfigError, match=r"\[http\] listen must be HOST:PORT"):
        split_listen(listen)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_check_bind_refuses_beyond_loopback_without_tokens_only() -> None:
    no_tokens, tokens = Authenticator([]), Authenticator(parse_tokens(FILE))
    check_bind("127.0.0.1", no_tokens)
    check_bind("0.0.0.0", tokens)
    with pytest.raises(FleetConfigError, match=r"needs \[http\] tokens_file"):
        check_bind("0.0.0.0", no_tokens)


def test_add_token_makes_a_line_that_identifies_the_new_token() -> None:
    line, token = add_token(FILE, "bob", Role.OPERATOR)
    assert token not in line and token.startswith("flt_")
    auth = Authenticator(parse_tokens(FILE + "\n" + line))
    assert auth.identify(token) == Principal("bob", Role.OPERATOR)
    assert add_token("", "first", Role.VIEWER)[1] != token  # a fresh token each time


def test_add_token_refuses_a_name_already_there_a_bad_name_and_a_broken_file() -> None:
    with pytest.raises(FleetConfigError, match="already has a token named 'alice'"):
        add_token(FILE, "alice", Role.VIEWER)
    for bad in ("", "two words", "-dash", "x" * 65, "semi;colon"):
        with pytest.raises(FleetConfigError, match="token name"):
            add_token(FILE, bad, Role.VIEWER)
    with pytest.raises(FleetConfigError, match="line 1"):
        add_token("garbage\n", "bob", Role.VIEWER)
