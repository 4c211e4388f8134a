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
from orchestrator.settings import Settings

from . import clustercmd, democmd, fabriccmd, netcmd, servecmd
from .exitcodes import exit_code_for

log = logging.getLogger("spark_vllm")

COMMANDS = (netcmd, clustercmd, servecmd, democmd, fabriccmd)


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
    return parser


def setup_logging(verbose: bool) -> None:
    """Our own lines, prefixed; vLLM and Ray keep their own loggers and formats."""
    logger = logging.getLogger("spark_vllm")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("spark-vllm: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings = Settings.from_env(os.environ)
    parser = build_parser(settings)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    setup_logging(args.verbose)
    try:
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
        return exit_code_for(exc)
