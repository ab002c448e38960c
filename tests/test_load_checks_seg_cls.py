"""Every classification and segmentation layout passes every check of its one loading path.

Each layout (classification: original ``.pth``, timm folder, transformers folder, our safetensors, a
training checkpoint; segmentation: ours, training checkpoints, mmsegmentation) is fed a NaN tensor, a
tensor of the wrong shape, a huge but self-consistent file (a one-element storage expanded to billions
of elements, tiny on disk; for safetensors, a sparse file whose header declares a terabyte tensor and
whose stored settings agree with it) and metadata of the wrong type (class names 123, a config that is
a list, integer keys, a string where a tensor goes). Each must give exactly its documented error type
(``focalnet.weights.errors``) in one line naming the file, through every entry point of the task, in
ONE subprocess whose peak resident memory stays under 2 GB.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from focalnet import FocalNet, FocalNetConfig, convert_state_dict
from focalnet.segmentation import focalnet_to_mmseg, save_segmentor, upernet
from focalnet.weights.export import transformers_config

from conftest import randomize_, run_cli

CLS_CFG = FocalNetConfig(embed_dim=8, depths=(1, 1, 1, 1), focal_levels=2, focal_windows=3, num_classes=3)
CLS_OVERRIDES = {"embed_dim": 8, "depths": (1, 1, 1, 1), "focal_windows": (3, 3, 3, 3)}  # for create_model
NAMES = ["a", "b", "c"]
SEG_TINY = {"embed_dim": 8, "depths": (1, 1, 1, 1), "focal_windows": (3, 3, 3, 3)}
SEG_HEAD = {"channels": 8, "aux_channels": 8}
HUGE = 150_000_000  # classes of the huge files: 150 M x 64 float32 = 38 GB as a head, 1 element on disk
TERA = 2**32  # rows of the sparse safetensors heads: 2**32 x 64 float32 = 1 TiB declared, nothing on disk
RSS_LIMIT_KB = 2 * 1024 * 1024


# ------------------------------------------------------------------------------------------ file writers
def sparse_safetensors(path: Path, tensors: dict[str, torch.Tensor], huge: dict[str, list[int]], meta: dict) -> None:
    """A valid safetensors file holding ``tensors`` plus ``huge`` float32 tensors whose bytes are a hole
    of the file (sparse: nothing on disk): the header declares them, the file has their length."""
    header: dict = {"__metadata__": {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}}
    blobs, offset = [], 0
    for k, v in tensors.items():
        raw = v.contiguous().numpy().tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    for k, shape in huge.items():
        n = math.prod(shape) * 4
        header[k] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for raw in blobs:
            f.write(raw)
        f.truncate(8 + len(text) + offset)


def cls_sd() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in randomize_(FocalNet(CLS_CFG), seed=3).state_dict().items()}


def cls_fault(name: str) -> tuple[dict, dict]:
    """(original-layout state dict, stored metadata) for one fault of the classification files."""
    sd: dict = cls_sd()
    meta: dict = {"class_names": list(NAMES)}
    if name == "nan":
        sd["layers.0.blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    elif name == "shape":  # a 1-D tensor where the 4-D patch embedding goes (IndexError before)
        sd["patch_embed.proj.weight"] = torch.zeros(8)
    elif name == "huge":
        sd["head.weight"] = torch.zeros(1).expand(HUGE, 64)
        sd["head.bias"] = torch.zeros(1).expand(HUGE)
    elif name == "names_123":
        meta["class_names"] = 123
    elif name == "names_count":
        meta["class_names"] = ["a"]
    elif name == "config_list":
        meta["focalnet_config"] = [1, 2]
    elif name == "int_keys":
        sd[7] = torch.zeros(1)
    elif name == "str_value":
        sd["head.bias"] = "abc"
    return sd, meta


def write_cls(layout: str, fault: str, root: Path) -> Path:
    sd, meta = cls_fault(fault)
    root.mkdir(parents=True, exist_ok=True)
    if layout == "original":
        path = root / "orig.pth"
        torch.save({"model": sd, **meta}, path)
    elif layout == "ours":
        path = root / "model.safetensors"
        if fault == "huge":  # stored settings that agree with a terabyte head
            cfg = CLS_CFG.to_dict() | {"num_classes": TERA}
            small = {k: v for k, v in cls_sd().items() if not k.startswith("head.")}
            meta = {"format": "focalnet", "focalnet_config": cfg, "kind": "classifier"}
            sparse_safetensors(path, small, {"head.weight": [TERA, 64], "head.bias": [TERA]}, meta)
            return path
        from safetensors.torch import save_file

        stored = {"format": "focalnet", "focalnet_config": json.dumps(CLS_CFG.to_dict()), "kind": "classifier"}
        stored["class_names"] = json.dumps(meta.get("class_names"))
        if "focalnet_config" in meta:
            stored["focalnet_config"] = json.dumps(meta["focalnet_config"])
        save_file(sd, str(path), metadata=stored)
    elif layout in ("timm", "transformers"):
        path = root / layout
        path.mkdir()
        names = meta["class_names"]
        if layout == "timm":
            # timm's folder names its architecture (timm_config() knows released widths only)
            config: object = {"architecture": "focalnet_tiny_srf", "num_classes": 3, "label_names": names}
        else:
            config = transformers_config(CLS_CFG, NAMES)
            if fault in ("names_123", "names_count"):
                config["id2label"] = names if fault == "names_123" else {"0": "a", "1": "b", "2": "c", "3": "d"}
        if fault == "config_list":
            config = [1, 2]
        (path / "config.json").write_text(json.dumps(config))
        if fault == "huge" and layout == "transformers":
            conv = convert_state_dict(cls_sd(), to="transformers")
            small = {k: v for k, v in conv.items() if not k.startswith("classifier.")}
            sparse_safetensors(
                path / "model.safetensors", small, {"classifier.weight": [TERA, 64], "classifier.bias": [TERA]}, {}
            )
            return path
        tensors = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        conv = convert_state_dict(tensors, to=layout, source="original", use_postln=False)
        conv.update({k: v for k, v in sd.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))})
        torch.save(conv, path / "pytorch_model.bin")
    elif layout == "training":
        path = root / "checkpoint-000000002.pt"
        state = {
            "model": sd,
            "ema": sd,
            "focalnet_config": meta.get("focalnet_config", CLS_CFG.to_dict()),
            "class_names": meta["class_names"],
            "config": {"data": {"img_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}},
            "step": 2,
            "complete": True,
        }
        torch.save(state, path)
    else:
        raise AssertionError(layout)
    return path


def seg_model() -> torch.nn.Module:
    model = randomize_(upernet("focalnet_tiny_srf", 3, class_names=NAMES, head=SEG_HEAD, **SEG_TINY), seed=2)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k.endswith("running_var"):
                v.abs_().add_(0.5)
    return model.eval()


def write_seg(layout: str, fault: str, root: Path) -> Path:
    model = seg_model()
    sd: dict = {k: v.clone() for k, v in model.state_dict().items()}
    meta: object = dict(model.meta)
    if fault == "nan":
        sd["decode_head.conv_seg.weight"][0, 0] = float("nan")
    elif fault == "shape":
        sd["backbone.patch_embed.proj.weight"] = torch.zeros(8)
    elif fault == "head_shape":
        sd["decode_head.conv_seg.weight"] = torch.zeros(3)
    elif fault == "huge":  # the 150,000,000-class file: consistent meta, one stored element per tensor
        for head in ("decode_head", "auxiliary_head"):
            sd[f"{head}.conv_seg.weight"] = torch.zeros(1).expand(HUGE, 8, 1, 1)
            sd[f"{head}.conv_seg.bias"] = torch.zeros(1).expand(HUGE)
        meta = {**meta, "num_classes": HUGE, "class_names": None}
    elif fault == "names_123":
        meta = {**meta, "class_names": 123}
    elif fault == "names_count":
        meta = {**meta, "class_names": ["a"]}
    elif fault == "meta_list":
        meta = [1, 2]
    elif fault == "head_list":
        meta = {**meta, "head": [1, 2]}
    elif fault == "config_list":
        meta = {**meta, "backbone_config": [1, 2]}
    elif fault == "int_keys":
        sd[7] = torch.zeros(1)
    elif fault == "str_value":
        sd["decode_head.conv_seg.bias"] = "abc"
    root.mkdir(parents=True, exist_ok=True)
    if layout == "ours":
        path = root / "model.pt"
        save_segmentor(model, path)
        obj = torch.load(path, weights_only=True)
        obj["meta"], obj["state_dict"] = meta, sd
    elif layout == "training":
        path = root / "checkpoint-000000002.pt"
        obj = {"segmentation_meta": meta, "segmentation_extra": {}, "model": sd, "step": 2, "complete": True}
    elif layout == "mmseg":
        path = root / "upernet.pth"
        tensors = {k: v for k, v in sd.items() if isinstance(k, str)}
        obj = focalnet_to_mmseg(model.meta, tensors)
        obj["state_dict"].update({k: v for k, v in sd.items() if not isinstance(k, str)})
        classes: object = tuple(NAMES)
        if fault in ("names_123", "names_count"):
            classes = meta["class_names"]  # type: ignore[index]
        obj["meta"] = [1, 2] if fault == "meta_list" else {"CLASSES": classes, "config": "pool_scales=(1, 2, 3, 6)"}
        if fault == "config_list":
            obj["meta"]["config"] = [1, 2]
    else:
        raise AssertionError(layout)
    torch.save(obj, path)
    return path


# ----------------------------------------------------------------------------------------------- the cases
CLS_LAYOUTS = ("original", "timm", "transformers", "ours", "training")
CLS_FAULTS = {
    "nan": "NonFiniteWeightsError",
    "shape": "CheckpointMismatchError",
    "huge": "MalformedCheckpointError",  # expanded tensors; safetensors: ModelTooLargeError (below)
    "names_123": "MalformedCheckpointError",
    "names_count": "MalformedCheckpointError",
    "config_list": "MalformedCheckpointError",
    "int_keys": "MalformedCheckpointError",
    "str_value": "MalformedCheckpointError",
}
SEG_LAYOUTS = ("ours", "training", "mmseg")
SEG_FAULTS = {
    "nan": "NonFiniteWeightsError",
    "shape": "CheckpointMismatchError",
    "head_shape": "CheckpointMismatchError",
    "huge": "MalformedCheckpointError",
    "names_123": "MalformedCheckpointError",
    "names_count": "MalformedCheckpointError",
    "meta_list": "MalformedCheckpointError",
    "head_list": "MalformedCheckpointError",
    "config_list": "MalformedCheckpointError",
    "int_keys": "MalformedCheckpointError",
    "str_value": "MalformedCheckpointError",
}
SKIP = {("ours", "int_keys"), ("ours", "str_value")}  # safetensors holds string keys and tensors only
SEG_SKIP = {("mmseg", "head_list")}  # mmseg files store no head settings (read off the tensors)


def _expected(task: str, layout: str, fault: str) -> str:
    if fault == "huge" and layout in ("ours", "transformers") and task == "cls":
        return "ModelTooLargeError"
    return (CLS_FAULTS if task == "cls" else SEG_FAULTS)[fault]


def _entries(task: str, layout: str) -> list[str]:
    if task == "seg":
        return ["load_segmentor", "convert_segmentor"]
    if layout == "training":
        return ["load_classifier", "model_from_checkpoint"]
    return ["model_from_checkpoint", "create_model", "load_classifier"]


CASES = [
    (task, layout, fault, entry)
    for task, layouts, faults, skip in (
        ("cls", CLS_LAYOUTS, CLS_FAULTS, SKIP),
        ("seg", SEG_LAYOUTS, SEG_FAULTS, SEG_SKIP),
    )
    for layout in layouts
    for fault in faults
    if (layout, fault) not in skip
    for entry in _entries(task, layout)
]


def _call(entry: str, path: str, out: str) -> None:
    """One entry point on one file (in the driver process)."""
    import warnings

    warnings.simplefilter("ignore")
    if entry == "model_from_checkpoint":
        from focalnet import model_from_checkpoint

        model_from_checkpoint(path)
    elif entry == "create_model":
        from focalnet import create_model

        create_model("focalnet_tiny_srf", checkpoint_path=path, **CLS_OVERRIDES)
    elif entry == "load_classifier":
        from focalnet.classification import load_classifier

        load_classifier(path)
    elif entry == "load_segmentor":
        from focalnet.segmentation import load_segmentor

        load_segmentor(path)
    elif entry == "convert_segmentor":
        from focalnet.segmentation import convert_segmentor

        convert_segmentor(path, out)
    elif entry == "cli_convert":
        from focalnet.cli import main

        rc = main(["segmentation", "convert", path, out])
        raise SystemExit(rc)
    else:
        raise AssertionError(entry)


def _drive(cases_file: str) -> None:
    """Run every case of ``cases_file`` in this process; print one JSON line per case."""
    # peak memory: VmHWM, this process's own since exec (ru_maxrss inherits the pytest parent's peak)

    for case in json.loads(Path(cases_file).read_text()):
        error, message = None, ""
        try:
            _call(case["entry"], case["path"], case["out"])
        except SystemExit as e:
            error, message = f"exit {e.code}", ""
        except Exception as e:  # noqa: BLE001 - every error is reported to the test, which judges it
            error, message = type(e).__name__, str(e)
        rss = int(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))
        rec = {"id": case["id"], "path": case["path"], "error": error, "message": message, "maxrss_kb": rss}
        print(json.dumps(rec), flush=True)


def _case_id(task: str, layout: str, fault: str, entry: str) -> str:
    return f"{task}-{layout}-{fault}-{entry}"


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("faults")
    cases, written = [], {}
    for task, layout, fault, entry in CASES:
        key = (task, layout, fault)
        if key not in written:
            write: Callable[[str, str, Path], Path] = write_cls if task == "cls" else write_seg
            written[key] = write(layout, fault, root / task / layout / fault)
        cid = _case_id(task, layout, fault, entry)
        cases.append({"id": cid, "entry": entry, "path": str(written[key]), "out": str(root / f"{cid}.out")})
    huge = written[("seg", "mmseg", "huge")]
    cases.append({"id": "cli-convert-huge", "entry": "cli_convert", "path": str(huge), "out": str(root / "c.pt")})
    (root / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    env.pop("FOCALNET_MAX_MODEL_BYTES", None)  # the machine's own budget
    env.pop("FOCALNET_ALLOW_NONFINITE", None)
    proc = subprocess.run(
        [sys.executable, __file__, str(root / "cases.json")], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            out[rec["id"]] = rec
    out["_stderr"] = {"text": proc.stderr}
    return out


@pytest.mark.parametrize("task, layout, fault, entry", CASES, ids=[_case_id(*c) for c in CASES])
def test_each_fault_gives_its_documented_error(results, task, layout, fault, entry):
    rec = results[_case_id(task, layout, fault, entry)]
    want = _expected(task, layout, fault)
    assert rec["error"] == want, rec
    msg = rec["message"]
    assert "\n" not in msg.strip(), msg
    assert Path(rec["path"]).name in msg, msg  # names the file
    assert rec["maxrss_kb"] < RSS_LIMIT_KB, rec


def test_huge_segmentation_file_does_not_convert(results):
    """``focalnet segmentation convert`` of a 150,000,000-class file: exit code 2, nothing written."""
    rec = results["cli-convert-huge"]
    assert rec["error"] == "exit 2" and rec["maxrss_kb"] < RSS_LIMIT_KB, rec
    assert "expanded tensor" in results["_stderr"]["text"]


def test_messages_name_the_key(results):
    """The one line says where: the tensor, the stored setting or the key type."""
    checks = {
        "cls-original-nan-create_model": "layers.0.blocks.0.mlp.fc1.weight",
        "cls-original-shape-model_from_checkpoint": "patch_embed.proj.weight",
        "cls-original-huge-load_classifier": "head.weight",
        "cls-ours-huge-model_from_checkpoint": "head.weight",
        "cls-transformers-names_123-load_classifier": "id2label",
        "cls-timm-config_list-model_from_checkpoint": "config.json",
        "cls-original-config_list-create_model": "focalnet_config",
        "cls-training-names_123-load_classifier": "class_names",
        "seg-mmseg-names_123-load_segmentor": "CLASSES",
        "seg-ours-names_count-load_segmentor": "class_names",
        "seg-ours-head_list-load_segmentor": "head",
        "seg-mmseg-huge-convert_segmentor": "conv_seg",
        "seg-training-int_keys-load_segmentor": "7",
        "seg-ours-str_value-load_segmentor": "decode_head.conv_seg.bias",
    }
    for cid, needle in checks.items():
        assert needle in results[cid]["message"], results[cid]


def test_good_files_of_every_layout_load(tmp_path):
    """The same writers without a fault give models that compute what the source model computes."""
    from focalnet import create_model, model_from_checkpoint
    from focalnet.classification import load_classifier
    from focalnet.segmentation import load_segmentor

    x = torch.randn(1, 3, 64, 64)
    ref = FocalNet(CLS_CFG).eval()
    ref.load_state_dict(cls_sd())
    for layout in CLS_LAYOUTS:
        path = write_cls(layout, "none", tmp_path / "cls" / layout)
        models = [model_from_checkpoint(path), load_classifier(path).model]
        if layout != "training":
            models.append(create_model("focalnet_tiny_srf", checkpoint_path=path, **CLS_OVERRIDES))
        for m in models:
            assert m.class_names == NAMES, layout
            torch.testing.assert_close(m.eval()(x), ref(x))
    seg = seg_model()
    for layout in SEG_LAYOUTS:
        model, _ = load_segmentor(write_seg(layout, "none", tmp_path / "seg" / layout))
        assert model.class_names == NAMES
        torch.testing.assert_close(model(x), seg(x))


def test_info_reports_nonfinite_weights_instead_of_refusing(tmp_path):
    path = write_cls("original", "nan", tmp_path)
    rc, out, _ = run_cli("info", str(path))
    assert rc == 0 and "non-finite" in out and "layers.0.blocks.0.mlp.fc1.weight" in out


@pytest.mark.parametrize("channels", [8192, 10000000])
def test_training_config_too_large_is_one_line(tmp_path, monkeypatch, channels):
    """``--set model.head.channels=N``: refused before allocation, naming the size (within the field's
    bounds, against a 1 GB budget) or the bound (beyond it)."""
    from test_segmentation import make_folder_dataset

    monkeypatch.setenv("FOCALNET_MAX_MODEL_BYTES", str(2**30))
    root = make_folder_dataset(tmp_path / "data", n_train=2, n_val=1, size=(32, 32), num_classes=3)
    args = ["segmentation", "train", "--data", str(root), "--layout", "folder", "--output", str(tmp_path / "run")]
    args += ["--iters", "1", "--workers", "0", "--set", f"model.head.channels={channels}", "data.num_workers=0"]
    rc, _, err = run_cli(*args)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    if channels > 8192:
        assert "model.head.channels: 10000000 is outside the allowed range [1, 8192]" in lines[0]
    else:
        assert "ModelTooLarge" in lines[0] or "training it needs" in lines[0]
        assert f"channels {channels}" in lines[0] and "GB" in lines[0]
    assert not (tmp_path / "run" / "model.pt").exists()


def test_sparse_safetensors_writer_makes_valid_files(tmp_path):
    """The helper above writes files safetensors itself accepts (so the refusals test the loader)."""
    from safetensors import safe_open

    small = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    sparse_safetensors(tmp_path / "x.safetensors", small, {"b": [4, 5]}, {"k": "v"})
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert f.metadata() == {"k": "v"} and f.get_slice("b").get_shape() == [4, 5]
        torch.testing.assert_close(f.get_tensor("a"), small["a"])
        assert np.count_nonzero(f.get_tensor("b").numpy()) == 0


if __name__ == "__main__":
    _drive(sys.argv[1])
