"""One command-line shape for the three tasks (issue 17, item 4) and one error line per failure (issue 18).

Shared options mean the same everywhere, flags reach the config through one path, the parser is built
without the task packages, a broken optional dependency fails only the commands that import it, and
every error is one ``error:`` line (the traceback with ``--debug``).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from focalnet import cli
from focalnet.engine import options

TASKS = ("classification", "detection", "segmentation")
SRC = str(Path(cli.__file__).resolve().parents[1])


def _commands() -> dict[str, argparse.ArgumentParser]:
    """``"<task> <command>"`` -> its parser, for every task command."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for task in TASKS:
        group = next(a for a in sub.choices[task]._actions if isinstance(a, argparse._SubParsersAction))
        out.update({f"{task} {name}": p for name, p in group.choices.items()})
    return out


def _meaning(action: argparse.Action) -> tuple:
    return (
        tuple(action.option_strings),
        action.dest,
        action.type,
        action.choices,
        action.help,
        repr(action.default),
        action.nargs,
        action.const,
        type(action).__name__,
    )


def _shared_flags(kind: str) -> list[str]:
    p = argparse.ArgumentParser()
    options.add_shared_options(p, kind)
    return [a.option_strings[0] for a in p._actions if a.option_strings and a.dest != "help"]


def test_shared_options_mean_the_same_in_every_task():
    commands = _commands()
    expected = {
        "train": {"--output", "--resume", "--overwrite", "--set", "--device", "--threads", "--no-progress"}
        | {"--max-images", "--eval-every", "--no-eval", "--dry-run"},
        "evaluate": {"--output", "--overwrite", "--device", "--threads", "--no-progress", "--max-images"},
        "predict": {"--output", "--overwrite", "--device", "--threads", "--no-progress"},
    }
    meanings: dict[str, set] = {}
    for kind, flags in expected.items():
        assert set(_shared_flags(kind)) == flags, kind
        for task in TASKS:
            p = commands[f"{task} {kind}"]
            for flag in flags:
                assert flag in p._option_string_actions, f"{task} {kind} lacks {flag}"
                action = p._option_string_actions[flag]
                by_kind = flag in ("--output", "--overwrite")  # their help says what a train run keeps
                meanings.setdefault(f"{flag} ({kind})" if by_kind else flag, set()).add(_meaning(action))
            assert p._option_string_actions["--out"] is p._option_string_actions["--output"]
            assert p._option_string_actions["--output"].required == (kind == "train")
    # one meaning per option: the same in the three tasks and, but for --output and --overwrite, in every
    # kind of command
    assert {k: len(v) for k, v in meanings.items()} == dict.fromkeys(meanings, 1)
    # the --overwrite help text exists once in the sources
    sources = [p.read_text() for p in Path(SRC, "focalnet").rglob("*.py")]
    assert sum(s.count("start a new run in a folder holding another run's checkpoints") for s in sources) == 1


def test_device_option_takes_the_same_names_everywhere(capsys):
    parser = cli.build_parser(["segmentation"])
    args = parser.parse_args(["segmentation", "predict", "x.png", "--checkpoint", "m.pt", "--device", "cuda:1"])
    assert args.device == "cuda:1"
    with pytest.raises(SystemExit) as e:
        parser.parse_args(["segmentation", "predict", "x.png", "--checkpoint", "m.pt", "--device", "gpu"])
    assert e.value.code == 2
    assert "device must be auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    from focalnet.engine import resolve_device

    assert resolve_device(None) == resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_training_requires_output(capsys):
    for task in TASKS:
        with pytest.raises(SystemExit) as e:
            cli.main([task, "train", "--data", "x"])
        assert e.value.code == 2
        assert "--output" in capsys.readouterr().err


def _parse(*argv: str) -> argparse.Namespace:
    return cli.build_parser([argv[0]]).parse_args(list(argv))


def test_flags_reach_the_config_through_the_task_tables():
    from focalnet.detection.cli import resolve_config

    base = resolve_config(_parse("detection", "train", "--config", "mask_rcnn_focalnet_cpu_tiny", "--output", "o"))
    cfg = resolve_config(
        _parse(
            *("detection", "train", "--config", "mask_rcnn_focalnet_cpu_tiny", "--output", "o", "--min-size", "64"),
            *("--max-size", "200", "--no-eval", "--max-images", "3", "--eval-every", "0", "--no-progress"),
            *("--lr", "0.5", "--set", "optim.lr=0.25", "--device", "cpu"),
        )
    )
    r = 64 / base.model.min_size
    assert cfg.model.min_size == 64 and cfg.data.scales == sorted({max(16, round(s * r)) for s in base.data.scales})
    assert cfg.data.crop_range == [max(8, round(s * r)) for s in base.data.crop_range]
    assert (cfg.model.max_size, cfg.data.max_size) == (200, 200)
    assert not cfg.eval_enabled and cfg.eval_max_images == 3 and not cfg.progress and cfg.device == "cpu"
    assert cfg.eval_every_epochs == cfg.eval_every_steps == 0
    assert cfg.optim.lr == 0.25  # --set comes after the flags

    from focalnet.classification.cli import TRAIN_FLAGS as CLS
    from focalnet.classification.config import load_classification_config

    args = _parse(
        *("classification", "train", "--model", "focalnet_tiny_srf", "--output", "o", "--eval-every", "3"),
        *("--max-images", "7", "--no-eval", "--pretrained", "--data", "d: with a colon"),
    )
    c = options.config_from_args(
        args, CLS, lambda cf, ov, v: load_classification_config(cf, ov, model=args.model, values=v)
    )
    assert (c.train.eval_every_epochs, c.train.eval_every_steps, c.eval.max_images) == (3, 3, 7)
    assert not c.eval.enabled and c.model.pretrained == "default" and c.data.path == "d: with a colon"
    assert c.output_dir == "o" and c.train.progress

    from focalnet.segmentation.cli import TRAIN_FLAGS as SEG
    from focalnet.segmentation.train import load_segmentation_config

    args = _parse(
        *("segmentation", "train", "--data", "d", "--output", "o", "--crop-size", "96", "--class-names", "a, b"),
        *("--reduce-zero-label", "false", "--eval-every", "5", "--no-progress", "--iters", "10"),
    )
    s = options.config_from_args(args, SEG, load_segmentation_config)
    assert s.aug.crop_size == s.eval.crop_size == (96, 96) and s.eval.stride == (64, 64)
    assert s.data.class_names == ["a", "b"] and s.data.reduce_zero_label is False
    assert s.eval.every == 5 and not s.train.progress and s.train.iters == 10
    assert s.train.recipe_iters == 160000  # a flag that changes the length keeps the recipe's warm-up share


def _run(*argv: str, pythonpath: str = SRC, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "FOCALNET_DEBUG"}
    e.update({"PYTHONPATH": pythonpath, **(env or {})})
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=e, timeout=300)


_MODULES = "import json, sys\nfrom focalnet.cli import main\ntry:\n    main({argv})\nexcept SystemExit:\n    pass\n"
_MODULES += "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"


@pytest.mark.parametrize("argv", [["--help"], ["detection", "--help"], ["segmentation", "train", "--help"]])
def test_help_imports_neither_torch_nor_a_task_package(argv):
    r = _run("-c", _MODULES.format(argv=argv))
    modules = set(json.loads(r.stderr.splitlines()[-1]))
    assert "usage: focalnet" in r.stdout
    assert not modules & {"torch", "torchvision", "timm"}, argv
    task = argv[0] if argv[0] != "--help" else None
    assert {f"focalnet.{t}" for t in TASKS if t != task}.isdisjoint(modules), argv
    if task is None:
        assert "focalnet.core_cli" not in modules


def test_a_broken_torchvision_fails_only_the_commands_that_need_it(tmp_path):
    broken = tmp_path / "site"
    (broken / "torchvision").mkdir(parents=True)
    (broken / "torchvision" / "__init__.py").write_text(
        'raise ImportError("operator torchvision::nms does not exist (torchvision does not match torch)")\n'
    )
    path = f"{broken}{os.pathsep}{SRC}"
    for argv in (["--help"], ["detection", "--help"], ["classification", "train", "--help"]):
        r = _run("-m", "focalnet", *argv, pythonpath=path)
        assert r.returncode == 0 and r.stderr == "", argv
    out = tmp_path / "run"
    r = _run("-m", "focalnet", "detection", "train", "--data", str(tmp_path), "--output", str(out), pythonpath=path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    line = r.stderr.strip()
    assert line.startswith("error: focalnet detection needs torchvision, which cannot be imported")
    assert "pip install --force-reinstall torchvision" in line and "Traceback" not in line
    r = _run(
        "-m",
        "focalnet",
        "--debug",
        "detection",
        "train",
        "--data",
        str(tmp_path),
        "--output",
        str(out),
        pythonpath=path,
    )
    assert "Traceback" in r.stderr and r.stderr.strip().splitlines()[-1] == line


@pytest.mark.slow
def test_demo_runs_with_a_broken_torchvision(tmp_path):
    broken = tmp_path / "site"
    (broken / "torchvision").mkdir(parents=True)
    (broken / "torchvision" / "__init__.py").write_text('raise ImportError("broken torchvision")\n')
    out = tmp_path / "demo"
    argv = ["demo", "--epochs", "1", "--max-train", "64", "--samples", "2", "--quiet", "--out", str(out)]
    r = _run("-m", "focalnet", *argv, "--threads", "2", pythonpath=f"{broken}{os.pathsep}{SRC}")
    assert r.returncode == 0, r.stderr
    assert (out / "metrics.json").exists() and (out / "model.safetensors").exists()


def test_every_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FOCALNET_DEBUG", raising=False)
    missing = tmp_path / "none.safetensors"
    assert cli.main(["info", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and str(missing) in err

    from focalnet import core_cli

    def boom(args):
        raise RuntimeError("something\nunexpected")

    monkeypatch.setattr(core_cli, "cmd_models", boom)
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: RuntimeError: something unexpected (run with --debug for the traceback)"
    assert cli.main(["models", "--debug"]) == 2  # --debug after the command, too
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: RuntimeError")
    monkeypatch.setenv("FOCALNET_DEBUG", "1")
    assert cli.main(["models"]) == 2 and "Traceback" in capsys.readouterr().err
    monkeypatch.delenv("FOCALNET_DEBUG")

    def diverged(args):
        raise FloatingPointError("loss is nan at step 3 (epoch 1)")

    monkeypatch.setattr(core_cli, "cmd_models", diverged)
    assert cli.main(["models"]) == 1
    assert capsys.readouterr().err == "error: loss is nan at step 3 (epoch 1)\n"

    def no_gradio(args):
        raise ModuleNotFoundError("No module named 'gradio'", name="gradio")

    monkeypatch.setattr(core_cli, "cmd_models", no_gradio)
    assert cli.main(["models"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: focalnet models needs gradio") and "pip install gradio" in err


def test_error_line_of_a_worker_exception_is_its_last_line():
    e = ValueError(
        "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nValueError: a.png is not an image'
    )
    assert cli.error_line(e) == ("error: ValueError: a.png is not an image", 2)


def test_epochs_are_numbered_from_one_and_eval_every_zero_means_at_the_end(tmp_path, capsys):
    from torch import nn
    from torch.utils.data import TensorDataset

    from focalnet.engine import Trainer, TrainerConfig

    x = torch.randn(16, 4)
    ds = TensorDataset(x, x.sum(1))
    model = nn.Linear(4, 1)

    def step(m, batch, device):
        a, b = batch
        return nn.functional.mse_loss(m(a).squeeze(-1), b), {}, len(a)

    evals = []
    cfg = TrainerConfig(
        output_dir=str(tmp_path), epochs=3, batch_size=8, num_workers=0, eval_every_epochs=0, log_every=1000
    )
    t = Trainer(
        cfg,
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        ds,
        step,
        eval_fn=lambda m, tr: evals.append(tr.step) or {"v": 1.0},
    )
    t.fit()
    assert [h["epoch"] for h in t.history] == [1, 2, 3] and evals == [6]  # evaluated once, at the end
    bars = capsys.readouterr().err
    assert "epoch 1" in bars and "epoch 3" in bars and "epoch 0" not in bars
    log = (tmp_path / "train.log").read_text()
    assert "epoch 1 step 2:" in log and "epoch 3 step 6:" in log and "epoch 0" not in log
