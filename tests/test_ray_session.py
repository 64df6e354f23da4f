"""Starting Ray for a run: the token a local Ray uses is kept private."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtl_search.jobs import token_path
from mtl_search.ray_session import keep_token_private


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    path = tmp_path / "ray" / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    return path


def test_a_missing_token_is_created_for_its_owner_only(token_env: Path):
    assert token_path() == token_env
    assert keep_token_private() == token_env
    assert token_env.stat().st_mode & 0o777 == 0o600
    assert len(token_env.read_text()) == 64  # 256 bits, hex


def test_a_token_others_can_read_is_made_private_and_kept(token_env: Path, capsys):
    token_env.parent.mkdir(parents=True)
    token_env.write_text("the-cluster-token")
    token_env.chmod(0o644)
    keep_token_private()
    assert token_env.stat().st_mode & 0o777 == 0o600 and token_env.read_text() == "the-cluster-token"
    assert "was readable by other users (mode 644)" in capsys.readouterr().err
    keep_token_private()  # already private: nothing said
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("variable", "value"), [("RAY_AUTH_TOKEN", "abc"), ("RAY_AUTH_MODE", "disabled")])
def test_no_file_is_written_when_the_token_is_not_read_from_one(token_env: Path, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    assert keep_token_private() is None and not token_env.exists()
