"""The command-line options the tasks share, defined once, and the one way from flags to a validated config.

Every ``train``, ``evaluate`` and ``predict`` command of the three tasks takes the shared options of its
kind through :func:`add_shared_options` (same flags, destination, type, choices and help everywhere):

- every kind: ``--output DIR`` (``--out``; required by ``train``), ``--overwrite`` (``train``: start over in
  a folder of another run; the others: replace files they did not write, see
  :class:`focalnet.engine.outputs.OutputRule`), ``--device``, ``--threads``, ``--no-progress``;
- ``train`` and ``evaluate``: ``--max-images N`` (training's evaluations too);
- ``train``: ``--resume``, ``--set KEY=VALUE``, ``--eval-every N``, ``--no-eval``, ``--dry-run``.

A training command turns its flags into its run config with :func:`config_from_args`: the config file
(``--config``: a packaged name or a YAML file), then the flags through the task's table (flag destination
-> dotted config key(s), or a function for flags that set several keys), then ``--set`` overrides, then the
typed, validated build. This module imports neither torch nor a task package: the parser of
``focalnet <task> --help`` is built in milliseconds.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

__all__ = [
    "COMMAND_KINDS",
    "FlagTable",
    "add_dry_run_arg",
    "add_device_arg",
    "add_json_arg",
    "add_old_spelling",
    "add_overwrite_arg",
    "add_progress_arg",
    "add_shared_options",
    "add_threads_arg",
    "check_device",
    "config_from_args",
    "flag_values",
    "json_file",
    "off",
    "positive_int",
    "raise_if_interrupted",
]

T = TypeVar("T")

Kind = Literal["train", "evaluate", "predict"]
COMMAND_KINDS: tuple[Kind, ...] = ("train", "evaluate", "predict")

# a flag's destination -> the dotted config key it sets, several keys it sets to the same value, or a
# function (value, base) -> {dotted key: value}, ``base()`` being the config of the defaults and the file
FlagTarget = str | tuple[str, ...] | Callable[[Any, Callable[[], Any]], Mapping[str, Any]]
FlagTable = Mapping[str, FlagTarget]

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device(name: str) -> str:
    """``name`` if it is ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; else a ``ValueError`` naming the choices."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N (N: a GPU index), got {name!r}")
    return name


def _device_arg(text: str) -> str:
    try:
        return check_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (``--epochs``, ``--threads``, ``--batch-size``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


_THREADS_HELP = (
    "CPU compute threads (default: the cores this process may use, less one per data loader worker, shared among "
    "torchrun's processes)"
)

_OUTPUT_HELP: dict[str, str] = {
    "train": "run folder (required): config.yaml, checkpoints/, metrics.json, train.log and the trained model",
    "evaluate": "folder for metrics.json and the task's other result files (default: none; segmentation: "
    "eval-SPLIT-MODE/ next to the checkpoint)",
    "predict": "folder for the predictions (default: ./predictions; classification: none, it prints them)",
}

_OVERWRITE_HELP = (
    "replace output files that exist and were not written by an earlier run of this command",
    "start a new run in a folder holding another run's checkpoints, deleting them",
)

# the shared options, in the order they are added: flags, argparse settings, the kinds of command taking them
_SHARED: tuple[tuple[tuple[str, ...], dict[str, Any], tuple[Kind, ...]], ...] = (
    (("--output", "--out"), {"dest": "output", "metavar": "DIR"}, COMMAND_KINDS),  # + required, help by kind
    (
        ("--resume",),
        {"metavar": "auto|PATH", "help": "'auto' (latest valid checkpoint in OUTPUT) or a checkpoint"},
        ("train",),
    ),
    (
        ("--overwrite",),
        {"action": "store_true"},  # + help by kind
        COMMAND_KINDS,
    ),
    (
        ("--set",),
        {
            "dest": "overrides",
            "nargs": "+",
            "action": "extend",
            "default": [],
            "metavar": "KEY=VALUE",
            "help": "override any config value (dotted key, YAML value), after --config and the options, e.g. "
            "--set data.num_workers=4 (repeatable: all apply, in order)",
        },
        ("train",),
    ),
    (
        ("--device",),
        {
            "type": _device_arg,
            "metavar": "DEVICE",
            "help": "auto (the default: CUDA when available, else the CPU), cpu, cuda or cuda:N",
        },
        COMMAND_KINDS,
    ),
    (("--threads",), {"type": positive_int, "default": None, "metavar": "N", "help": _THREADS_HELP}, COMMAND_KINDS),
    (
        ("--no-progress",),
        {"action": "store_true", "help": "no progress bars (logs and results only)"},
        COMMAND_KINDS,
    ),
    (
        ("--max-images",),
        {
            "type": int,
            "metavar": "N",
            "help": "evaluate on N images only, in training too (default: all, or the recipe's share in a trial "
            "run of segmentation; classification takes them evenly over the classes, the others the first N)",
        },
        ("train", "evaluate"),
    ),
    (
        ("--eval-every",),
        {
            "type": int,
            "metavar": "N",
            "help": "evaluate every N epochs (iteration-based runs: every N steps); 0: only at the end",
        },
        ("train",),
    ),
    (
        ("--no-eval",),
        {"action": "store_true", "help": "do not evaluate, neither during nor after training"},
        ("train",),
    ),
    (
        ("--dry-run",),
        {
            "action": "store_true",
            "help": "resolve the settings, check the inputs exist, build the model on the meta device, print the "
            "config and one summary line (model, parameters, updates, warm-up, images per epoch); write nothing",
        },
        ("train",),
    ),
)


def add_dry_run_arg(parser: argparse.ArgumentParser) -> None:
    """The ``--dry-run`` option of every training command (for commands without the shared options)."""
    flags, settings, _ = next(row for row in _SHARED if row[0] == ("--dry-run",))
    parser.add_argument(*flags, **settings)


def add_threads_arg(parser: argparse.ArgumentParser) -> None:
    """The ``--threads`` option every computing command shares (see :mod:`focalnet.engine.resources`)."""
    flags, settings, _ = next(row for row in _SHARED if row[0] == ("--threads",))
    parser.add_argument(*flags, **settings)


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    """``--overwrite`` of the commands outside the three tasks that write files (convert, export, classify,
    visualize, benchmark): the same flag as the tasks' evaluate and predict (:class:`~focalnet.engine.outputs.OutputRule`)."""
    parser.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP[0])


def add_device_arg(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """The ``--device`` option (``auto|cpu|cuda|cuda:N``, checked by :func:`check_device`) of the commands
    outside the three tasks (``classification throughput``, ``benchmark``, ``app``): the tasks' own."""
    flags, settings, _ = next(row for row in _SHARED if row[0] == ("--device",))
    parser.add_argument(*flags, **settings, default=default)


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` of the commands outside the three tasks (``demo``, ``benchmark``), with their old
    name ``--quiet`` kept for one release (a note says so)."""
    flags, settings, _ = next(row for row in _SHARED if row[0] == ("--no-progress",))
    parser.add_argument(*flags, **settings)
    add_old_spelling(parser, "--quiet", "--no-progress")


_NOTED: set[str] = set()


def _note_once(text: str) -> None:
    if text not in _NOTED:
        _NOTED.add(text)
        print(f"note: {text}", file=sys.stderr)


class _OldSpelling(argparse.Action):
    """An option's old name, kept for one release: it sets what the new one sets and says so once."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        _note_once(f"{option_string} is now {self.new}; the old name goes in the next release")
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


def add_old_spelling(parser: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept ``old`` as a hidden alias of the option ``new`` (same destination, type and number of values)
    for one release, with a note on stderr when it is used."""
    action = parser._option_string_actions[new]
    nargs = 0 if action.nargs == 0 else action.nargs
    extra = {} if nargs == 0 else {"type": action.type, "metavar": action.metavar}
    parser.add_argument(old, action=_OldSpelling, dest=action.dest, new=new, nargs=nargs, **extra)


def add_json_arg(parser: argparse.ArgumentParser, files: str = "") -> None:
    """``--json``: print the results as JSON on stdout instead of text, as every command with ``--json``
    (files go under ``--output DIR``; ``files`` names them in the help). The old ``--json FILE`` of a few
    commands still writes FILE for one release (:func:`json_file`; the output rule checks it like any
    output, so ``--json image.png`` meant as a switch is refused, not written)."""
    where = f"; --output DIR writes {files}" if files else ""
    parser.add_argument(
        "--json",
        nargs="?",
        const=True,
        default=False,
        metavar="FILE",
        help=f"print the results as JSON instead of text{where} (--json FILE: deprecated, still written)",
    )


def json_file(args: argparse.Namespace, note: bool = False) -> str | None:
    """The file of the deprecated ``--json FILE`` (``None`` for the switch or no ``--json``); ``note``: also
    say, once, that the spelling goes (commands ask at their end, so that a refusal stays one line)."""
    value = getattr(args, "json", None)
    if not isinstance(value, str):
        return None
    if note:
        _note_once(
            "--json FILE is deprecated and goes in the next release: --json prints the JSON, "
            "--output DIR writes the command's JSON file in DIR"
        )
    return value


def add_compile_arg(parser: argparse.ArgumentParser) -> None:
    """The ``--compile`` option of the dense models' evaluate and predict commands
    (:func:`focalnet.models.inference.inference_path`)."""
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also run the backbone through torch.compile (dynamic shapes: one compilation for every image "
        "size; the first image waits for it, minutes on a small CPU; same outputs within 1e-5)",
    )


def add_shared_options(parser: argparse.ArgumentParser, kind: Kind) -> None:
    """Add the options every task's ``kind`` command takes (see the module's list)."""
    if kind not in COMMAND_KINDS:
        raise ValueError(f"kind must be one of {COMMAND_KINDS}, got {kind!r}")
    group = parser.add_argument_group(f"options every task's {kind} command shares")
    for flags, settings, kinds in _SHARED:
        if kind in kinds:
            if flags[0] == "--output":
                settings = {**settings, "required": kind == "train", "help": _OUTPUT_HELP[kind]}
            elif flags[0] == "--overwrite":
                settings = {**settings, "help": _OVERWRITE_HELP[kind == "train"]}
            group.add_argument(*flags, **settings)


def off(key: str) -> Callable[[Any, Callable[[], Any]], Mapping[str, Any]]:
    """A flag table entry for a ``--no-X`` switch: when given, ``key`` is set to ``False``."""
    return lambda value, base: {key: False}


def flag_values(args: argparse.Namespace, flags: FlagTable, base: Callable[[], Any] | None = None) -> dict[str, Any]:
    """``{dotted key: value}`` of the flags given on the command line (``None``/``False``: not given)."""
    values: dict[str, Any] = {}
    for dest, target in flags.items():
        value = getattr(args, dest, None)
        if value is None or value is False:
            continue
        if isinstance(target, str):
            values[target] = value
        elif isinstance(target, tuple):
            values.update(dict.fromkeys(target, value))
        else:
            if base is None:
                raise ValueError(f"the flag table entry of {dest!r} needs the base config")
            values.update(target(value, base))
    return values


def config_from_args(
    args: argparse.Namespace,
    flags: FlagTable,
    load: Callable[[str | None, Sequence[str], Mapping[str, Any]], T],
    config: str | None = None,
) -> T:
    """The run config of a command: the config file (``config``, default ``args.config``), then the flags
    through ``flags``, then ``--set`` (``args.overrides``), built and validated by the task's
    ``load(config, overrides, values)``."""
    config = config if config is not None else getattr(args, "config", None)
    base = functools.cache(lambda: load(config, (), {}))  # for flags derived from the file's values
    values = flag_values(args, flags, base)
    return load(config, list(getattr(args, "overrides", None) or []), values)


def raise_if_interrupted(result: Mapping[str, Any], output: Any) -> None:
    """A training run stopped by SIGINT/SIGTERM (``result["interrupted"]``, after its checkpoint) ends the
    command as any interrupted command does: ``KeyboardInterrupt`` (exit 130, one line saying how to go on)."""
    if result.get("interrupted"):
        step = f" at step {result['step']}" if result.get("step") is not None else ""
        raise KeyboardInterrupt(
            f"interrupted{step}: a checkpoint was saved; continue with --output {output} --resume auto"
        )
