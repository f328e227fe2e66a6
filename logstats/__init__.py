"""Per-account mail statistics from Exim and Postfix logs."""

__version__ = "0.1.0"
