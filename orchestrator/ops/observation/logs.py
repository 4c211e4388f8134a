"""spark-vllm's log: readable lines or JSON (one object a line), on stderr and, with a
log folder, in a size-rotated file with a retention count; and Ray's own rotation
set to the same size and count.

Only the loggers named here get our handlers (`spark_vllm`, then vLLM's and Ray's
Python loggers once they are imported, see `capture`); Ray's daemons keep writing their
own files under Ray's session folder, rotated by Ray with the same limits.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.handlers
import sys
from dataclasses import dataclass
from pathlib import Path

from ...errors import UsageError

LOGGER = "spark_vllm"
FILE_NAME = "spark-vllm.log"
DEFAULT_MAX_BYTES = 100 << 20
DEFAULT_BACKUPS = 5
FORMATS = ("text", "json")
_MARK = "_spark_vllm_handler"  # our handlers, so that a second setup replaces them


@dataclass(frozen=True)
class LogOptions:
    format: str = "text"
    directory: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    backups: int = DEFAULT_BACKUPS
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UsageError(f"--log-format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.max_bytes < 1024 or self.backups < 0:
            raise UsageError(f"--log-max-bytes {self.max_bytes} / --log-backups {self.backups}: "
                             "at least 1024 bytes and 0 backups")

    def ray_environment(self) -> dict[str, str]:
        """Ray's own log rotation (raylet, GCS, workers), set to match ours."""
        return {"RAY_ROTATION_MAX_BYTES": str(self.max_bytes), "RAY_ROTATION_BACKUP_COUNT": str(self.backups)}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


def formatter(options: LogOptions, prefix: str) -> logging.Formatter:
    if options.format == "json":
        return JsonFormatter()
    return logging.Formatter(prefix + "%(message)s")


def handlers(options: LogOptions, stream=None) -> list[logging.Handler]:
    """stderr, plus the rotated file when a folder is given."""
    out: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    out[0].setFormatter(formatter(options, "spark-vllm: "))
    if options.directory:
        folder = Path(options.directory).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fh = logging.handlers.RotatingFileHandler(folder / FILE_NAME, maxBytes=options.max_bytes,
                                                      backupCount=options.backups, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write logs in {folder}: {exc.strerror}", "pick another --log-dir") from None
        fh.setFormatter(formatter(options, "%(asctime)s %(levelname)s %(name)s: "))
        out.append(fh)
    for h in out:
        setattr(h, _MARK, True)
    return out


def configure(options: LogOptions, stream=None) -> list[logging.Handler]:
    """Our logger's handlers (replacing those of an earlier call), and its level."""
    logger = logging.getLogger(LOGGER)
    for h in [h for h in logger.handlers if getattr(h, _MARK, False)]:
        logger.removeHandler(h)
        h.close()
    new = handlers(options, stream)
    for h in new:
        logger.addHandler(h)
    logger.setLevel(logging.DEBUG if options.verbose else logging.INFO)
    logger.propagate = False
    return new


def capture(names: tuple[str, ...] = ("vllm", "ray")) -> None:
    """Send these libraries' Python loggers to our log file too (call after importing
    them: vLLM configures its logger at import). Their console output stays theirs."""
    ours = [h for h in logging.getLogger(LOGGER).handlers
            if getattr(h, _MARK, False) and isinstance(h, logging.handlers.RotatingFileHandler)]
    for name in names:
        logger = logging.getLogger(name)
        for h in ours:
            if h not in logger.handlers:
                logger.addHandler(h)


def to_files(message: str, level: int = logging.ERROR) -> None:
    """A line for the log file only (the final error, which the CLI prints itself)."""
    logger = logging.getLogger(LOGGER)
    record = logger.makeRecord(LOGGER, level, __file__, 0, message, None, None)
    for h in logger.handlers:
        if getattr(h, _MARK, False) and isinstance(h, logging.handlers.RotatingFileHandler):
            h.handle(record)
