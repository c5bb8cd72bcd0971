"""``geotune train`` and ``geotune benchmark``: Hydra apps run on the arguments after the
subcommand, with errors of the user's data or config reported as one line."""

from __future__ import annotations

import sys

from datamodules.errors import UserError


def run_hydra(config_name: str, task) -> int:
    """Run ``task(cfg)`` as a Hydra app on the arguments after the subcommand.

    An error in the user's data, config or overrides is one line ``error: ...`` on stderr and
    exit code 2, no traceback (``--verbose`` or ``HYDRA_FULL_ERROR=1`` prints it too); other
    errors keep their traceback."""
    import os

    import hydra

    from .config import CONFIG_PATH, register_resolvers
    from .console import lightning_logs_once

    register_resolvers()
    original = list(sys.argv)
    args = [a for a in original[2:] if a != "--verbose"]
    verbose = len(args) < len(original) - 2 or os.environ.get("HYDRA_FULL_ERROR") == "1"
    status = {"code": 0}

    @hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=config_name)
    def _app(cfg):
        sys.argv = original  # Lightning's DDP launcher re-executes this exact command line
        try:
            lightning_logs_once()
            task(cfg)
        except Exception as e:
            if not report_error(e, original[1], verbose):
                raise
            status["code"] = 2

    sys.argv = [original[0], *args]
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing: reported below
    try:
        _app()
    except Exception as e:
        if not report_error(e, original[1], verbose):
            raise
        status["code"] = 2
    finally:
        sys.argv = original
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    return status["code"]


def report_error(e: BaseException, command: str, verbose: bool) -> bool:
    """Print ``error: <message>`` for an error of the user's data or config; False if ``e`` is
    not one (a bug: its traceback is the report)."""
    from .config import config_error

    user = _user_error(e)
    message = str(user) if user is not None else config_error(e, command)
    if message is None:
        return False
    if verbose:
        import traceback

        traceback.print_exception(e)
    print(f"error: {message}", file=sys.stderr)
    return True


def _user_error(e: BaseException | None) -> UserError | None:
    """The user error behind ``e``, also when Hydra's instantiate or Lightning wrapped it."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, UserError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def _benchmark_and_report(cfg) -> None:
    from .benchmark import benchmark, print_summary

    print_summary(benchmark(cfg))


def _train_and_report(cfg) -> None:
    from .train import train

    result = train(cfg)
    if result.get("global_rank", 0) == 0:  # DDP: the other ranks' processes stay quiet
        print_result(result)


def print_result(result: dict) -> None:
    test = result.get("test", {})
    keys = [k for k in test if k.count("/") == 1] + sorted(
        k for k in test if k.startswith("test/IoU/")
    )
    width = max((len(k) for k in keys), default=10)
    if keys:
        print("\n" + "metric".ljust(width) + "   value")
    for k in keys:
        print(f"{k.ljust(width)}   {test[k]:.4f}")
    note = result.get("evaluation", {}).get("note")
    if note:
        print(f"\n{note}")
    print(f"\nMLflow run: {result['run_id']}")
    if result.get("model_version"):
        print(f"registered: {result['registered_name']} version {result['model_version']}")
    elif result.get("model_uri"):
        print(f"model: {result['model_uri']} (not registered: add register.name=NAME)")


HYDRA_COMMANDS = {
    "train": ("train", _train_and_report),
    "benchmark": ("benchmark", _benchmark_and_report),
}


def add_hydra_parsers(sub) -> None:
    """``train`` and ``benchmark`` in ``geotune --help``; their arguments are Hydra's."""
    sub.add_parser(
        "train",
        help="fine-tune (a Hydra app: geotune train --help shows the config groups)",
        add_help=False,
    )
    sub.add_parser(
        "benchmark",
        help="backbones x label budgets x seeds on one dataset → experiments/<name>/ (a Hydra app)",
        add_help=False,
    )
