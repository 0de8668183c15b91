"""``dialguard ingest SOURCE ...``: one subcommand per input format.

Each source module exposes ``register(sub)`` that adds its own subparser (with ``--help`` that
explains the format) and sets ``func(args, settings) -> int``. Listing them here, by module
name, keeps ``dialguard --help`` cheap: a module is imported only to build the parser.
"""

from __future__ import annotations

import argparse
import importlib

#: Modules of services.ingest that provide a ``register(subparsers)`` function.
SOURCES: tuple[str, ...] = ("hep_collector", "sip_pcap", "isup_probe", "isup_pcap", "cdr")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name in SOURCES:
        importlib.import_module(f"services.ingest.{name}").register(sub)
