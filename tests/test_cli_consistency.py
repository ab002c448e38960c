"""The CLI a newcomer meets (issue 14): one --threads, --output everywhere, clear errors, help texts."""

import argparse

import pytest
import torch

from focalnet import cli
from focalnet.engine import resources


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _leaves() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    out = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[path.strip()] = p
        for a in subs:
            for name, child in a.choices.items():
                walk(child, f"{path} {name}")

    walk(parser, "")
    return out


def test_cores_are_shared_among_torchrun_processes(monkeypatch):
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resources.available_cores() == 8
    assert resources.fit_workers(16) == 8 and resources.fit_workers(None) == 2
    assert resources.default_threads(workers=2) == 6
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resources.available_cores() == 2
    assert resources.fit_workers(8) == 2
    assert resources.default_threads(workers=2) == 1  # never zero
    monkeypatch.setattr(resources.os, "sched_getaffinity", lambda pid: {0})
    assert resources.available_cores() == 1


def test_every_computing_command_has_threads_and_output():
    leaves = _leaves()
    computing = [n for n in leaves if n.split()[-1] not in ("models", "info", "configs")]
    assert {"classification train", "detection evaluate", "segmentation predict", "classify", "demo"} <= set(computing)
    for name in computing:
        assert "--threads" in leaves[name]._option_string_actions, name
    for name, p in leaves.items():
        if "--out" in p._option_string_actions or "--output" in p._option_string_actions:
            assert "--output" in p._option_string_actions, name
    # the old short spelling still works where it was the only one
    for name in ("visualize", "demo", "detection predict", "segmentation predict", "export"):
        action = leaves[name]._option_string_actions["--out"]
        assert action is leaves[name]._option_string_actions["--output"], name


def test_threads_option_sets_torch_threads(tmp_path):
    args = cli.build_parser().parse_args(
        ["export", "--model", "focalnet_tiny_srf", "--out", "m.onnx", "--threads", "1"]
    )
    assert str(args.out) == "m.onnx"
    cli._apply_threads(args)
    assert torch.get_num_threads() == 1


def test_mistyped_flag_names_the_subcommand_and_a_suggestion(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["classification", "evaluate", "--data", "x", "--checkpiont", "m.safetensors"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "usage: focalnet classification evaluate" in err
    assert "did you mean --checkpoint?" in err


def test_benchmark_says_what_it_is_doing_before_timing():
    from focalnet.benchmark import run_benchmark

    lines: list[str] = []
    run_benchmark(
        batch_sizes=[1], img_size=32, reps=1, warmup=1, min_time=0.01, paths=["eager"], train=False, log=lines.append
    )
    warm = next(i for i, s in enumerate(lines) if "warming up eager" in s)
    assert lines[0].startswith("building focalnet_tiny_srf") and warm < next(
        i for i, s in enumerate(lines) if "rep 1/1" in s
    )


def test_classification_evaluate_max_images(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    data = tmp_path / "data"
    for wnid in ("n01440764", "n02102040", "n02979186"):  # ImageNet wnids: scored through the 1K head
        (data / "val" / wnid).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(data / "val" / wnid / f"{i}.png")
    rc = cli.main(
        ["classification", "evaluate", "--model", "focalnet_tiny_srf", "--data", str(data), "--img-size", "32"]
        + ["--max-images", "4", "--json", "--no-progress", "--threads", "1", "--workers", "0"]
    )
    assert rc == 0
    out = capsys.readouterr().out
    import json

    m = json.loads(out[out.index("{") :])
    assert m["num_images"] == 4
    assert sum(1 for v in m["per_class_accuracy"].values() if v is not None) == 3  # spread over the classes
