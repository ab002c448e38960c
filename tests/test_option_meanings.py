"""One meaning per option name across every ``focalnet`` command (issue 26): the argparse tree of every
command is walked; each option name has one kind of value everywhere, the shared ones behave the same
(``--json`` a switch, ``--device`` one check, ``--threads`` a positive count, ``--no-progress``), and old
spellings are hidden aliases that set what the new name sets."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from focalnet import cli

# names whose settings differ between commands on purpose (the meaning is one; what differs is said)
VARIANTS = {
    "--amp": "training also takes 'auto' (bf16, else fp16, on GPU); evaluation picks one",
    "--checkpoint": "the app takes one per tab (repeatable); every other command one file",
    "--pretrained": "an optional release tag where a registered model has several; a switch where it has one",
    "--split": "segmentation knows its two splits; classification takes any folder under DATA",
    "--to": "the layouts each convert command writes",
    "--set": "KEY=VALUE overrides; segmentation configs stores them (printed), the others extend",
}


def leaves() -> dict[str, argparse.ArgumentParser]:
    """Every leaf command's parser, by its words (``"classification train"``)."""
    out: dict[str, argparse.ArgumentParser] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[path.strip()] = p
        for a in subs:
            for name, child in a.choices.items():
                walk(child, f"{path} {name}")

    walk(cli.build_parser(), "")
    return out


LEAVES = leaves()


def _value_kind(action: argparse.Action) -> str:
    """What an option takes, in words: a switch, a count, a number, a device, or text (names, paths)."""
    if action.nargs == 0 or (action.nargs == "?" and action.const is True and action.option_strings == ["--json"]):
        return "switch"
    t = getattr(action.type, "__name__", None)
    kind = {"int": "count", "positive_int": "count", "float": "number", "_device_arg": "device"}.get(t, "text")
    if action.type is Path or action.type is None:
        kind = "text"
    return f"{kind}{'' if action.nargs in (None, '?') else ' list'}"


def _options() -> dict[str, dict[str, argparse.Action]]:
    found: dict[str, dict[str, argparse.Action]] = {}
    for command, p in LEAVES.items():
        for action in p._actions:
            if action.help == argparse.SUPPRESS:  # an old spelling: checked below
                continue
            for flag in action.option_strings:
                found.setdefault(flag, {})[command] = action
    return found


OPTIONS = _options()


@pytest.mark.parametrize("flag", sorted(OPTIONS))
def test_each_option_name_takes_one_kind_of_value(flag):
    kinds = {}
    for command, action in OPTIONS[flag].items():
        kinds.setdefault(_value_kind(action), []).append(command)
    if flag == "--pretrained":  # bare, it asks for the released weights everywhere
        for command in OPTIONS[flag]:
            assert _parse_one(LEAVES[command], flag, []), command
        return
    if flag in VARIANTS:
        assert len({k.split()[0] for k in kinds}) == 1, (flag, kinds)
        return
    assert len(kinds) == 1, f"{flag} means different things: {kinds}"


def _parse_one(parser: argparse.ArgumentParser, flag: str, words: list[str]) -> object:
    """The value ``flag words...`` gives, through argparse's own conversion and action."""
    action = parser._option_string_actions[flag]
    ns = argparse.Namespace()
    action(parser, ns, parser._get_values(action, words), flag)
    return getattr(ns, action.dest)


@pytest.mark.parametrize("command", [c for c in LEAVES if "--json" in LEAVES[c]._option_string_actions])
def test_json_is_a_switch_everywhere(command):
    p = LEAVES[command]
    assert _parse_one(p, "--json", []) is True
    assert not p.parse_known_args([])[0].json if not _required(p) else True
    action = p._option_string_actions["--json"]
    if action.nargs == "?":  # the old --json FILE still writes FILE for one release; its new home is --output
        assert _parse_one(p, "--json", ["old.json"]) == "old.json"
        assert "--output" in p._option_string_actions, command


def _required(p: argparse.ArgumentParser) -> bool:
    return any(a.required or (not a.option_strings and a.nargs not in ("?", "*")) for a in p._actions)


@pytest.mark.parametrize("command", [c for c in LEAVES if "--device" in LEAVES[c]._option_string_actions])
def test_device_is_one_choice_set_and_one_check(command):
    p = LEAVES[command]
    for good in ("auto", "cpu", "cuda", "cuda:1"):
        assert _parse_one(p, "--device", [good]) == good
    for bad in ("gpu", "cuda:x", "CPU", "mps"):
        with pytest.raises(argparse.ArgumentError, match="device must be auto, cpu, cuda or cuda:N"):
            _parse_one(p, "--device", [bad])


@pytest.mark.parametrize("command", [c for c in LEAVES if "--threads" in LEAVES[c]._option_string_actions])
def test_threads_is_a_positive_count(command):
    p = LEAVES[command]
    assert _parse_one(p, "--threads", ["3"]) == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(argparse.ArgumentError):
            _parse_one(p, "--threads", [bad])


def test_progress_and_output_and_batch_have_one_name_each():
    for command, p in LEAVES.items():
        opts = p._option_string_actions
        if "--out" in opts:
            assert opts["--out"] is opts["--output"], command
        if "--quiet" in opts:  # the old name: hidden, and it sets what --no-progress sets
            assert opts["--quiet"].help == argparse.SUPPRESS and opts["--quiet"].dest == opts["--no-progress"].dest
            assert _parse_one(p, "--quiet", []) is True
        if "--batch" in opts:
            assert opts["--batch"].help == argparse.SUPPRESS and opts["--batch"].dest == opts["--batch-size"].dest
            assert _parse_one(p, "--batch", ["3"]) == 3
    assert {"benchmark", "classify", "classification throughput"} <= {
        c for c, p in LEAVES.items() if "--output" in p._option_string_actions
    }


@pytest.mark.parametrize(
    "command", [c for c in LEAVES if c.endswith("train") and "--batch-size" in LEAVES[c]._option_string_actions]
)
def test_batch_size_of_training_is_per_process(command):
    assert "per process" in LEAVES[command]._option_string_actions["--batch-size"].help


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "upernet_focalnet_tiny_srf_ade20k_160k"],
        ["--segmentor", "mask2former", "--task", "semantic", "--config", "mask2former_focalnet_tiny_ade20k_160k"],
    ],
)
def test_segmentation_recipes_give_their_16_images_on_8_processes(argv, tmp_path, monkeypatch):
    """Segmentation's train.batch_size counts one process's images, as every task's: the released recipes
    store 2 and say to run 8 processes (their 16 images an update); the dry run states per process and
    total in the config's comments and the summary line, accumulation included."""
    from focalnet.segmentation.train import config_path

    from conftest import DATA, need, run_cli

    need(DATA / "camvid")
    data = ["--data", str(DATA / "camvid"), "--layout", "folder", "--ignore-index", "11"]
    out = tmp_path / "run"
    recipe = argv[argv.index("--config") + 1]
    assert "torchrun --nproc_per_node 8 " in config_path(recipe).read_text()  # the recipe's usage line
    for world, extra, batch in (
        ("8", [], "batch 2 per process x 8 processes = 16 images per update"),
        ("1", ["--batch-size", "4", "--accum-steps", "2"], "batch 4 per process x 1 process x 2 accumulation steps = 8 images per update"),
    ):  # fmt: skip
        monkeypatch.setenv("WORLD_SIZE", world)  # as torchrun sets it
        rc, stdout, stderr = run_cli("segmentation", "train", *argv, *data, *extra, "--output", str(out), "--dry-run")
        assert rc == 0, stderr
        lines = stdout.rstrip("\n").splitlines()
        assert f"# {batch}" in lines and f"; {batch}; " in lines[-1], (world, lines[-4:])
    assert not out.exists()


def test_old_spellings_work_with_one_note(capsys, monkeypatch):
    from focalnet.engine import options

    monkeypatch.setattr(options, "_NOTED", set())  # the notes of earlier tests' parses forgotten
    cli.build_parser(["benchmark"]).parse_args(["benchmark", "--quiet"])  # said once per process
    args = cli.build_parser(["export"]).parse_args(["export", "--model", "m", "--out", "m.onnx", "--batch", "3"])
    assert args.batch_size == 3
    args = cli.build_parser(["benchmark"]).parse_args(["benchmark", "--quiet"])
    assert args.no_progress is True
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "note: --quiet is now --no-progress; the old name goes in the next release",
        "note: --batch is now --batch-size; the old name goes in the next release",
    ]
