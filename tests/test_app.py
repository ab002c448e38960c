"""``focalnet app`` (issue 19): each tab against its command, the app over HTTP, the page in a browser.

Tiny models keep it fast: the demo's classifier (``DEMO_CONFIG``), a Mask R-CNN on a 4-block FocalNet
(embed_dim 32) and a small UPerNet, all saved with the package's own save functions. The app runs in a
subprocess on 127.0.0.1 and a free port; the HTTP tests need the ``[app]`` extra (Gradio), the browser
test Chromium (``apt-get install chromium``) and Playwright's Python package; each skips with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import focalnet
from focalnet import visualize as viz
from focalnet.app import core
from focalnet.app import guard as core_guard
from focalnet.cli import main
from focalnet.engine.images import open_image
from focalnet.visualize_cli import prepare_images, visualize_images

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()), None)
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The three tiny models, a demo run folder and the examples."""
    from focalnet.demo import build_demo_model
    from focalnet.detection import build_model, save_detector
    from focalnet.detection.config import DetectionConfig, ModelConfig
    from focalnet.segmentation import save_segmentor, upernet

    d = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    clf = d / "runs" / "demo-20250101-000000" / "model.safetensors"
    clf.parent.mkdir(parents=True)
    focalnet.save_model(build_demo_model(), clf)
    mc = ModelConfig(
        detector="mask_rcnn",
        backbone="focalnet_tiny_srf",
        backbone_overrides={"embed_dim": 32, "depths": [1, 1, 1, 1]},
        focal_windows=[3, 3, 3, 3],
        fpn_channels=32,
        min_size=128,
        max_size=160,
    )
    cfg = DetectionConfig(model=mc)
    save_detector(d / "det.pt", build_model(cfg, 4), cfg, ["cat", "dog", "cup"], [1, 2, 5])
    seg = upernet(
        "focalnet_tiny_srf",
        num_classes=3,
        embed_dim=16,
        depths=(1, 1, 1, 1),
        head={"channels": 16, "aux_channels": 8},
        class_names=["sky", "road", "car"],
    )
    save_segmentor(seg, d / "seg.pt")
    ex = core.write_examples(d / "examples")
    (d / "not_an_image.png").write_text("this is text, not a picture")
    return {
        "dir": d,
        "clf": clf,
        "det": d / "det.pt",
        "seg": d / "seg.pt",
        "digit": ex["digits"][1],
        "photo": ex["photos"][1],
        "bad": d / "not_an_image.png",
    }


# --------------------------------------------------------------------------------- tabs = commands


def test_examples_come_from_installed_packages(files):
    digit = np.asarray(Image.open(files["digit"]))
    photo = np.asarray(Image.open(files["photo"]))
    assert digit.shape == (128, 128) and digit.max() > 200 and digit.min() < 30  # a bright stroke on black
    from skimage import data

    assert np.array_equal(photo, data.coffee())


def test_classification_tab_equals_visualize(files, tmp_path):
    loaded = core.load_checkpoint(files["clf"])
    assert loaded.kind == "classifier" and core.default_block(loaded.model) == "stage 1, block 0"
    assert core.block_choices(loaded.model)[-1] == "stage 3, block 0"
    r = core.classify_image(
        loaded, core.read_upload(files["digit"], "L"), "stage 1, block 0", label="d", npz_path=tmp_path / "a.npz"
    )
    ref = visualize_images(loaded.model, [str(files["digit"])], tmp_path / "vis", stage=1, block=0)
    assert r["top"] == ref["predictions"][0]["top"]
    assert len(r["top"]) == 5 and sum(t["prob"] for t in r["top"]) <= 1 + 1e-6
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "vis" / "maps.npz") as b:
        for key in ("stage1_block0_gates", "stage1_block0_modulator_norm", "stage1_block0_context1", "image0", "probs"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert a["stage1_block0_gates"].shape == (1, 3, 8, 8)
    for name in ("gates", "modulator", "kernels"):
        fig = r[name]
        assert fig.ndim == 3 and min(fig.shape[:2]) > 200 and fig.std() > 20, name


def test_detection_tab_equals_detection_predict(files, tmp_path):
    loaded = core.load_checkpoint(files["det"])
    assert loaded.kind == "detector" and loaded.class_names == ["cat", "dog", "cup"]
    photo = core.read_upload(files["photo"])
    scores = sorted(d["score"] for d in core.detect_image(loaded, photo, 0.0)["detections"])
    thr = round((scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2, 4)  # keeps about half of them
    r = core.detect_image(loaded, photo, thr)
    out = tmp_path / "preds"
    argv = ["detection", "predict", str(files["photo"]), "--checkpoint", str(files["det"]), "--output", str(out)]
    assert main([*argv, "--score-thr", str(thr), "--threads", "1"]) == 0
    cmd = json.loads((out / "detections.json").read_text())[0]["detections"]
    assert 0 < len(r["detections"]) < len(scores)
    assert r["detections"] == [{k: v for k, v in d.items() if k != "segmentation"} for d in cmd]
    np.testing.assert_array_equal(r["image"], np.asarray(Image.open(out / "coffee.png").convert("RGB")))
    # nothing above the threshold: said on the picture (a dark banner across its top), in the app and the command
    none = core.detect_image(loaded, photo, 1.0)
    assert none["detections"] == [] and none["image"][2:12, :, :].mean() < 80
    assert main([*argv, "--score-thr", "1.0", "--threads", "1"]) == 0
    np.testing.assert_array_equal(none["image"], np.asarray(Image.open(out / "coffee.png").convert("RGB")))


def test_segmentation_tab_equals_segmentation_predict(files, tmp_path):
    loaded = core.load_checkpoint(files["seg"])
    assert loaded.kind == "segmentor"
    r = core.segment_image(loaded, core.read_upload(files["photo"]))
    out = tmp_path / "seg"
    argv = ["segmentation", "predict", str(files["photo"]), "--checkpoint", str(files["seg"]), "--output", str(out)]
    assert main([*argv, "--threads", "1"]) == 0
    rec = json.loads((out / "predictions.json").read_text())["predictions"][0]
    assert r["shares"] == rec["class_percent"] and sum(r["shares"].values()) == pytest.approx(100, abs=0.01)
    np.testing.assert_array_equal(r["image"], np.asarray(Image.open(rec["overlay"]).convert("RGB")))
    np.testing.assert_array_equal(r["label"], np.asarray(Image.open(rec["label"])))


def test_checkpoints_find_their_tab_and_bad_files_say_why(files, tmp_path):
    models = core.load_models([files["det"], files["seg"]], runs=files["dir"] / "runs", train_demo=False)
    assert models.detector.kind == "detector" and models.segmentor.kind == "segmentor"
    assert models.classifier is not None and str(files["clf"]) in models.classifier.source  # the demo's model
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        core.load_checkpoint(files["bad"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        core.load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"cannot read the uploaded file not_an_image\.png as an image"):
        core.read_upload(files["bad"])
    with pytest.raises(ValueError, match="block 'stage x'"):
        core.parse_block("stage x")


def test_offline_default_is_the_newest_demo_model(tmp_path, monkeypatch, files):
    runs = tmp_path / "runs"
    assert core.demo_checkpoint(runs, train=False) is None
    for i, stamp in enumerate(["demo-20250101-000000", "demo-20250301-000000"]):
        (runs / stamp).mkdir(parents=True)
        shutil.copy(files["clf"], runs / stamp / "model.safetensors")
        os.utime(runs / stamp / "model.safetensors", (1e9 + i, 1e9 + i))
    assert core.find_demo_checkpoint(runs) == runs / "demo-20250301-000000" / "model.safetensors"

    calls = []

    def fake_run_demo(out, **kw):  # what training the demo's model first leaves behind
        calls.append((Path(out), kw))
        Path(out).mkdir(parents=True)
        shutil.copy(files["clf"], Path(out) / "model.safetensors")
        return {"test_accuracy": 98.0}

    import focalnet.demo

    monkeypatch.setattr(focalnet.demo, "run_demo", fake_run_demo)
    lines: list[str] = []
    got = core.demo_checkpoint(tmp_path / "empty", log=lines.append)
    assert calls and calls[0][1] == {"progress": True} and got == calls[0][0] / "model.safetensors"
    assert "training the demo's model first" in lines[0]


def test_app_without_gradio_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["app", "--no-train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[app]'" in err


def test_other_commands_do_not_import_gradio():
    code = "import sys\nfrom focalnet.cli import build_parser\nbuild_parser()\nprint('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-500:]


# --------------------------------------------------------------------------------- the app over HTTP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through a proxy
    with opener.open(url, timeout=5) as r:
        return r.status


@pytest.fixture(scope="module")
def app_url(files, tmp_path_factory):
    """``focalnet app --checkpoint det.pt seg.pt`` in a folder whose runs/ holds a demo model."""
    pytest.importorskip("gradio", reason="the app needs the [app] extra: pip install -e '.[app]'")
    port = _free_port()
    logs = tmp_path_factory.mktemp("app-logs")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost"}
    env["GRADIO_TEMP_DIR"] = str(logs / "gradio")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "focalnet", "app", "--checkpoint", str(files["det"]), str(files["seg"])]
    cmd += ["--port", str(port), "--threads", "1", "--allow-load", str(files["dir"]), "--max-upload-mb", "2"]
    env["TMPDIR"] = str(logs / "tmp")  # the app's scratch folder (examples, raw maps) lands here
    (logs / "tmp").mkdir()
    out, err = open(logs / "stdout.txt", "w"), open(logs / "stderr.txt", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=files["dir"], env=env, stdout=out, stderr=err)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}: {(logs / 'stderr.txt').read_text()[-2000:]}")
            try:
                if _get(url) == 200:
                    break
            except OSError:
                pass
            if time.perf_counter() - t0 > 180:
                pytest.fail("the app did not answer within 180 s")
            time.sleep(0.5)
        print(f"app started in {time.perf_counter() - t0:.1f} s")
        yield {
            "url": url,
            "stderr": logs / "stderr.txt",
            "stdout": logs / "stdout.txt",
            "tmp": logs / "tmp",
            "proc": proc,
        }
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
        err.close()


@pytest.fixture(scope="module")
def client(app_url):
    gc = pytest.importorskip("gradio_client", reason="the app tests need gradio_client: pip install -e '.[app]'")
    return gc.Client(app_url["url"], verbose=False)


def _png(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_classification_over_http_gives_visualize_maps(client, files):
    from gradio_client import handle_file

    top, gates, modulator, kernels, raw, status = client.predict(
        handle_file(str(files["digit"])), "stage 1, block 0", api_name="/classify"
    )
    probs = [c["confidence"] for c in top["confidences"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert "stage 1, block 0" in status and "8x8" in status
    # the maps are focalnet.visualize's on the same input (computed here, in this process)
    model = focalnet.model_from_checkpoint(files["clf"]).eval()
    x, _ = prepare_images(model, [open_image(files["digit"], "L")])
    ref, logits = viz.modulation_maps(model, x, 1, 0)
    with np.load(raw) as z:
        np.testing.assert_allclose(z["stage1_block0_gates"], ref.gates.numpy(), atol=1e-5)
        np.testing.assert_allclose(z["stage1_block0_modulator"], ref.modulator.numpy(), atol=1e-5)
        np.testing.assert_allclose(z["probs"], logits.softmax(-1).numpy(), atol=1e-5)
    assert top["label"] == str(int(logits.argmax()))
    for path in (gates, modulator, kernels):
        img = _png(path)
        assert min(img.shape[:2]) > 200 and img.std() > 20
    _, _, _, _, raw0, status0 = client.predict(
        handle_file(str(files["digit"])), "stage 0, block 0", api_name="/classify_block"
    )
    with np.load(raw0) as z:
        assert z["stage0_block0_gates"].shape == (1, 3, 16, 16) and "16x16" in status0


def test_detection_and_segmentation_over_http(client, files):
    from gradio_client import handle_file

    photo = core.read_upload(files["photo"])
    loaded = core.load_checkpoint(files["det"])
    scores = sorted(d["score"] for d in core.detect_image(loaded, photo, 0.0)["detections"])
    thr = round((scores[len(scores) // 3] + scores[len(scores) // 3 + 1]) / 2, 4)  # between two scores
    ref_det = core.detect_image(loaded, photo, thr)
    drawn, dets, status = client.predict(handle_file(str(files["photo"])), thr, api_name="/detect")
    assert len(dets) == len(ref_det["detections"]) and f"{len(dets)} detection" in status
    assert [d["label"] for d in dets] == [d["label"] for d in ref_det["detections"]]
    assert _png(drawn).shape == np.asarray(photo).shape
    drawn, dets, status = client.predict(handle_file(str(files["photo"])), 1.0, api_name="/detect_threshold")
    assert dets == [] and status.startswith("0 detections") and _png(drawn)[2:12].mean() < 80  # said on the image
    overlay, shares, status = client.predict(handle_file(str(files["photo"])), api_name="/segment")
    ref_seg = core.segment_image(core.load_checkpoint(files["seg"]), photo)
    got = {c["label"]: c["confidence"] for c in shares["confidences"]}
    assert got == pytest.approx({k: v / 100 for k, v in ref_seg["shares"].items()})
    assert _png(overlay).shape == ref_seg["image"].shape


def test_bad_inputs_get_a_line_in_the_page_and_no_traceback(client, app_url, files):
    from gradio_client import handle_file

    *outputs, status = client.predict(handle_file(str(files["bad"])), "stage 1, block 0", api_name="/classify")
    assert not any(outputs)  # no result shown (an empty top-5, no figures)
    assert "cannot read the uploaded file not_an_image.png as an image" in status
    msg, _, _ = client.predict(str(files["det"]), api_name="/load")
    assert "is a detector, not a classifier" in msg and "Detection tab" in msg
    msg, _, _ = client.predict(str(files["bad"]), api_name="/load")
    assert msg.startswith("**Could not load") and "not a readable checkpoint" in msg
    err = app_url["stderr"].read_text()
    assert "Traceback" not in err and "focalnet app: classification: cannot read the uploaded file" in err
    assert "FocalNet app ready" in app_url["stdout"].read_text()


# --------------------------------------------------------------------------------- the page in a browser


def test_page_in_a_real_browser(app_url, files, tmp_path):
    if CHROMIUM is None:
        pytest.skip("Chromium not installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (the [app] extra)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(app_url["url"], wait_until="domcontentloaded")
            page.locator("#classify-image input[type=file]").set_input_files(str(files["digit"]))
            page.wait_for_function(
                "() => { const i = document.querySelector('#gates img');"
                " return i && i.complete && i.naturalWidth > 200; }",
                timeout=120_000,
            )
            page.wait_for_function(
                "() => document.querySelector('#classify-status').innerText.includes('8x8')", timeout=60_000
            )
            shot = tmp_path / "app.png"
            page.screenshot(path=str(shot), full_page=True)
            gates = np.asarray(Image.open(__import__("io").BytesIO(page.locator("#gates img").screenshot())))
        finally:
            browser.close()
    print(f"screenshot: {shot}")
    rgb = gates[..., :3].astype(int)
    assert rgb.std() > 20  # rendered, not blank
    reds = ((rgb[..., 0] > 150) & (rgb[..., 2] < 120)).mean()
    blues = ((rgb[..., 2] > 150) & (rgb[..., 0] < 120)).mean()
    assert reds > 0.005 or blues > 0.005  # the gates' colour map is there
    readme_shot = REPO / "docs" / "images" / "app.png"
    if not readme_shot.exists():  # the README's screenshot, taken once
        shutil.copy(shot, readme_shot)


# --------------------------------------------------------------------------------- the HTTP surface (issue 27)


def _call(url: str, api: str, data: list) -> tuple[str, Any]:
    """``POST /gradio_api/call/<api>`` with raw JSON as any client could send it, then its result stream:
    ``("complete", outputs)`` or ``("error", message)``."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(
        f"{url}gradio_api/call/{api}", json.dumps({"data": data}).encode(), {"Content-Type": "application/json"}
    )
    with opener.open(req, timeout=30) as r:
        event = json.loads(r.read())["event_id"]
    with opener.open(f"{url}gradio_api/call/{api}/{event}", timeout=120) as r:
        text = r.read().decode()
    kind, payload = None, None
    for line in text.splitlines():
        if line.startswith("event: "):
            kind = line[7:].strip()
        elif line.startswith("data: ") and kind in ("complete", "error"):
            payload = json.loads(line[6:]) if line[6:].strip() not in ("", "null") else None
    return kind or "?", payload


def _refused(kind: str, out: Any) -> str:
    """The status line of a call that must not have produced a result (no image, no labels)."""
    if kind == "error":  # Gradio itself refused the payload (a FileData with a path outside its cache)
        return "gradio refused"
    assert kind == "complete", (kind, out)
    *results, status = out
    assert not any(results), results  # nothing drawn, nothing classified
    return status


SERVER_FILES = ["/etc/passwd", "/etc/hostname", "/proc/self/environ", "/nonexistent/x.png", "/etc", "/dev/zero"]


@pytest.mark.parametrize("meta", [False, True], ids=["plain", "filedata-meta"])
def test_client_paths_outside_uploads_are_refused_alike(app_url, files, meta):
    """A path on the server is never read (a real image outside the upload folder included), and the answer
    does not depend on whether it exists, is a folder, a device or not an image: no oracle."""
    statuses = set()
    for path in [str(files["photo"]), str(files["seg"]), *SERVER_FILES, str(files["dir"] / ".." / "x.png")]:
        payload: dict[str, Any] = {"path": path}
        if meta:
            payload["meta"] = {"_type": "gradio.FileData"}
        for api, extra in (("detect", [0.5]), ("segment", []), ("classify", ["stage 1, block 0"])):
            statuses.add(_refused(*_call(app_url["url"], api, [payload, *extra])).split(":** ")[-1])
    statuses.discard("gradio refused")
    assert statuses <= {core_guard.NOT_AN_UPLOAD}, statuses
    assert "Traceback" not in app_url["stderr"].read_text()


def test_load_by_path_is_limited_to_the_allowed_folder(app_url, files):
    for path in ("/etc/passwd", "/proc/self/environ", str(files["dir"] / ".." / ".." / "etc" / "passwd")):
        msg, _, _ = _call(app_url["url"], "load", [path])[1]
        assert msg.startswith("**Not loaded:**") and "only checkpoints under" in msg, msg
        assert "root:" not in msg and "Unsupported operand" not in msg
    link = files["dir"] / "escape.pt"
    link.unlink(missing_ok=True)
    link.symlink_to("/etc/passwd")  # a link inside the allowed folder that leads out of it
    msg = _call(app_url["url"], "load", [str(link)])[1][0]
    assert "only checkpoints under" in msg
    for junk in ([1, 2], {"a": 1}, 3.5, "x" * 5000, "a\x00b"):
        kind, out = _call(app_url["url"], "load", [junk])
        assert kind == "error" or out[0].startswith(("**Not loaded", "**Could not load")), (junk, out)


def test_detect_threshold_from_a_client_is_checked(app_url, files):
    from gradio_client import handle_file  # noqa: F401  (the [app] extra is there)

    for thr in ("0.5", [0.5], None, 7, -1, float("inf")):
        kind, out = _call(app_url["url"], "detect", [{"path": "/nonexistent.png"}, thr])
        assert kind == "error" or not any(out[:-1]), out


def test_uploads_over_the_limit_and_raw_maps_are_bounded(client, app_url, files, tmp_path):
    from gradio_client import handle_file

    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1100, 1100, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2 * 2**20  # the app was started with --max-upload-mb 2
    with pytest.raises(Exception):  # noqa: B017  (gradio_client raises its own error types for a 413)
        client.predict(handle_file(str(big)), 0.5, api_name="/detect")
    for _ in range(18):
        client.predict(handle_file(str(files["digit"])), "stage 1, block 0", api_name="/classify")
    maps = list(app_url["tmp"].glob("focalnet-app-*/maps/*.npz"))
    assert 0 < len(maps) <= 16, maps


def test_guard_refuses_fifos_devices_folders_and_big_files(tmp_path):
    from focalnet.app.guard import Guard, RefusedPath

    root = tmp_path / "uploads"
    root.mkdir()
    os.mkfifo(root / "fifo.png")
    (root / "dir.png").mkdir()
    (root / "big.png").write_bytes(b"\0" * 2048)
    (root / "ok.png").write_bytes(b"\0" * 16)
    (root / "out.png").symlink_to("/etc/passwd")
    g = Guard([root], max_upload_bytes=1024)
    t0 = time.perf_counter()
    for name, needle in [("fifo.png", "not a regular file"), ("dir.png", "not a regular file"), ("big.png", "limit")]:
        with pytest.raises(RefusedPath, match=needle):
            g.image({"path": str(root / name)})
    with pytest.raises(RefusedPath, match="only images uploaded"):
        g.image(str(root / "out.png"))
    assert time.perf_counter() - t0 < 5  # the FIFO was never opened
    assert g.image({"path": str(root / "ok.png")}) == (root / "ok.png").resolve()
    with pytest.raises(RefusedPath, match="loading a checkpoint by path is off"):
        g.checkpoint("/etc/passwd")


def test_app_http_api_fuzz(app_url, files):
    """Hypothesis over payload shapes, paths, sizes and extra arguments: every call ends in a refusal or an
    empty result, the app keeps answering, and no traceback reaches its terminal."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    paths = st.one_of(
        st.sampled_from(SERVER_FILES + [str(files["photo"]), str(files["det"]), "../../etc/passwd", "", "."]),
        st.text(max_size=300),
        st.builds(lambda s: "/tmp/" + s, st.text(max_size=40)),
    )
    payloads = st.one_of(
        st.none(),
        paths,
        st.builds(lambda p: {"path": p}, paths),
        st.builds(lambda p: {"path": p, "meta": {"_type": "gradio.FileData"}}, paths),
        st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=20)), max_size=3),
        st.lists(st.integers(), max_size=3),
        st.integers(),
        st.floats(allow_nan=False),
    )
    apis = st.sampled_from([("detect", 1), ("segment", 0), ("classify", 1), ("detect_threshold", 1)])

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(apis, payloads, st.one_of(st.floats(allow_nan=False), st.text(max_size=20), st.none()))
    def one(api, payload, extra):
        name, n_extra = api
        kind, out = _call(app_url["url"], name, [payload] + [extra] * n_extra)
        if kind == "complete":
            assert not any(out[:-1]), out
        else:
            assert kind == "error", (kind, out)

    one()
    assert _get(app_url["url"]) == 200
    assert "Traceback" not in app_url["stderr"].read_text()
