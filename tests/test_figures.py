"""Pictures a newcomer can read (issue 14): the PNGs are read back and checked."""

import numpy as np
import pytest
import torch
from PIL import Image

from focalnet import cli
from focalnet.drawing import font_size_for, legend_strip, watermark


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _colours(a: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in a.reshape(-1, 3)}


def test_detection_drawing_has_a_colour_per_class_and_sized_labels():
    from focalnet.detection.predict import _palette, draw_detections

    img = torch.full((3, 480, 640), 30, dtype=torch.uint8)
    det = {
        "boxes": torch.tensor([[20.0, 60, 200, 200], [250, 80, 400, 300], [420, 100, 620, 400], [30, 300, 200, 460]]),
        "labels": torch.tensor([1, 2, 3, 1]),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]),
    }
    out = draw_detections(img, det, ["person", "car", "dog"]).permute(1, 2, 0).numpy()
    pal = _palette(4)
    drawn = _colours(out)
    assert {pal[1], pal[2], pal[3]} <= drawn  # three classes, three colours (boxes and label tags)
    # the label tag in the first box's corner: filled with its colour over about one text height
    tag_rows = [y for y in range(62, 100) if (out[y, 22:70] == pal[1]).all(-1).mean() > 0.5]
    assert len(tag_rows) >= font_size_for(640, 480) * 0.6
    assert len(drawn - {pal[1], pal[2], pal[3], (30, 30, 30)}) > 2  # text in a contrasting colour


def test_segmentation_overlay_has_a_legend(tmp_path, monkeypatch):
    from focalnet.segmentation import predict as seg_predict

    label = np.zeros((120, 160), np.uint8)
    label[:, 80:] = 2
    monkeypatch.setattr(seg_predict, "predict_image", lambda *a, **k: label)
    Image.fromarray(np.full((120, 160, 3), 128, np.uint8)).save(tmp_path / "x.png")

    class Model(torch.nn.Module):
        num_classes = 3
        class_names = ["sky", "road", "car"]

    rec = seg_predict.predict_images(Model(), [tmp_path / "x.png"], tmp_path / "out", progress=False)[0]
    overlay = np.asarray(Image.open(rec["overlay"]).convert("RGB"))
    assert overlay.shape[0] == 120 and overlay.shape[1] > 160  # the legend strip on the right
    legend = overlay[:, 160:]
    pal = seg_predict.palette(3)
    found = _colours(legend)
    assert tuple(pal[0]) in found and tuple(pal[2]) in found and tuple(pal[1]) not in found  # present classes only
    assert rec["class_percent"] == {"sky": 50.0, "car": 50.0}


def test_legend_strip_lists_what_fits():
    strip = legend_strip(60, [(f"class {i}", (i * 20, 0, 0)) for i in range(10)], font_size=12)
    assert strip.shape[0] == 60 and strip.dtype == np.uint8


def test_curves_png_is_a_readable_grid(tmp_path):
    from focalnet.engine import plot_curves

    history = [
        {"epoch": e, "step": 10 * e, "train_loss": 2.0 / e, "lr": 1e-3 / e, "images_per_second": 30.0, "time": 5.0}
        | {"top1": 10.0 * e, "top5": 30.0 + e, "loss": 2.1 / e, "val_skipped_images": 0, "val_images_per_second": 90}
        for e in range(1, 5)
    ]
    path = plot_curves(history, tmp_path / "curves.png")
    w, h = Image.open(path).size
    assert (w, h) == (1000, 720)  # 2 x 2 panels: train loss, val loss, val metrics, lr
    only_train = plot_curves([{"step": 1, "train_loss": 1.0}, {"step": 2, "train_loss": 0.5}], tmp_path / "c2.png")
    assert Image.open(only_train).size == (500, 360)  # one panel, no empty ones


def test_coarse_maps_are_drawn_as_blocks():
    from focalnet.visualize import upsample

    m = np.array([[0.0, 1.0], [2.0, 3.0]])
    up = upsample(m, (32, 32))
    assert sorted(np.unique(up)) == [0.0, 1.0, 2.0, 3.0]  # 2x2 tokens -> four blocks, no invented values
    assert len(np.unique(upsample(np.random.rand(16, 16), (64, 64)))) > 256  # fine maps stay smooth


def test_untrained_figures_are_marked(tmp_path, capsys):
    banner = watermark(np.full((200, 300, 3), 255, np.uint8))
    assert (banner[2, 150] != 255).any() and (banner[-1, -1] == 255).all()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    rc = cli.main(
        ["visualize", str(tmp_path / "a.png"), "--output", str(tmp_path / "v"), "--size", "64"] + ["--threads", "1"]
    )
    assert rc == 0
    grid = np.asarray(Image.open(tmp_path / "v" / "grid.png").convert("RGB")).astype(int)
    assert grid[3, :, 0].mean() > 150 and grid[3, :, 1].mean() < 100  # the red banner across the top


def test_visualize_unknown_model_fails_first(tmp_path, capsys):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    assert cli.main(["visualize", str(tmp_path / "a.png"), "--model", "focalnet_tiny_srg", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "RANDOMLY" not in err


def test_curves_of_a_three_step_run_draw_lines(tmp_path):
    """A short run's curves.png (issue 19): the training loss and the learning rate per logged step, as
    lines (before: one dot per panel, the lr panel showing only the last value); no empty panel."""
    import json

    from matplotlib.lines import Line2D
    from torch import nn
    from torch.utils.data import TensorDataset

    from focalnet.engine import Trainer, TrainerConfig, curves_figure

    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 4, generator=g)
    data = TensorDataset(x, x.sum(-1, keepdim=True))
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(m, batch, device):
        xb, yb = batch
        return nn.functional.mse_loss(m(xb), yb), {}, len(xb)

    cfg = TrainerConfig(output_dir=str(tmp_path / "run"), epochs=1, batch_size=8, num_workers=0, progress=False)
    trainer = Trainer(cfg, model, opt, data, step, eval_fn=lambda m, t: {"top1": 50.0})
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    trainer.fit()
    assert trainer.step == 3
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [r["step"] for r in metrics["steps"]] == [1, 2, 3]
    fig = curves_figure(metrics["history"], metrics["steps"])
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == {"training loss", "validation metrics", "learning rate"}  # three panels, none empty
    loss = next(line for line in panels["training loss"].get_lines() if line.get_label() == "per logged step")
    assert isinstance(loss, Line2D) and list(loss.get_xdata()) == [1, 2, 3] and loss.get_linestyle() == "-"
    lr = panels["learning rate"].get_lines()[0].get_ydata()
    assert len(lr) == 3 and len(set(lr)) == 3  # the schedule, not its last value
    assert Image.open(tmp_path / "run" / "curves.png").size == (1500, 360)  # one row of three panels
