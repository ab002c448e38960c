"""focalnet.visualize: hooked maps against a hand computation, kernels, figures, CLI and the page in a browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import focalnet
from focalnet import visualize as viz
from focalnet.cli import main
from focalnet.visualize_page import save_maps

from conftest import randomize_

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def _hand_modulation(mod: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The focal modulation of a channels-last ``x`` from the module's weights, with functional ops only."""
    C, L = mod.dim, mod.focal_level
    y = x @ mod.f.weight.T + mod.f.bias  # (B, H, W, 2C+L+1)
    y = y.permute(0, 3, 1, 2)
    q, ctx, gates = y[:, :C], y[:, C : 2 * C], y[:, 2 * C :]
    contexts, ctx_all = [], torch.zeros_like(ctx)
    for level in range(L):
        w = mod.focal_layers[level][0].weight
        ctx = F.gelu(F.conv2d(ctx, w, padding=w.shape[-1] // 2, groups=C))
        contexts.append(ctx)
        ctx_all = ctx_all + ctx * gates[:, level : level + 1]
    ctx_all = ctx_all + F.gelu(ctx.mean((2, 3), keepdim=True)) * gates[:, L : L + 1]
    if mod.normalize_modulator:
        ctx_all = ctx_all / (L + 1)
    modulator = F.conv2d(ctx_all, mod.h.weight, mod.h.bias)
    return {"gates": gates, "modulator": modulator, "contexts": contexts, "q": q}


CASES = {
    "hierarchical": dict(embed_dim=8, depths=(1, 2), focal_levels=(2, 3), focal_windows=(3, 5), num_classes=4),
    "isotropic_postln": dict(
        embed_dim=12,
        depths=(2,),
        focal_levels=(3,),
        focal_windows=(3,),
        patch_size=8,
        use_postln=True,
        use_layerscale=True,
        use_postln_in_modulation=True,
        normalize_modulator=True,
        num_classes=3,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hooked_maps_equal_hand_computation(case):
    model = randomize_(focalnet.FocalNet(focalnet.FocalNetConfig(**CASES[case])), seed=1, scale=0.3).eval()
    stage, block = len(model.layers) - 1, len(model.layers[-1].blocks) - 1
    blk = model.layers[stage].blocks[block]
    seen = {}
    pre = blk.register_forward_pre_hook(lambda m, inp: seen.setdefault("x", inp[0].detach().clone()))
    x = torch.randn(2, 3, 40, 56)
    try:
        maps, logits = viz.modulation_maps(model, x, -1, -1)
    finally:
        pre.remove()
    with torch.no_grad():
        ref_logits = model(x)
        xin = seen["x"]
        mod_in = xin if blk.use_postln else F.layer_norm(xin, (blk.dim,), blk.norm1.weight, blk.norm1.bias, 1e-5)
        ref = _hand_modulation(blk.modulation, mod_in)
    assert (maps.stage, maps.block) == (stage, block)
    assert maps.kernel_sizes == blk.modulation.kernel_sizes
    assert maps.gates.shape[1] == maps.num_levels + 1
    torch.testing.assert_close(logits, ref_logits)  # hooks do not change the output
    torch.testing.assert_close(maps.gates, ref["gates"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps.modulator, ref["modulator"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps.modulator_norm, ref["modulator"].norm(dim=1), rtol=1e-4, atol=1e-5)
    assert len(maps.contexts) == maps.num_levels
    for got, want in zip(maps.contexts, ref["contexts"]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # the module's own output is proj(q * modulator) (post-LN inside the modulation where present)
    mod = blk.modulation
    with torch.no_grad():
        y = (ref["q"] * ref["modulator"]).permute(0, 2, 3, 1)
        if mod.ln is not None:
            y = mod.ln(y)
        torch.testing.assert_close(mod(mod_in), mod.proj(y), rtol=1e-4, atol=1e-5)


def test_hooks_are_removed_and_capture_many_blocks():
    model = focalnet.FocalNet(focalnet.FocalNetConfig(embed_dim=8, depths=(1, 1, 2, 1), num_classes=2)).eval()

    def n_hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before = n_hooks()
    x = torch.randn(1, 3, 64, 64)
    with viz.capture_modulation(model, [(0, 0), (2, -1), (-1, -1)], contexts=False) as cap, torch.no_grad():
        assert n_hooks() > before
        model(x)
    assert n_hooks() == before
    got = cap.maps()
    assert set(got) == {(0, 0), (2, 1), (3, 0)}
    assert got[0, 0].gates.shape == (1, 3, 16, 16) and got[2, 1].modulator.shape == (1, 32, 4, 4)
    assert got[0, 0].contexts == []
    with pytest.raises(ValueError, match="stage 4 out of range"):
        viz.resolve_block(model, 4, 0)
    with pytest.raises(ValueError, match="block 2 out of range"):
        viz.resolve_block(model, 2, 2)


def test_backbone_isotropic_and_odd_sizes():
    bb = focalnet.FocalNetBackbone(focalnet.FocalNetConfig(embed_dim=8, depths=(1, 1, 1, 1)), out_indices=(1,))
    with viz.capture_modulation(bb, [(1, 0), (3, 0)]) as cap, torch.no_grad():
        bb(torch.randn(1, 3, 37, 45))
    assert cap[1, 0].gates.shape == (1, 3, 5, 6)  # padded: ceil(37/8), ceil(45/8)
    with pytest.raises(RuntimeError, match="did not run"):
        cap[3, 0]  # the backbone stops after its last out_index
    iso = focalnet.create_model("focalnet_tiny_iso", embed_dim=16, depths=(2,), num_classes=5).eval()
    maps, out = viz.modulation_maps(iso, torch.randn(1, 3, 48, 80))
    assert maps.gates.shape == (1, 4, 3, 5) and out.shape == (1, 5)
    assert [k.shape for k in viz.focal_kernels(iso)] == [(3, 3), (5, 5), (7, 7)]


def test_kernel_grid_shapes_and_values():
    cfg = focalnet.FocalNetConfig(embed_dim=8, depths=(1, 2, 1), focal_levels=(2, 3, 1), focal_windows=(3, 5, 7))
    model = randomize_(focalnet.FocalNet(cfg), seed=2)
    grid = viz.kernel_grid(model)
    assert [[k.shape for k in row] for row in grid] == [[(3, 3), (5, 5)], [(5, 5), (7, 7), (9, 9)], [(7, 7)]]
    w = model.layers[1].blocks[1].modulation.focal_layers[2][0].weight
    np.testing.assert_allclose(grid[1][2], w.mean((0, 1)).detach().numpy(), rtol=1e-6)
    first = viz.kernel_grid(model, block=0)
    np.testing.assert_allclose(
        first[1][0], model.layers[1].blocks[0].modulation.focal_layers[0][0].weight.mean((0, 1)).detach().numpy()
    )


def test_figures_are_valid_pngs(tmp_path):
    model = focalnet.FocalNet(
        focalnet.FocalNetConfig(embed_dim=8, depths=(1, 1), focal_levels=(2, 3), focal_windows=(3, 3))
    ).eval()
    x = torch.rand(3, 3, 48, 64)
    maps, _ = viz.modulation_maps(model, x)
    imgs = [(x[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8) for i in range(3)]
    paths = [
        viz.plot_gates(imgs[0], maps, 0, tmp_path / "g.png"),
        viz.plot_modulator(x[1], maps, 1, tmp_path / "m.png"),
        viz.plot_kernels(model, path=tmp_path / "k.png"),
        viz.plot_grid(imgs[:2], maps, ["a", "b"], tmp_path / "grid.png"),
    ]
    for p in paths:
        assert _is_png(p), p
    up = viz.upsample(maps.modulator_norm[0], (48, 64))
    assert up.shape == (48, 64)
    npz = save_maps(tmp_path / "maps.npz", [maps])
    with np.load(npz) as z:
        assert z["stage1_block0_gates"].shape == (3, 4, 6, 8)
        assert z["stage1_block0_modulator_norm"].shape == (3, 6, 8)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if p := shutil.which(name):
            return p
    return None


def _images_loaded_in_browser(page: Path, tmp_path: Path) -> tuple[int, int]:
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium not installed (apt-get install chromium)")
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    m = re.search(r'id="image-status"[^>]*data-loaded="(\d+)"[^>]*data-total="(\d+)"', res.stdout)
    assert m, f"no image status in the DOM (rc={res.returncode}): {res.stdout[-800:]} {res.stderr[-800:]}"
    return int(m.group(1)), int(m.group(2))


def test_cli_visualize_and_page_in_browser(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(70, 90), (64, 64)]):
        p = tmp_path / f"img {i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    ckpt = tmp_path / "tiny.safetensors"
    model = focalnet.FocalNet(focalnet.FocalNetConfig(embed_dim=8, depths=(1, 1, 1, 1), num_classes=4))
    model.pretrained_cfg.input_size = (3, 64, 64)
    focalnet.save_model(model, ckpt, class_names=["cat", "dog", "fox", "owl"])
    out = tmp_path / "out"
    assert (
        main(["visualize", *paths, "--checkpoint", str(ckpt), "--out", str(out), "--stage", "1", "--block", "0"]) == 0
    )
    names = {p.name for p in out.iterdir()}
    assert {
        "index.html",
        "maps.npz",
        "grid.png",
        "kernels.png",
        "00_img_0_gates.png",
        "01_img_1_modulator.png",
    } <= names
    for n in names:
        if n.endswith(".png"):
            assert _is_png(out / n), n
    page = (out / "index.html").read_text()
    assert "cat" in page or "dog" in page or "fox" in page or "owl" in page
    with np.load(out / "maps.npz") as z:
        assert z["stage1_block0_gates"].shape == (2, 3, 8, 8)
        assert z["probs"].shape == (2, 4)
    n_img = page.count("<img ")
    assert _images_loaded_in_browser(out / "index.html", tmp_path) == (n_img, n_img)
    # a broken image is detected
    broken = out / "broken.html"
    broken.write_text(page.replace("grid.png", "missing.png", 1))
    loaded, total = _images_loaded_in_browser(broken, tmp_path)
    assert total == n_img and loaded == n_img - 1


def test_maps_survive_inference_fusion():
    """Models folded for fast inference (``model.fuse()``) show the same maps: hooks take the plain path."""
    model = randomize_(focalnet.FocalNet(focalnet.FocalNetConfig(**CASES["hierarchical"])), seed=3, scale=0.3).eval()
    if not hasattr(model, "fuse"):
        pytest.skip("this model has no fuse()")
    x = torch.randn(1, 3, 32, 32)
    ref, ref_out = viz.modulation_maps(model, x, 0, 0)
    model.fuse()
    got, out = viz.modulation_maps(model, x, 0, 0)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.gates, ref.gates, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.modulator, ref.modulator, rtol=1e-4, atol=1e-4)


def test_cli_without_weights_says_the_model_is_untrained(capsys):
    import argparse

    from focalnet.visualize_cli import _load_model

    args = argparse.Namespace(checkpoint=None, pretrained=None, model="focalnet_tiny_iso")
    model, weights, notes = _load_model(args)  # no weights asked for: random ones, said loudly
    assert "randomly initialised" in weights
    assert any("RANDOMLY INITIALISED" in n for n in notes)
    assert "RANDOMLY INITIALISED" in capsys.readouterr().err


def test_visualize_pretrained_offline_fails_like_classify(tmp_path, capsys):
    """``--pretrained`` without the weights: exit 2 and one line, as ``classify --pretrained`` (before: a
    note, then random weights and exit 0)."""
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    for argv in (["visualize", str(tmp_path / "a.png"), "--output", str(tmp_path / "v")], ["classify"]):
        rc = main([*argv, "--model", "focalnet_tiny_iso", "--pretrained", "--threads", "1"])
        err = capsys.readouterr().err
        assert rc == 2, argv
        assert err.startswith("error: offline mode: pretrained focalnet_tiny_iso") and err.count("\n") == 1, err
    assert not (tmp_path / "v").exists()  # nothing drawn with random weights
