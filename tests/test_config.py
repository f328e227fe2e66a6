"""Configuration: strict keys, clear errors naming file and key, cPanel userdomains."""

from __future__ import annotations

from datetime import timedelta

import pytest

from logstats.config import load, read_userdomains
from logstats.errors import ConfigError
from tests.conftest import ROOT, run_cli


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text,message",
    [
        ("accounts:\n  domain: {}\n", "unknown key 'accounts.domain'"),
        ("store: [1, 2]\n", "store: expected a mapping"),
        ("store:\n  retention_days: -3\n", "store.retention_days: expected a positive integer"),
        ("correlation:\n  ttl: soon\n", "correlation.ttl: expected a duration"),
        ("store:\n  memory_limit: lots\n", "store.memory_limit: expected a size"),
        ("timezone: Mars/Olympus\n", "timezone: unknown zone"),
        ("accounts: {domains: {a.test: x}\n", "not valid YAML"),
        ("sources:\n  - {path: /x, mta: sendmail}\n", "sources[0].mta"),
    ],
)
def test_broken_config_names_file_and_key(tmp_path, text, message):
    """Every kind of broken config gives one ConfigError naming the file and the key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert message in str(err.value)
    assert path in str(err.value)


def test_relative_paths_resolve_against_the_config(tmp_path):
    """store.path and accounts.userdomains are relative to the config file."""
    (tmp_path / "ud").write_text("alice.test: alice\n")
    cfg = load(write(tmp_path, "store: {path: db/x.duckdb}\naccounts: {userdomains: ud}\n"))
    assert str(tmp_path / "db" / "x.duckdb") == cfg.db
    assert {"alice.test": "alice"} == cfg.domain_map()


def test_userdomains_format(tmp_path):
    """cPanel's 'domain: user' lines are read; '*: nobody' is not an account mapping."""
    path = tmp_path / "userdomains"
    path.write_text("alice.test: alice\n*: nobody\nBob.Test: bob\n")
    assert {"alice.test": "alice", "bob.test": "bob"} == read_userdomains(str(path))
    path.write_text("garbage line\n")
    with pytest.raises(ConfigError, match="expected 'domain: user'"):
        read_userdomains(str(path))


def test_durations(tmp_path):
    """Durations accept s/m/h/d/w suffixes."""
    cfg = load(write(tmp_path, "correlation: {ttl: 5d, orphan_ttl: 90m}\n"))
    assert (timedelta(days=5), timedelta(minutes=90)) == (cfg.ttl, cfg.orphan_ttl)


def test_cli_reports_config_error_in_one_line(tmp_path):
    """The CLI prints a broken config as one line and exits 1 (no traceback)."""
    proc = run_cli("check-config", "--config", write(tmp_path, "bogus: 1\n"), check=False)
    assert 1 == proc.returncode
    assert "Traceback" not in proc.stderr
    assert "unknown key 'bogus'" in proc.stderr


def test_shipped_configs_are_valid():
    """The bundled config validates (the example needs /etc/userdomains, so only its keys)."""
    load(str(ROOT / "config" / "logstats.yaml"))
    text = (ROOT / "config" / "logstats.example.yaml").read_text()
    import yaml

    from logstats.config import _SCHEMA, _check

    _check(yaml.safe_load(text), _SCHEMA, "", "example")


def test_api_section(tmp_path):
    """api.tcp as a bare port listens on loopback; keys keep their scopes; bad keys are
    named."""
    cfg = load(write(tmp_path, "api:\n  tcp: 8025\n  keys:\n    - {key: s, accounts: [alice]}\n"))
    assert "127.0.0.1:8025" == cfg.tcp
    assert ("alice",) == cfg.api_keys[0].accounts
    with pytest.raises(ConfigError, match=r"api.keys\[0\]"):
        load(write(tmp_path, "api:\n  keys:\n    - {secret: s}\n"))
    with pytest.raises(ConfigError, match=r"tags\[0\]"):
        load(write(tmp_path, "tags:\n  - {tag: x}\n"))
