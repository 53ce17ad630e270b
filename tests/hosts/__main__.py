"""`python -m tests.hosts list | build NAME... | matrix [NAME...]`: build the pinned test hosts, run the matrix.

    python -m tests.hosts build comfyui-0.33.0 --mirrors /work/.mirror   # sources from local mirrors
    python -m tests.hosts build --all                                      # sources from github.com
    python -m tests.hosts matrix                                           # every built host, one table

Hosts land in $DMD2_HOSTS or `hosts/` beside this repository; nothing is written inside the repository.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from . import common
from .specs import HOSTS


def _builder(family: str):
    """The family's build function (tests/hosts/<family>.py), imported only when that family is built."""
    return importlib.import_module(f"{__package__}.{family}").build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.hosts", description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=common.default_dest(), help="where hosts are built")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the pinned hosts and whether they are built")
    build = sub.add_parser("build", help="build hosts at their pinned commits")
    build.add_argument("names", nargs="*")
    build.add_argument("--all", action="store_true")
    build.add_argument("--mirrors", type=Path, default=os.environ.get("DMD2_HOST_MIRRORS"),
                       help="folder of local git mirrors (<owner>+<name>[/repo]); default $DMD2_HOST_MIRRORS")
    matrix = sub.add_parser("matrix", help="run each built host's end-to-end suite and print one table")
    matrix.add_argument("names", nargs="*")
    args = parser.parse_args(argv)

    if args.command == "list":
        for name, spec in HOSTS.items():
            record = common.read_record(args.dest / name)
            print(f"{name:20} {spec.label:28} {spec.commit:10} {'built' if record else 'not built'}")
        return 0
    names = list(HOSTS) if getattr(args, "all", False) or not args.names else args.names
    unknown = [n for n in names if n not in HOSTS]
    if unknown:
        parser.error(f"unknown host(s) {', '.join(unknown)}; known: {', '.join(HOSTS)}")
    if args.command == "build":
        for name in names:
            spec = HOSTS[name]
            _builder(spec.family)(spec, args.dest / name, args.mirrors)
        return 0
    from .matrix import run_matrix

    return run_matrix([HOSTS[n] for n in names], args.dest)


if __name__ == "__main__":
    sys.exit(main())
