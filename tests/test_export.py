"""ONNX (checked with onnxruntime) and TorchScript exports, with dynamic batch and image size."""

import os

import numpy as np
import pytest
import torch

import focalnet
from focalnet.cli import main
from focalnet.export import export_onnx, export_torchscript

from conftest import randomize_

SIZES = [(1, 64, 64), (3, 97, 75), (2, 128, 96)]


def _model(**kw):
    return randomize_(
        focalnet.create_model("focalnet_tiny_srf", embed_dim=16, depths=(1, 1, 2, 1), num_classes=7, **kw).eval()
    )


def _check_onnx(model, path):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"]
    for b, h, w in SIZES:
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(None, {"images": x.numpy()})[0]
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fuse", [True, False])
def test_onnx_matches_onnxruntime_for_any_batch_and_size(tmp_path, fuse):
    pytest.importorskip("onnx")
    model = _model(use_layerscale=True)
    path = export_onnx(model, tmp_path / "m.onnx", fuse=fuse)
    assert not any(b.fused for s in model.layers for b in s.blocks)  # the model itself is left alone
    _check_onnx(model, path)


@pytest.mark.skipif(
    not os.environ.get("FOCALNET_TEST_DYNAMO_EXPORT"), reason="set FOCALNET_TEST_DYNAMO_EXPORT=1 (~40 s)"
)
def test_onnx_dynamo_exporter(tmp_path):
    model = _model()
    _check_onnx(model, export_onnx(model, tmp_path / "m.onnx", dynamo=True))


def test_torchscript_any_batch_and_size(tmp_path):
    model = _model()
    path = export_torchscript(model, tmp_path / "m.pt")
    loaded = torch.jit.load(str(path))
    for b, h, w in SIZES:
        x = torch.randn(b, 3, h, w)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), atol=1e-4, rtol=0)


def test_backbone_onnx_outputs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    bb = randomize_(focalnet.create_backbone("focalnet_tiny_srf", embed_dim=16, out_indices=(1, 3)).eval())
    path = export_onnx(bb, tmp_path / "bb.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        refs = bb(x)
    outs = sess.run(None, {"images": x.numpy()})
    assert len(outs) == 2
    for a, b in zip(outs, refs):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4, rtol=0)


def test_cli_export_onnx_and_torchscript(tmp_path, capsys):
    model = _model()
    ckpt = tmp_path / "small.safetensors"
    focalnet.save_model(model, ckpt)
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(ckpt),
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "a.onnx"),
                "--img-size",
                "64",
                "--check",
            ]
        )
        == 0
    )
    _check_onnx(model, tmp_path / "a.onnx")
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(ckpt),
                "--format",
                "torchscript",
                "--out",
                str(tmp_path / "a.pt"),
                "--img-size",
                "64",
            ]
        )
        == 0
    )
    assert "max |difference|" in capsys.readouterr().out
