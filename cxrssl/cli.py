"""`cxrssl <command> [hydra overrides]`: one console script, one Hydra app per command.

Each command keeps Hydra's whole CLI (overrides, -m, --cfg, --info, --help, shell completion)
because we hand the remaining argv to a real `hydra.main` with `conf/<command>.yaml` as primary
config. Only the dispatch happens here; heavy imports wait until a command runs.

Errors the user can fix (:class:`cxrssl.errors.UserError`: bad rows, unreadable images, a wrong
checkpoint, impossible config values, an unreachable tracking server ...) end the command with
one line, ``cxrssl <command>: error: <message>``, and exit status 2; any other exception is a bug
and keeps Hydra's traceback. ``HYDRA_FULL_ERROR=1`` shows the traceback for both.
"""
from __future__ import annotations

import sys
from importlib import import_module
from pathlib import Path

from cxrssl.errors import UserError

COMMANDS = {
    "pretrain": "self-supervised pretraining (pretext=age|sex|recon|simclr|moco|byol|dino|mae)",
    "finetune": "fine-tune a pretrained encoder to detect cardiomegaly",
    "evaluate": "clinical evaluation of a fine-tuned checkpoint (metrics with 95% CIs, plots, subgroups)",
    "explain": "attribution maps (Grad-CAM, IG, ...) with galleries and localisation checks",
    "predict": "probabilities and labels for a folder, glob or CSV of images",
    "probe": "frozen-feature linear/kNN probe of an encoder (cached embeddings, CIs as evaluate, t-SNE)",
    "export": "a fine-tuned classifier as ONNX or TorchScript (threshold and preprocessing as metadata)",
}

USAGE = """usage: cxrssl <command> [hydra overrides ...] [-m] [--cfg job|hydra|all] [--info] [--help]

commands:
{commands}

examples:
  cxrssl pretrain                                    # synthetic phantoms, resnet18, age pretext
  cxrssl pretrain pretext=recon backbone=densenet121 optimizer=sgd optimizer.lr=0.01
  cxrssl pretrain -m optimizer.lr=1e-4,3e-4,1e-3     # Hydra multirun, grouped in MLflow
  cxrssl pretrain --help                             # config groups and every key
  mlflow ui --backend-store-uri sqlite:///mlflow.db  # compare runs
"""


def _source_checkout_plugins() -> None:
    """Hydra finds plugins (our Optuna sweeper) by listing the `hydra_plugins` namespace package; an
    editable install's import hook cannot be listed, so a source checkout puts its root on sys.path.
    A wheel install ships hydra_plugins/ in site-packages and needs nothing."""
    root = Path(__file__).resolve().parent.parent
    if (root / "hydra_plugins" / "cxrssl_optuna_sweeper").is_dir() and str(root) not in sys.path:
        sys.path.append(str(root))


def config_dir() -> Path:
    """The packaged `conf/` (shipped inside the wheel as `cxrssl.conf`); in a source checkout that
    is not installed (PYTHONPATH=.), the top-level `conf/` beside the package."""
    try:
        import cxrssl.conf
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "conf"
    return Path(cxrssl.conf.__file__).parent


def _usage() -> str:
    width = max(map(len, COMMANDS))
    return USAGE.format(commands="\n".join(f"  {c:<{width}}  {d}" for c, d in COMMANDS.items()))


def _completion_line_without_command(command: str) -> None:
    """Hydra's shell completion parses COMP_LINE after the program name as overrides; drop our
    command word so `cxrssl pretrain pre<TAB>` completes like a plain Hydra app."""
    import os

    line = os.environ.get("COMP_LINE")
    if not line:
        return
    words = line.split(" ")
    if len(words) > 1 and words[1] == command:
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
        point = int(os.environ.get("COMP_POINT", len(line)))
        os.environ["COMP_POINT"] = str(max(point - len(command) - 1, len(words[0])))


def main(argv: list[str] | None = None) -> int | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from cxrssl import __version__

        print(f"cxrssl {__version__}")
        return 0
    if argv[0] in ("-sc", "--shell-completion") and any(a.startswith("query=") for a in argv[1:]):
        # The installed completion script calls `cxrssl -sc query=bash`; the command is in COMP_LINE.
        import os

        words = os.environ.get("COMP_LINE", "").split(" ")
        if len(words) < 3 or words[1] not in COMMANDS:
            print("\n".join(c + " " for c in COMMANDS) if len(words) <= 2 else "")
            return 0
        argv = [words[1], *argv]
    elif argv[0] in ("-sc", "--shell-completion"):  # install/uninstall: any command's app writes the script
        argv = ["pretrain", *argv]
    command = argv[0]
    if command not in COMMANDS:
        print(f"cxrssl: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    _completion_line_without_command(command)
    _source_checkout_plugins()
    argv = _quiet_nonzero_rank(argv)
    import hydra

    def task_function(cfg):
        try:
            from cxrssl.commands.validation import check_config

            check_config(cfg)  # before importing the command (torch: seconds): mistakes fail at once
            return import_module(f"cxrssl.commands.{command}").run(cfg)
        except UserError as error:
            if _full_error():
                raise
            # SystemExit passes through Hydra's job runner and its traceback printer untouched.
            raise _UserExit(format_user_error(command, error)) from None

    task_function.__module__ = f"cxrssl.commands.{command}"
    _config_errors_as_user_errors(command)
    app = hydra.main(config_path=str(config_dir()), config_name=command, version_base="1.3")(task_function)
    sys.argv = [sys.argv[0], *argv[1:]]  # Hydra parses sys.argv[1:]
    try:
        app()
    except _UserExit as stop:
        print(stop.message, file=sys.stderr, flush=True)
        return USER_ERROR_STATUS
    return 0


USER_ERROR_STATUS = 2

#: What a torchrun rank other than 0 overrides: Hydra would create its OWN `outputs/<command>/<time>/`
#: (its `${now:}` differs from rank 0's) with `.hydra/` and a log file; rank 0 decides the run dir
#: and broadcasts it (commands/report.py), so the other ranks write nothing of Hydra's anywhere.
_RANK_OVERRIDES = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout")


def _quiet_nonzero_rank(argv: list[str]) -> list[str]:
    import os

    if os.environ.get("RANK", "0") in ("", "0") or any(a in ("-m", "--multirun") for a in argv):
        return argv
    keys = tuple(o.split("=", 1)[0] + "=" for o in _RANK_OVERRIDES)
    return [a for a in argv if not a.lstrip("+~").startswith(keys)] + list(_RANK_OVERRIDES)


def format_user_error(command: str, error: BaseException) -> str:
    """`cxrssl <command>: error: <message>`. An error re-raised by a DataLoader worker carries the
    worker's traceback in its message; only its last line (the original message) is kept."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.startswith(type(error).__module__) and ": " in last else last
    return f"cxrssl {command}: error: {text}"


class _UserExit(SystemExit):
    """Carries a :class:`UserError`'s one clean message from inside the Hydra job to `main`."""

    def __init__(self, message: str):
        super().__init__(USER_ERROR_STATUS)
        self.message = message


def _config_errors_as_user_errors(command: str) -> None:
    """Hydra reports a bad override or config option (`backbone=resnet9000`, a typo in a key) with
    a clean message but exit status 1; give it our prefix and status 2 like every user error.
    Wraps `hydra._internal.utils.run_and_report` (looked up at call time by `_run_hydra`); if a
    Hydra release moves it, Hydra's own reporting simply stays."""
    try:
        import hydra._internal.utils as hydra_utils
        from hydra.errors import CompactHydraException
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:  # pragma: no cover
        return
    original = getattr(hydra_utils, "run_and_report", None)
    if original is None or getattr(original, "_cxrssl", False):
        return

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except CompactHydraException as error:
                if _full_error():
                    raise
                cause = error.__cause__
                detail = f"\n{cause}" if isinstance(cause, OmegaConfBaseException) else ""
                raise _UserExit(f"cxrssl {command}: error: {error}{detail}") from None
        return original(guarded)

    run_and_report._cxrssl = True  # type: ignore[attr-defined]
    hydra_utils.run_and_report = run_and_report


def _full_error() -> bool:
    """`HYDRA_FULL_ERROR=1`: tracebacks for user errors too (Hydra's own switch, so one knob)."""
    import os

    return os.environ.get("HYDRA_FULL_ERROR", "") not in ("", "0")


if __name__ == "__main__":
    sys.exit(main())
