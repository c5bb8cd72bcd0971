"""What the commands print: warnings without colour codes where nobody sees colours."""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings

ANSI_CODE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ours(filename: str) -> bool:
    """Whether a warning was raised by geotune's own code (not a library's)."""
    path = os.path.abspath(filename)
    return path.startswith(PROJECT + os.sep) and "site-packages" not in path


def plain_warnings() -> None:
    """geotune's own warnings as ``warning: <message>`` lines, as ``geotune data add`` prints
    them (a user needs no file and line number for them); others without ANSI colour codes
    (MLflow colours some) when ``NO_COLOR`` is set (https://no-color.org) or stderr is not a
    terminal."""
    show = warnings.formatwarning
    if getattr(show, "plain", False):
        return
    colour = not os.environ.get("NO_COLOR") and sys.stderr.isatty()

    def formatwarning(message, category, filename, lineno, line=None):
        if issubclass(category, UserWarning) and _ours(filename):
            return f"warning: {message}\n"
        text = show(message, category, filename, lineno, line)
        return text if colour else ANSI_CODE.sub("", text)

    formatwarning.plain = True
    warnings.formatwarning = formatwarning


# what libraries print that tells a geotune user nothing they can act on
_LIBRARY_NOISE = (
    # torch's own pytree deprecation, raised inside Lightning on every fit/test
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


def quiet_libraries() -> None:
    """Leave out of the commands' output what libraries print that a user can do nothing
    about: torch's pytree deprecation raised inside Lightning, Lightning's advertisement of its
    cloud logger, numexpr's thread count, MLflow's INFO lines about its database and model
    signature, MLflow's progress bars for artifacts it copies on this machine (a value of
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` the user set is kept). Warnings and errors that
    concern the user's run are untouched."""
    for pattern in _LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # a logger keeps a filter once, however often it is added
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_no_tip)
    # "NumExpr defaulting to N threads", at INFO when pandas loads numexpr: Hydra's root logger
    # prints INFO lines, and a user has nothing to do about this one
    logging.getLogger("numexpr.utils").setLevel(logging.WARNING)
    # MLflow's INFO lines about its own plumbing: "Creating initial MLflow database tables",
    # "Updating database tables" (a new store) and "Validating input example against model
    # signature" (each registration); its warnings still show
    for name in ("mlflow.store.db.utils", "mlflow.pyfunc"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _no_tip(record) -> bool:
    return "litlogger" not in str(record.msg)


def lightning_logs_once() -> None:
    """Each Lightning info line once under Hydra. Hydra gives the root logger a console handler
    (and the run's log file); the ``lightning`` package adds a console handler of its own to its
    logger on import, and its lines went through both: every one was printed twice. Lightning's
    own console handler goes where the root has handlers; its lines reach the console and the
    run's log once, through the root."""
    import lightning  # noqa: F401  (its handler is added on import)

    own = logging.getLogger("lightning")
    if own.propagate and logging.getLogger().handlers:
        for handler in list(own.handlers):
            if type(handler) is logging.StreamHandler:
                own.removeHandler(handler)


class ConsoleFormatter(logging.Formatter):
    """Log lines on the console as Lightning prints them without Hydra: an INFO line is its
    message (``GPU available: False, used: False``); a library's warning or error starts with
    its level in capitals (``WARNING: ...``: geotune's own ``error: ...`` line stays the one a
    service job's failure is read from, :func:`serve.jobs.error_from_log`). Hydra's console
    handler uses it (``hydra.job_logging`` in ``conf/train.yaml`` and ``conf/benchmark.yaml``);
    the run's log file keeps Hydra's timestamped lines."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname}: {text}"
