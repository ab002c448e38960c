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
        "focalnet_tiny_iso",
        batch_sizes=[1],
        img_size=32,
        reps=1,
        warmup=1,
        min_time=0.01,
        paths=["eager"],
        train=False,
        log=lines.append,
    )
    warm = next(i for i, s in enumerate(lines) if "warming up eager" in s)
    assert lines[0].startswith("building focalnet_tiny_iso") and warm < next(
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
        + ["--output", str(tmp_path / "eval")]
    )
    assert rc == 0
    assert (tmp_path / "eval" / "metrics.json").exists() and not (tmp_path / "eval" / "train.log").exists()
    out = capsys.readouterr().out
    import json

    m = json.loads(out[out.index("{") :])
    assert m["num_images"] == 4
    assert sum(1 for v in m["per_class_accuracy"].values() if v is not None) == 3  # spread over the classes


def test_models_table_rounds_like_the_readme(capsys):
    assert cli.main(["models", "--filter", "base_"]) == 0
    rows = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["focalnet_base_srf"] == "88.1" and rows["focalnet_base_lrf"] == "88.7"  # 88,148,144 / 88,749,768


def _tiny(tmp_path, **kw):
    import focalnet

    m = focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 1, 1), **kw).eval()
    path = tmp_path / "tiny.safetensors"
    focalnet.save_model(m, path)
    return m, path


def test_convert_to_transformers_writes_a_folder_transformers_loads(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    m, path = _tiny(tmp_path, num_classes=4, use_postln=True)
    assert cli.main(["convert", str(path), str(tmp_path / "hf"), "--to", "transformers"]) == 0
    assert (tmp_path / "hf" / "config.json").exists() and (tmp_path / "hf" / "model.safetensors").exists()
    hf = transformers.FocalNetForImageClassification.from_pretrained(tmp_path / "hf").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, m(x), atol=1e-4, rtol=0)


def test_convert_to_timm_writes_a_folder_timm_loads(tmp_path):
    timm = pytest.importorskip("timm")
    import focalnet

    m = focalnet.create_model("focalnet_tiny_lrf", num_classes=3).eval()
    focalnet.save_model(m, tmp_path / "m.safetensors")
    assert cli.main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "t"), "--to", "timm"]) == 0
    tm = timm.create_model(f"local-dir:{tmp_path / 't'}", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tm(x), m(x), atol=1e-4, rtol=0)
    _, tiny = _tiny(tmp_path)
    assert cli.main(["convert", str(tiny), str(tmp_path / "t2"), "--to", "timm"]) == 2  # no such timm model


def test_convert_to_original_pth_keeps_the_configuration(tmp_path, capsys):
    import focalnet

    m, path = _tiny(tmp_path, use_postln=True, normalize_modulator=True, num_classes=3)
    assert cli.main(["convert", str(path), str(tmp_path / "o.pth"), "--to", "original"]) == 0
    back = focalnet.model_from_checkpoint(tmp_path / "o.pth")
    assert back.cfg == m.cfg
    capsys.readouterr()
    assert cli.main(["info", str(tmp_path / "o.pth"), "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out)["notes"] == []  # no "matches no registered variant"


def test_classify_pretrained_offline_fails_like_evaluate(capsys):
    assert cli.main(["classify", "--pretrained", "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "RANDOMLY" not in err
    assert cli.main(["classify", "--model", "focalnet_tiny_srff"]) == 2
    assert "focalnet_tiny_srf" in capsys.readouterr().err  # unknown name, with a suggestion


def test_classify_and_predict_take_one_channel_checkpoints(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    _, path = _tiny(tmp_path, in_chans=1, num_classes=10)
    img = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img)
    assert cli.main(["classify", str(img), "--checkpoint", str(path), "--topk", "2", "--threads", "1"]) == 0
    rc = cli.main(
        ["classification", "predict", str(img), "--checkpoint", str(path), "--json", str(tmp_path / "p.json")]
    )
    assert rc == 0
    import json

    assert len(json.loads((tmp_path / "p.json").read_text())["results"][0]["top"]) == 5


def test_segmentation_configs_lists_and_resolves(capsys):
    assert cli.main(["segmentation", "configs"]) == 0
    assert "upernet_focalnet_tiny_srf_camvid_cpu" in capsys.readouterr().out
    assert cli.main(["segmentation", "configs", "upernet_focalnet_tiny_srf_camvid_cpu", "--set", "train.iters=10"]) == 0
    out = capsys.readouterr().out
    assert "iters: 10" in out and "recipe_iters: 2000" in out


def test_core_commands_have_descriptions_and_argument_help():
    leaves = _leaves()
    for name in ("models", "info", "convert", "classify"):
        p = leaves[name]
        assert p.description, name
        for action in p._actions:
            if action.dest not in ("help", "threads"):
                assert action.help, f"{name} {action.dest}"


def test_resume_auto_on_an_empty_folder_says_so(tmp_path, capsys):
    assert cli.main(["classification", "train", "--output", str(tmp_path), "--resume", "auto"]) == 2
    assert f"no checkpoint in {tmp_path}" in capsys.readouterr().err


def test_folder_layout_data_without_layout_flag_gets_a_hint(tmp_path):
    from focalnet.segmentation.data import find_pairs

    for d in ("train", "trainannot", "val", "valannot"):
        (tmp_path / d).mkdir()
    with pytest.raises(FileNotFoundError, match="add --layout folder"):
        find_pairs(tmp_path / "images" / "training", tmp_path / "annotations" / "training")


def test_benchmark_honours_reps_and_leaves_compile_out_by_default(capsys):
    from focalnet.benchmark import ALL_PATHS, DEFAULT_PATHS, run_benchmark

    assert "compiled" in ALL_PATHS and "compiled" not in DEFAULT_PATHS  # minutes of compilation: opt-in
    assert "compiled" not in cli.build_parser().parse_args(["benchmark"]).paths
    res = run_benchmark(
        "focalnet_tiny_iso",
        batch_sizes=[1],
        train_batch=2,
        img_size=32,
        reps=1,
        warmup=1,
        min_time=0.01,
        paths=["eager"],
        log=lambda s: None,
    )
    assert res["inference"]["1"]["eager"]["reps"] == 1 and res["train"]["2"]["eager"]["reps"] == 1
    with pytest.raises(SystemExit):
        cli.main(["benchmark", "--help"])
    assert "compiled first spends minutes" in " ".join(capsys.readouterr().out.split())
