"""`spark-vllm` / `python -m launch`: argv in, exit code out.

This is the only place that parses argv, prints errors and picks exit codes; the
work is done by `orchestrator`. Each command lives in its own module and
registers its sub-parser here.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from orchestrator import __version__, errors
from orchestrator.cluster import raycompat
from orchestrator.ops.observation import logs
from orchestrator.settings import Settings

from . import (benchcmd, clustercmd, containercmd, democmd, doctorcmd, fabriccmd, healthcmd, modelscmd, netcmd,
               recipecmd, servecmd)
from .exitcodes import exit_code_for

log = logging.getLogger("spark_vllm")

COMMANDS = (netcmd, clustercmd, servecmd, democmd, modelscmd, doctorcmd, benchcmd, fabriccmd, containercmd, healthcmd,
            recipecmd)


class Parser(argparse.ArgumentParser):
    """argparse, with errors on one line like every other spark-vllm error."""

    def error(self, message: str):
        self.exit(2, f"spark-vllm: error: {message} (see `{self.prog} --help`)\n")


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    parser = Parser(
        prog="spark-vllm",
        description="Serve an LLM with vLLM across DGX Spark machines (Ray, tensor parallel).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"spark-vllm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="more detail in the log")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.register(sub, settings)
    for command in sub.choices.values():
        add_logging_options(command, settings)
    return parser


def add_logging_options(p: argparse.ArgumentParser, settings: Settings) -> None:
    g = p.add_argument_group("logging")
    g.add_argument("--log-format", choices=logs.FORMATS, default=settings.log_format,
                   help="readable lines (text, default) or one JSON object a line (env SPARK_VLLM_LOG_FORMAT)")
    g.add_argument("--log-dir", default=settings.log_dir, metavar="DIR",
                   help=f"also write the log to DIR/{logs.FILE_NAME}, rotated by size (env SPARK_VLLM_LOG_DIR)")
    g.add_argument("--log-max-bytes", type=int, default=logs.DEFAULT_MAX_BYTES, metavar="N",
                   help="rotate the log file at N bytes; Ray's logs rotate at the same size (default 100 MiB)")
    g.add_argument("--log-backups", type=int, default=logs.DEFAULT_BACKUPS, metavar="N",
                   help="rotated files kept, ours and Ray's (default 5)")


def setup_logging(args: argparse.Namespace) -> None:
    """Our own lines (text or JSON, on stderr and in --log-dir); vLLM and Ray keep
    their own console formats."""
    args.log_options = logs.LogOptions(args.log_format, args.log_dir, args.log_max_bytes, args.log_backups,
                                       args.verbose)
    logs.configure(args.log_options)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env(os.environ)
    parser = build_parser(settings)
    # After `--`, vLLM's flags as they are: argparse would take the first for a MODEL.
    tail = argv[argv.index("--") + 1:] if "--" in argv else []
    args, extra = parser.parse_known_args(argv[:len(argv) - len(tail) - 1] if "--" in argv else argv)
    extra += tail
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        setup_logging(args)
        if getattr(args, "needs_ray", False):
            raycompat.require_ray()  # before Ray is imported: one line, exit 17, below the minimum
        return args.func(args, settings) or 0
    except KeyboardInterrupt:
        print("spark-vllm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `spark-vllm net --json | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except errors.Stopped:
        log.info("stopped")
        return 0
    except errors.SparkVllmError as exc:
        if os.environ.get("SPARK_VLLM_DEBUG"):
            raise
        print(f"spark-vllm: error: {exc}", file=sys.stderr)
        logs.to_files(f"error: {exc}")
        return exit_code_for(exc)
