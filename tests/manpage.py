"""The manual page docs/logstats.1, generated from the argparse parser by argparse-manpage.

``python -m tests.manpage`` (or ``make man``) writes it; tests/test_packaging.py fails when
the committed page differs from what this gives now, so it cannot go stale.  The output is
reproducible: a fixed width for argparse's formatter and a fixed date.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "logstats.1"
DATE = "2026-12-02"  # of the page's text; move it on when the help texts change

EXTRA = """\
[files]
.TP
.I /etc/logstats/logstats.yaml
the configuration of the service (mode 0640, root:logstats)
.TP
.I /var/lib/logstats/logstats.duckdb
the store (directory 0750, owned by logstats)
.TP
.I /run/logstats/logstats.sock
the daemon's HTTP socket; users query through it, known by their peer credentials
[see also]
.BR systemd.exec (5),
.BR sysusers.d (5).
The service, its sandbox and the install steps: docs/systemd.md in the source
distribution. The configuration keys: config/logstats.example.yaml
.RB ( "logstats example config" ).
"""


def render() -> str:
    """The page as argparse-manpage writes it for the current parser."""
    from argparse_manpage.manpage import Manpage

    import logstats
    from logstats.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"  # argparse wraps usage lines to the terminal's width
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as include:
            include.write(EXTRA)
            include.flush()
            return str(_page(Manpage, build_parser(), logstats.__version__, include.name))
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _page(manpage: Any, parser: Any, version: str, include: str) -> Any:
    return manpage(
        parser,
        _data={
            "project_name": "logstats",
            "version": version,
            "date": DATE,
            "description": "per-account mail statistics from Exim and Postfix logs",
            "manual_title": "logstats manual",
            "include": include,
        },
    )


def main() -> int:
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
