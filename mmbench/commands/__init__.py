"""The ``mmbench`` command line: one module per command family, commands from plugins.

Bad input exits with status 2 and one line naming the field; nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys

from mmbench.commands.bench import bench_parser
from mmbench.commands.listing import cmd_list
from mmbench.commands.parsing import Parser
from mmbench.commands.run import run_parser
from mmbench.commands.stored import RENDERERS, cmd_compare, cmd_runs, cmd_show
from mmbench.commands.sweep import sweep_parsers
from mmbench.errors import BackendError, ConfigError, ModelError
from mmbench.host.manager import get_host


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mmbench", description="Benchmarks for KVM's MMU invalidation paths.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    reg = get_host().registry
    p = sub.add_parser("list", help="plugins and what each provides")
    p.add_argument(
        "--metrics",
        metavar="WORKLOAD",
        choices=reg.names("workload"),
        help="a workload's metrics: kernel stat name, unit, direction, meaning"
        f" ({', '.join(reg.names('workload'))})",
    )
    p.add_argument(
        "--primitives",
        action="store_true",
        help="the model primitives a policy composes, with signatures and docstrings",
    )
    p.add_argument(
        "--costs",
        metavar="ARCH",
        choices=reg.names("arch"),
        help="an arch's cost table: value, kind (measured/derived/estimate/absent), range,"
        " source, and the workloads whose headline figures depend on each constant"
        f" ({', '.join(reg.names('arch'))}; runs the model, a few seconds)",
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="--costs: text table or one JSON document",
    )
    p.set_defaults(func=cmd_list)
    run_parser(sub, reg)
    bench_parser(sub, reg)
    p = sub.add_parser("runs", help="list stored runs")
    p.add_argument("--runs-dir")
    p.set_defaults(func=cmd_runs)
    p = sub.add_parser("compare", help="set stored runs side by side (first is the baseline)")
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument(
        "--format",
        choices=sorted(RENDERERS),
        default="text",
        help="text (rich tables on a terminal, plain in pipes), markdown, json or html",
    )
    p.add_argument(
        "--baseline",
        metavar="RUN/POLICY",
        help="column the others are set against (default: the first run's first policy)",
    )
    p.add_argument("--runs-dir")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("show", help="print a stored run's comparison")
    p.add_argument("run")
    p.add_argument("--runs-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)
    sweep_parsers(sub)
    for name in reg.names("command"):
        command = reg.get("command", name)()
        p = sub.add_parser(name, help=command.help, description=command.__doc__)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return args.func(args)
    except ConfigError as exc:
        print(f"mmbench: error: {exc}", file=sys.stderr)
        return 2
    except ModelError as exc:
        print(f"mmbench: model error: {exc}", file=sys.stderr)
        return 1
    except BackendError as exc:
        print(f"mmbench: kernel error: {exc}; nothing was saved", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mmbench: interrupted; nothing was saved", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mmbench ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
