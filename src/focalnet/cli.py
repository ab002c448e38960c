"""The ``focalnet`` command: a thin layer over the Python API.

:data:`COMMANDS` lists every command with the module that adds it (``register(subparsers)``) and its
one-line help. Only the command given on the command line is built, so ``focalnet --help`` imports no
task package (nor torch), and a broken optional dependency fails only the commands that import it, with
one line naming the package and the fix.

Errors: everything that reaches the user is one ``error: ...`` line on stderr and exit code 2 (1 when a
training run diverged; the commands that process several inputs return 1 when some failed); ``--debug``
(anywhere on the command line) or ``FOCALNET_DEBUG=1`` also prints the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = ["COMMANDS", "Command", "build_parser", "error_line", "main"]


class Command(NamedTuple):
    """A ``focalnet`` command: the module whose ``register(subparsers)`` adds it, and its one-line help."""

    module: str
    help: str


COMMANDS: dict[str, Command] = {
    "models": Command("focalnet.core_cli", "table of the registered variants"),
    "info": Command("focalnet.core_cli", "inspect a checkpoint: layout, inferred architecture, key fit"),
    "convert": Command("focalnet.core_cli", "convert a checkpoint between layouts"),
    "classify": Command("focalnet.core_cli", "classify images (default: a scikit-image sample photo)"),
    "classification": Command(
        "focalnet.classification.cli", "train, evaluate and run image classifiers (ImageFolder data)"
    ),
    "detection": Command("focalnet.detection.cli", "object detection and instance segmentation (COCO-format data)"),
    "segmentation": Command("focalnet.segmentation.cli", "semantic segmentation with UPerNet (ADE20K / folders)"),
    "visualize": Command("focalnet.visualize_cli", "gating maps, modulator and focal kernels of a FocalNet on images"),
    "demo": Command(
        "focalnet.demo_cli", "train a small FocalNet on handwritten digits (offline, minutes on a CPU) and visualise it"
    ),
    "benchmark": Command("focalnet.benchmark_cli", "images/s, memory and output differences vs timm, side by side"),
    "export": Command("focalnet.export", "any model to checked ONNX (every task) or TorchScript (classifiers)"),
    "app": Command(
        "focalnet.app.cli", "local web app: the modulation maps and the three tasks on your images (Gradio)"
    ),
}

# leaf commands that compute nothing (they get no --threads)
_NO_COMPUTE = {"models", "info", "configs"}
_DEBUG_HELP = "print the traceback of an error too (also FOCALNET_DEBUG=1)"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose subcommands report a mistyped option themselves: their own usage line and
    the closest valid option, instead of the top-level usage."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        ns, extras = super().parse_known_args(args, namespace)
        if extras and not self._subparsers:
            bad = next((a for a in extras if a.startswith("-")), extras[0])
            msg = f"unrecognized arguments: {' '.join(extras)}"
            if bad.startswith("-"):
                import difflib

                close = difflib.get_close_matches(bad.split("=")[0], list(self._option_string_actions), n=1)
                if close:
                    msg += f" (did you mean {close[0]}?)"
            self.error(msg)
        return ns, extras


def _leaf_parsers(parser: argparse.ArgumentParser, name: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [(name, parser)]
    out = []
    for action in subs:
        for cmd, p in action.choices.items():
            out.extend(_leaf_parsers(p, cmd))
    return out


def _finish_leaves(parser: argparse.ArgumentParser, built: Iterable[argparse.ArgumentParser]) -> None:
    """``--debug`` on every built command, ``--threads`` on every one that computes."""
    from .engine.options import add_threads_arg

    seen: set[int] = set()
    for top in built:
        for name, p in _leaf_parsers(top, top.prog.split()[-1]):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if "--debug" not in p._option_string_actions:
                p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
            if name not in _NO_COMPUTE and "--threads" not in p._option_string_actions:
                add_threads_arg(p)


class _Commands(argparse._SubParsersAction):
    """The top-level commands: their one-line help comes from :data:`COMMANDS`."""

    def add_parser(self, name: str, **kwargs):  # type: ignore[no-untyped-def, override]
        if name in COMMANDS:
            kwargs["help"] = COMMANDS[name].help
        return super().add_parser(name, **kwargs)


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``focalnet`` parser with the given ``commands`` built (``None``: all of them); the others are
    listed by name and help only (their modules are not imported)."""
    parser = _Parser(prog="focalnet", description="Focal Modulation Networks")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", action=_Commands)
    wanted = set(COMMANDS) if commands is None else set(commands) & set(COMMANDS)
    modules = {COMMANDS[n].module for n in wanted}
    built = []
    for name, command in COMMANDS.items():
        if command.module in modules:
            if name not in sub.choices:  # a module may add several commands (focalnet.core_cli)
                importlib.import_module(command.module).register(sub)
            built.append(sub.choices[name])
        else:
            sub.add_parser(name, add_help=False)
    _finish_leaves(parser, built)
    return parser


def _selected_command(argv: Sequence[str]) -> str | None:
    """The command named on the command line (its first word that is not an option)."""
    return next((a for a in argv if not a.startswith("-")), None)


def _apply_threads(args: argparse.Namespace) -> None:
    """Set torch's threads for commands with ``--threads`` (train commands refine it once their config,
    hence their data-loader workers, is known)."""
    if not hasattr(args, "threads"):
        return
    from .engine.resources import fit_workers, keep_freed_memory, set_threads

    keep_freed_memory()  # every command that computes: large activations reuse freed memory (see its doc)
    workers = getattr(args, "workers", None)
    set_threads(args.threads, workers=fit_workers(workers) if hasattr(args, "workers") else 0)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if any(line.startswith(("Traceback", "Original Traceback")) for line in lines):
        return lines[-1]  # an exception re-raised from a worker process: its last line is the error
    return " ".join(lines)


def _failed_package(e: ImportError) -> str:
    """The top-level package whose import failed: the missing module, or the first file of the traceback
    outside this package."""
    if isinstance(e, ModuleNotFoundError) and e.name and not e.name.startswith("focalnet"):
        return e.name.split(".")[0]
    here = Path(__file__).resolve().parent
    roots = sorted((Path(p).resolve() for p in sys.path if p and Path(p).is_dir()), key=lambda p: -len(p.parts))
    for frame in traceback.extract_tb(e.__traceback__):
        path = Path(frame.filename)
        if not path.is_absolute() or here in path.resolve().parents:
            continue
        for root in roots:
            if root in path.resolve().parents:
                return path.resolve().relative_to(root).parts[0].removesuffix(".py")
    return (e.name or "a dependency").split(".")[0]


def _import_fix(package: str, missing: bool) -> str:
    """How to repair an installation where ``package`` is ``missing`` or fails to import."""
    from importlib import metadata

    dist = (metadata.packages_distributions().get(package) or [package])[0]
    fix = f"install it: pip install {dist}" if missing else f"reinstall it: pip install --force-reinstall {dist}"
    if package in ("torchvision", "torchaudio"):
        try:
            fix += f" (the release built for the installed torch {metadata.version('torch')})"
        except metadata.PackageNotFoundError:
            pass
    return fix


def error_line(e: BaseException, command: str | None = None) -> tuple[str, int]:
    """The one line (``error: ...``) and exit code that ``focalnet`` reports for exception ``e``."""
    hub = sys.modules.get("focalnet.weights.hub")
    if isinstance(e, KeyboardInterrupt):  # Ctrl-C / SIGINT: exit 130 (128 + 2) like a shell, one line
        msg = _one_line(str(e))
        return f"error: {msg if msg.startswith('interrupted') else 'interrupted'}", 130
    if isinstance(e, ImportError):
        package = _failed_package(e)
        what = f"focalnet {command}" if command else "focalnet"
        reason = _one_line(f"{type(e).__name__}: {e}")
        missing = isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == package
        return f"error: {what} needs {package}, which cannot be imported ({reason}); {_import_fix(package, missing)}", 2
    if isinstance(e, FloatingPointError):  # training diverged (non-finite loss)
        return f"error: {_one_line(str(e))}", 1
    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.filename:
        return f"error: {e.strerror or type(e).__name__}: {e.filename}", 2
    if isinstance(e, (OSError, ValueError)) or (hub is not None and isinstance(e, hub.PretrainedUnavailableError)):
        return f"error: {_one_line(str(e)) or type(e).__name__}", 2  # bad input: files, settings, data
    msg = _one_line(str(e))
    return f"error: {type(e).__name__}{': ' + msg if msg else ''} (run with --debug for the traceback)", 2


def _debug(argv: Sequence[str]) -> bool:
    options = argv[: argv.index("--")] if "--" in argv else argv
    return "--debug" in options or os.environ.get("FOCALNET_DEBUG", "").strip() not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``focalnet`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _selected_command(argv)
    try:
        parser = build_parser([command] if command else [])
        args = parser.parse_args(argv)
        _apply_threads(args)
        return int(args.func(args) or 0)
    except Exception as e:  # one line for the user; the traceback with --debug
        return _report(e, command, _debug(argv))
    except KeyboardInterrupt as e:
        return _report(e, command, _debug(argv))


def _report(e: BaseException, command: str | None, debug: bool) -> int:
    line, code = error_line(e, command)
    if debug:
        traceback.print_exception(e)
    print(line, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
