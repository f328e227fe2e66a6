"""Configuration: one schema, every mistake at once naming file and dotted key, every
effective value printed by check-config, an example that is the defaults, cPanel userdomains."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from logstats.config import DEFAULT_PROVIDERS, Config, load, read_userdomains, settings
from logstats.errors import ConfigError
from logstats.schema import File, build, setting_keys, validate
from tests.conftest import ROOT, run_cli

EXAMPLE = ROOT / "config" / "logstats.example.yaml"


def write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text,message",
    [
        ("accounts:\n  domain: {}\n", "unknown key 'accounts.domain'"),
        ("store: [1, 2]\n", "store: expected a mapping, got a list"),
        ("store:\n  retention_days: -3\n", "store.retention_days: expected a positive integer"),
        ("store:\n  retention_days: true\n", "store.retention_days: expected a positive integer"),
        ("correlation:\n  ttl: soon\n", "correlation.ttl: expected a duration"),
        ("store:\n  memory_limit: lots\n", "store.memory_limit: expected a size"),
        ("timezone: Mars/Olympus\n", "timezone: unknown zone"),
        ("accounts: {domains: {a.test: x}\n", "not valid YAML"),
        ("sources:\n  - {path: /x, mta: sendmail}\n", "sources[0].mta"),
        ("sources: {path: /x}\n", "sources: expected a list, got a mapping of path"),
        (
            "ingest: {workers: -1}\n",
            "ingest.workers: expected a whole number, 0 or more (at most 1,024), got -1",
        ),
        ("api: {tcp: 'host:port'}\n", "api.tcp: expected PORT or HOST:PORT, got 'host:port'"),
        ("api: {tcp: 70000}\n", "api.tcp: expected PORT or HOST:PORT, got 70000"),
        ("accounts: {uids: {alice: x}}\n", "accounts.uids.alice: expected a numeric uid"),
        ("serve: {poll_seconds: 0}\n", "serve.poll_seconds: expected a positive number"),
        ("providers: {x: gmail.com}\n", "providers.x: expected a list, got 'gmail.com'"),
        ("store:\n  path: a\n  path: b\n", "line 3, column 3: key 'path' appears twice"),
        ("[1, 2]\n", "top level: expected a mapping, got a list"),
        ("correlation: {ttl: 99999999999999d}\n", "correlation.ttl: expected a duration"),
        ("correlation: {ttl: 999999999999999999}\n", "correlation.ttl: expected a duration"),
        ("serve: {poll_seconds: .inf}\n", "serve.poll_seconds: expected a positive number"),
        ("store: {retention_days: 99999999999}\n", "(at most 36,500), got 99999999999"),
        ("store: {1: x}\n", "unknown key 'store.1'"),
        (
            "sources: [~]\n",
            "sources[0]: expected a path, {path: PATH, mta: exim|postfix} or "
            "{journal: {units, identifiers}, mta}",
        ),
        (
            "sources:\n  - journal: {units: [postfix@-.service]}\n",
            "sources[0]: expected mta (exim or postfix) beside journal",
        ),
        (
            "sources:\n  - {journal: {}, mta: postfix}\n",
            "sources[0].journal: expected units or identifiers (or both)",
        ),
        (
            "sources:\n  - {journal: {units: postfix.service}, mta: postfix}\n",
            "sources[0].journal.units: expected a list, got 'postfix.service'",
        ),
        (
            "sources:\n  - {journal: {unit: [postfix.service]}, mta: postfix}\n",
            "unknown key 'sources[0].journal.unit' (did you mean 'sources[0].journal.units'?)",
        ),
        (
            "sources:\n  - {path: /x, journal: {units: [a]}, mta: exim}\n",
            "sources[0]: expected exactly one of path or journal",
        ),
        ("api: {keys: [{key: ''}]}\n", "api.keys[0].key: expected the key's secret"),
    ],
)
def test_broken_config_names_file_and_key(tmp_path, text, message):
    """Every kind of broken config gives a ConfigError naming the file and the key."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert message in str(err.value)
    assert str(err.value).startswith(f"{path}: ")


def test_every_mistake_is_reported_at_once(tmp_path):
    """A file with three mistakes: three lines, each FILE: dotted.key[index]: expected,
    got; an unknown key suggests the key it is close to."""
    path = write(
        tmp_path,
        "store:\n  retention_days: ten\naccounts:\n  userdomain: /etc/userdomains\n"
        "api:\n  keys:\n    - {key: a}\n    - {name: b, accounts: alice}\n",
    )
    with pytest.raises(ConfigError) as err:
        load(path)
    assert [
        f"{path}: store.retention_days: expected a positive integer (at most 36,500), got 'ten'",
        f"{path}: unknown key 'accounts.userdomain' (did you mean 'accounts.userdomains'?)",
        f"{path}: api.keys[1].key: expected a value (the key is required), got none",
        f"{path}: api.keys[1].accounts: expected a list, got 'alice'",
    ] == str(err.value).splitlines()
    proc = run_cli("check-config", "--config", path, check=False)
    assert 1 == proc.returncode
    assert "" == proc.stdout
    lines = proc.stderr.splitlines()
    assert 4 == len(lines), proc.stderr
    assert all(line.startswith(f"logstats: error: {path}: ") for line in lines), proc.stderr


def test_not_yaml_and_not_utf8_name_the_line(tmp_path):
    """Invalid YAML and a file that is not UTF-8 are one line naming the file and the line."""
    with pytest.raises(
        ConfigError,
        match=r"c.yaml: not valid YAML at line 3, column 17: while parsing a flow sequence "
        r"\(line 2, column 9\) expected ',' or '\]', but got ':'",
    ):
        load(write(tmp_path, "store:\n  path: [unclosed\n  retention_days: 3\n"))
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("timezone: UTC\n# Zürich\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml: not UTF-8 text .* on line 2"):
        load(str(bad))


def test_relative_paths_resolve_against_the_config(tmp_path):
    """store.path, accounts.userdomains, sources and serve.socket are relative to the file."""
    (tmp_path / "ud").write_text("alice.test: alice\n")
    cfg = load(
        write(
            tmp_path,
            "store: {path: db/x.duckdb}\naccounts: {userdomains: ud}\n"
            "sources: [logs/a.log, {path: /abs/b.log}]\nserve: {socket: run/s.sock}\n",
        )
    )
    assert str(tmp_path / "db" / "x.duckdb") == cfg.db
    assert {"alice.test": "alice"} == cfg.domain_map()
    assert [str(tmp_path / "logs" / "a.log"), "/abs/b.log"] == [s.path for s in cfg.sources]
    assert str(tmp_path / "run" / "s.sock") == cfg.socket


def test_userdomains_format(tmp_path):
    """cPanel's 'domain: user' lines are read; '*: nobody' is not an account mapping."""
    path = tmp_path / "userdomains"
    path.write_text("alice.test: alice\n*: nobody\nBob.Test: bob\n")
    assert {"alice.test": "alice", "bob.test": "bob"} == read_userdomains(str(path))
    path.write_text("garbage line\n")
    with pytest.raises(ConfigError, match="expected 'domain: user'"):
        read_userdomains(str(path))


def test_a_missing_userdomains_is_a_warning(tmp_path):
    """A configured accounts.userdomains that does not exist: check-config passes with a
    warning naming the config file and the key, the map holds accounts.domains; once the
    file exists it is read. One that exists but is not cPanel's format fails, naming the
    config file, the key and the map's line."""
    path = write(tmp_path, "accounts:\n  userdomains: ud\n  domains: {bob.test: bob}\n")
    cfg = load(path)
    assert {"bob.test": "bob"} == cfg.domain_map()
    assert [f"{path}: accounts.userdomains: {tmp_path / 'ud'} does not exist"] == [
        w.split(": no accounts")[0] for w in cfg.warnings()
    ]
    proc = run_cli("check-config", "--config", path, check=False)
    assert 0 == proc.returncode, proc.stderr
    assert proc.stderr.startswith(f"logstats: warning: {path}: accounts.userdomains: ")
    assert 1 == len(proc.stderr.splitlines())
    log = str(ROOT / "fixtures" / "demo" / "exim_mainlog")
    proc = run_cli("backfill", "--config", path, "--db", str(tmp_path / "db.duckdb"), log)
    warned = [json.loads(line) for line in proc.stderr.splitlines() if "config_warning" in line]
    assert [True] == [w["detail"].startswith(f"{path}: accounts.userdomains: ") for w in warned]
    (tmp_path / "ud").write_text("alice.test: alice\n")
    assert {"alice.test": "alice", "bob.test": "bob"} == load(path).domain_map()
    assert [] == load(path).warnings()
    (tmp_path / "ud").write_text("alice.test alice\n")
    proc = run_cli("check-config", "--config", path, check=False)
    assert 1 == proc.returncode
    assert proc.stderr.startswith(
        f"logstats: error: {path}: accounts.userdomains: {tmp_path / 'ud'}:1: expected "
    ), proc.stderr


def test_durations(tmp_path):
    """Durations accept s/m/h/d/w suffixes and whole seconds."""
    cfg = load(write(tmp_path, "correlation: {ttl: 2w, orphan_ttl: 90m, handoff_window: 30}\n"))
    assert (timedelta(weeks=2), timedelta(minutes=90), timedelta(seconds=30)) == (
        cfg.ttl,
        cfg.orphan_ttl,
        cfg.handoff_window,
    )


def test_cli_reports_config_error_in_one_line(tmp_path):
    """The CLI prints a broken config as one line and exits 1 (no traceback)."""
    proc = run_cli("check-config", "--config", write(tmp_path, "bogus: 1\n"), check=False)
    assert 1 == proc.returncode
    assert "Traceback" not in proc.stderr
    assert "unknown key 'bogus'" in proc.stderr
    proc = run_cli("backfill", "--config", write(tmp_path, "sotre: {}\n"), "-", check=False)
    assert 1 == proc.returncode
    assert [f"logstats: error: {tmp_path / 'c.yaml'}: unknown key 'sotre' (did you mean "
            "'store'?)"] == proc.stderr.splitlines()  # fmt: skip


def test_api_section(tmp_path):
    """api.tcp as a bare port listens on loopback; keys keep their scopes; bad keys are
    named."""
    cfg = load(write(tmp_path, "api:\n  tcp: 8025\n  keys:\n    - {key: s, accounts: [alice]}\n"))
    assert "127.0.0.1:8025" == cfg.tcp
    assert ("alice",) == cfg.api_keys[0].accounts
    assert "[::1]:9000" == load(write(tmp_path, "api: {tcp: '[::1]:9000'}\n")).tcp
    assert "0.0.0.0:8080" == load(write(tmp_path, "api: {tcp: ':8080'}\n")).tcp  # all
    with pytest.raises(ConfigError, match=r"api.tcp: expected PORT or HOST:PORT, got ':'"):
        load(write(tmp_path, "api: {tcp: ':'}\n"))
    with pytest.raises(ConfigError, match=r"api.keys\[0\]"):
        load(write(tmp_path, "api:\n  keys:\n    - {secret: s}\n"))
    with pytest.raises(ConfigError, match=r"tags\[0\]: expected exactly one of sender"):
        load(write(tmp_path, "tags:\n  - {tag: x}\n"))
    with pytest.raises(
        ConfigError, match=r"api.keys: expected a secret per key, got the same in \[0\] and \[1\]$"
    ):
        load(write(tmp_path, "api:\n  keys: [{key: s}, {key: s, name: b}]\n"))


def test_providers_merge_over_the_built_in_ones(tmp_path):
    """A provider named in the config replaces that built-in one; the others stay."""
    cfg = load(write(tmp_path, "providers: {google: [Gmail.com], examplemail: ['*.ex.net']}\n"))
    assert {**DEFAULT_PROVIDERS, "google": ("gmail.com",), "examplemail": ("*.ex.net",)} == (
        cfg.providers
    )


# --- check-config prints every setting ----------------------------------------------------------

# Every setting away from its default (the test below checks that it is).
EVERYTHING = """\
timezone: Europe/Amsterdam
store: {path: db/x.duckdb, retention_days: 30, memory_limit: 1GiB}
accounts:
  domains: {Alice.Test: alice}
  userdomains: ud
  uids: {1001: alice, "1002": bob}
  sender_domain_fallback: true
correlation: {ttl: 5d, orphan_ttl: 90m, handoff_window: 45s, filter_relays: [10.0.0.5]}
ingest: {batch_lines: 1000, max_line_length: 4096, workers: 3}
sources: [logs/x.log, {path: "logs/*.log", mta: postfix}]
serve: {socket: run/ls.sock, batch_seconds: 2, poll_seconds: 0.25, commit_retries: 9}
api:
  tcp: 8025
  admins: [root, ops]
  metrics_per_account: true
  keys:
    - {key: s3cret-admin, name: admin}
    - {key: s3cret-alice, accounts: [alice], domains: [alice.test], tags: [news]}
export: {directory: fleet, host: mx7.example, every: 15m}
providers: {google: [gmail.com], examplemail: ["*.mx.example.net"]}
tags: [{tag: news, sender: "*@news.alice.test"}, {tag: bills, recipient: "*@Billing.Example"}]
"""


def printed_settings(stdout: str) -> dict[str, Any]:
    """``key = JSON  # note`` lines of check-config, by key (``#`` lines skipped)."""
    values: dict[str, Any] = {}
    for line in stdout.splitlines():
        if line.startswith("#"):
            continue
        key, sep, rest = line.partition(" = ")
        assert sep, line
        assert key not in values, key
        values[key] = json.JSONDecoder().raw_decode(rest)[0]
    return values


def nested(values: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in values.items():
        *sections, name = key.split(".")
        into = data
        for s in sections:
            into = into.setdefault(s, {})
        into[name] = value
    return data


def test_check_config_prints_every_effective_value(tmp_path):
    """check-config prints one line per setting of the schema, and the printed values are
    the effective ones: written back as a config they load as the same Config. API key
    secrets are masked."""
    (tmp_path / "ud").write_text("carol.test: carol\n")
    path = write(tmp_path, EVERYTHING)
    cfg = load(path)
    defaults = settings(Config())
    assert [k for k in setting_keys() if settings(cfg)[k] == defaults[k]] == []
    proc = run_cli("check-config", "--config", path)
    assert "" == proc.stderr
    assert "s3cret" not in proc.stdout
    printed = printed_settings(proc.stdout)
    assert list(setting_keys()) == list(printed)
    assert len(printed) >= 25
    assert ["********", "********"] == [k["key"] for k in printed["api.keys"]]
    # spot checks against the Config itself, then all of it through the schema
    assert cfg.db == printed["store.path"] == str(tmp_path / "db" / "x.duckdb")
    assert "127.0.0.1:8025" == printed["api.tcp"] == cfg.tcp
    assert {"1001": "alice", "1002": "bob"} == printed["accounts.uids"]
    assert (
        cfg.handoff_window == timedelta(seconds=45)
        and "45s" == printed["correlation.handoff_window"]
    )
    for printed_key, real in zip(printed["api.keys"], cfg.api_keys, strict=True):
        printed_key["key"] = real.key
    again = tmp_path / "again" / "printed.yaml"
    again.parent.mkdir()
    again.write_text(yaml.safe_dump(nested(printed), sort_keys=False))
    assert replace(cfg, path=None) == replace(load(str(again)), path=None)
    # what follows from the settings
    assert "# account map: 2 domains of 2 accounts" in proc.stdout
    assert f"# sources[1]: {tmp_path / 'logs' / '*.log'} (postfix): 0 files match now" in (
        proc.stdout
    )


def test_check_config_without_a_file_prints_the_defaults(tmp_path):
    """No --config: the built-in defaults, every key; --db shows as store.path."""
    proc = run_cli("check-config", "--db", str(tmp_path / "x.duckdb"))
    printed = printed_settings(proc.stdout)
    assert list(setting_keys()) == list(printed)
    assert {**settings(Config()), "store.path": str(tmp_path / "x.duckdb")} == printed
    assert "timezone = null  # the machine's zone: " in proc.stdout


# --- the shipped configs ------------------------------------------------------------------------


def dotted_values(data: dict[str, Any]) -> dict[str, Any]:
    """A parsed config's values by setting key (sections one level down)."""
    sections = {k.split(".")[0] for k in setting_keys() if "." in k}
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in sections:
            out.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            out[key] = value
    return out


def value_at(model: Any, key: str) -> Any:
    for part in key.split("."):
        model = getattr(model, part)
    return model


def test_example_sets_every_key_to_its_default():
    """config/logstats.example.yaml has every key of the schema, each set to the schema's
    default (compared key by key after validation)."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    assert sorted(setting_keys()) == sorted(dotted_values(raw))
    example, defaults = validate(raw, str(EXAMPLE)), File()
    for key in setting_keys():
        assert value_at(defaults, key) == value_at(example, key), key


def commented_examples(text: str) -> list[tuple[str, dict[str, Any]]]:
    """The example's ``#   key: value`` blocks, each as (section, parsed mapping)."""
    blocks: list[tuple[str, list[str]]] = []
    section, previous = "", False
    for line in text.splitlines():
        top = re.match(r"^(\w+):", line)
        if top:
            section = top.group(1)
        m = re.match(r"^( *)#   (.*)$", line)
        starts = bool(m and re.match(r"\w+:", m.group(2)))
        if m and starts:
            blocks.append(("" if not m.group(1) else section, [m.group(2)]))
        elif m and previous and m.group(2).startswith(" "):
            blocks[-1][1].append(m.group(2))
        previous = bool(m) and (starts or previous)
    return [(s, yaml.safe_load("\n".join(lines))) for s, lines in blocks]


def test_examples_in_the_example_are_valid(tmp_path):
    """Each commented example of a non-default value, put in place of the default, gives
    a valid config that differs from the defaults there."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    examples = commented_examples(EXAMPLE.read_text())
    assert len(examples) >= 9
    seen = set()
    for section, fragment in examples:
        data = yaml.safe_load(EXAMPLE.read_text())
        (data[section] if section else data).update(fragment)
        for key in fragment:
            seen.add(f"{section}.{key}" if section else key)
        assert validate(data, "example") != validate(raw, "example"), fragment
    assert {"timezone", "accounts.uids", "api.tcp", "api.keys", "sources"} <= seen


def test_the_schema_defaults_are_the_programs():
    """An empty file gives the Config the program uses without one (the schema's defaults
    and Config's cannot drift apart)."""
    assert Config() == build(File(), None, Path("/nowhere"))
    assert Config() == build(validate({}, "empty"), None, Path("/nowhere"))


def test_example_passes_check_config_on_any_host():
    """The example validates with no warning and needs nothing of the host."""
    proc = run_cli("check-config", "--config", str(EXAMPLE))
    assert "" == proc.stderr
    assert f"# {EXAMPLE}: valid" == proc.stdout.splitlines()[0]
    assert list(setting_keys()) == list(printed_settings(proc.stdout))


def test_demo_config_is_valid():
    """The bundled config of `make demo` validates, its userdomains sample included."""
    cfg = load(str(ROOT / "config" / "logstats.yaml"))
    assert cfg.domain_map() and not cfg.warnings()
    assert Path(cfg.db).is_absolute()
    run_cli("check-config", "--config", str(ROOT / "config" / "logstats.yaml"))
