"""Private directories and files (protocol/paths.py): made 0700/0600 whatever the
umask, every component checked, and refused with a clear message where another
user made or could change them."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import OTHER_UID
from turnout.protocol.paths import (
    UnsafePathError,
    check_own_socket,
    check_private_dir,
    ensure_private_dir,
    open_private,
    peer_credentials,
)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o002)
    yield
    os.umask(old)


def test_every_component_below_base_is_made_0700_whatever_the_umask(tmp_path: Path, loose_umask: None) -> None:
    out = ensure_private_dir(tmp_path / "a" / "b" / "c", tmp_path)
    assert out == tmp_path / "a" / "b" / "c"
    for p in (tmp_path / "a", tmp_path / "a" / "b", out):
        assert p.is_dir() and _mode(p) == 0o700, (p, oct(_mode(p)))


def test_a_missing_base_is_made_private_too(tmp_path: Path, loose_umask: None) -> None:
    base = tmp_path / "home" / ".local" / "state"
    ensure_private_dir(base / "turnout" / "8765", base)
    for p in (tmp_path / "home", tmp_path / "home" / ".local", base, base / "turnout"):
        assert _mode(p) == 0o700, p


def test_a_loose_dir_of_ours_is_tightened_and_reported(tmp_path: Path) -> None:
    (tmp_path / "turnout").mkdir(mode=0o755)
    os.chmod(tmp_path / "turnout", 0o777)
    told: list[str] = []
    ensure_private_dir(tmp_path / "turnout" / "1", tmp_path, told.append)
    assert _mode(tmp_path / "turnout") == 0o700
    assert told == [f"{tmp_path / 'turnout'} was mode 777: tightened to 700"]


def test_a_symlinked_component_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "turnout").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePathError, match="is a symlink"):
        ensure_private_dir(tmp_path / "turnout" / "1", tmp_path)
    assert not (tmp_path / "elsewhere" / "1").exists()


def test_an_ancestor_everyone_may_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)
    with pytest.raises(UnsafePathError, match="writable by every user"):
        ensure_private_dir(open_dir / "turnout", open_dir)
    assert not (open_dir / "turnout").exists()
    os.chmod(open_dir, 0o1777)  # like /tmp
    ensure_private_dir(open_dir / "turnout", open_dir)


def test_a_dir_of_another_user_is_refused_not_used(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a directory of another user needs root")
    theirs = tmp_path / "turnout"
    theirs.mkdir(mode=0o777)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(UnsafePathError, match=f"belongs to uid {OTHER_UID}"):
        ensure_private_dir(theirs / "8765", tmp_path)
    assert not (theirs / "8765").exists()
    with pytest.raises(UnsafePathError, match=f"belongs to uid {OTHER_UID}"):
        check_private_dir(theirs)


def test_check_private_dir_changes_nothing_and_refuses_a_writable_one(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    os.chmod(d, 0o755)
    check_private_dir(d)  # ours, nobody else can write: fine as it is
    assert _mode(d) == 0o755
    os.chmod(d, 0o777)
    with pytest.raises(UnsafePathError, match="writable by other users"):
        check_private_dir(d)
    assert _mode(d) == 0o777


def test_open_private_makes_0600_and_tightens_an_existing_file(tmp_path: Path, loose_umask: None) -> None:
    new = tmp_path / "new.log"
    os.close(open_private(new))
    assert _mode(new) == 0o600
    old = tmp_path / "old.log"
    old.write_text("x")
    os.chmod(old, 0o644)
    fd = open_private(old)
    os.write(fd, b"y")
    os.close(fd)
    assert _mode(old) == 0o600 and old.read_text() == "xy"


def test_open_private_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "target").write_text("")
    (tmp_path / "turnout.log").symlink_to(tmp_path / "target")
    with pytest.raises(OSError):
        open_private(tmp_path / "turnout.log")


def test_check_own_socket_refuses_a_plain_file(tmp_path: Path) -> None:
    (tmp_path / "control").write_text("")
    with pytest.raises(UnsafePathError, match="not a socket"):
        check_own_socket(tmp_path / "control")


@pytest.mark.parametrize(("addr", "want"), [
    ("localhost:1000:1000:4242", (1000, 4242)),  # Linux, SO_PEERCRED
    (":501:20:", (501, None)),  # macOS, LOCAL_PEERCRED: no pid
    ("127.0.0.1", (None, None)),  # tcp
    ("1:2::3", (None, None)),  # tcp, IPv6
    ("fe80::1:2:3:4", (None, None)),
    (None, (None, None)),
])
def test_peer_credentials_from_zeromq_peer_address(addr: str | None, want: tuple[int | None, int | None]) -> None:
    assert peer_credentials(addr) == want
