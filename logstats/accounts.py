"""Which accounts exist, for an answer about one account (cPanel fails for an unknown user).

An account exists when the configuration's account map names it (``accounts.domains``,
the ``accounts.userdomains`` file when it can be read, ``accounts.uids``), or when
anything was ever counted for it: its all-time EmailTrack numbers are not all zero
(pseudo-accounts such as ``-remote-`` exist that way).  An existing account with nothing
in a window answers zeros; one that does not exist is a failure with ``reason(account)``.
"""

from __future__ import annotations

import contextlib

from logstats.config import Config
from logstats.errors import LogstatsError


def mapped(cfg: Config) -> set[str]:
    """The accounts the configuration's account map names."""
    names = set(cfg.domains.values()) | set(cfg.uids.values())
    with contextlib.suppress(LogstatsError):  # an unreadable userdomains names none
        names |= set(cfg.domain_map().values())
    return names


def exists(cfg: Config, account: str, counted: bool) -> bool:
    """Whether ``account`` exists; ``counted``: anything was ever counted for it."""
    return counted or account in mapped(cfg)


def reason(account: str) -> str:
    """The failure's reason for an account that does not exist."""
    return (
        f"account {account!r} does not exist: the account map (accounts.domains, "
        "accounts.userdomains, accounts.uids) does not name it and nothing was counted for it"
    )
