"""The page of ``focalnet app``: a ``gradio.Blocks`` with one tab per task over :mod:`focalnet.app.core`.

Every handler takes the raw upload (``preprocess=False``: the app decodes the file itself, so that an
unreadable one gets a message in the page instead of Gradio's error) and catches every problem: the
page shows it in one line, the terminal gets one line, never a traceback.
"""

from __future__ import annotations

import inspect
import tempfile
import uuid
from pathlib import Path
from typing import Any

from . import core
from .guard import Guard, RefusedPath, TempFiles

__all__ = ["build_app", "launch_kwargs", "API"]

#: the app's API endpoints (``gradio_client.Client.predict(..., api_name=API[...])``)
API = {
    "classify": "/classify",
    "classify_block": "/classify_block",
    "detect": "/detect",
    "detect_threshold": "/detect_threshold",
    "segment": "/segment",
    "load": "/load",
}

_INTRO = (
    "# FocalNet: what the focal modulation looks at\n"
    "Focal modulation gathers context at growing scales (focal levels) with depth-wise convolutions, mixes "
    "them with input-dependent **gates** (one per level plus a global one) and multiplies each token by the "
    "resulting **modulator**. Upload a picture or pick an example; everything runs on this machine."
)
_NEEDS = {
    "classifier": "a FocalNet classifier (`focalnet demo`'s `model.safetensors`, a classification run's "
    "checkpoint, released or converted weights)",
    "detector": "a detector (`model.pt` of `focalnet detection train`, an mmdetection FocalNet file, a "
    "FocalNet-DINO file)",
    "segmentor": "a segmentation model (`model.pt` of `focalnet segmentation train`, a released UPerNet file)",
}


def _name(payload: Any) -> str:
    """A short name for the upload, for messages (the client's own file name, never a server path)."""
    name = payload.get("orig_name") if isinstance(payload, dict) else None
    if not isinstance(name, str) or not name:
        text = payload.get("path") if isinstance(payload, dict) else payload
        name = Path(text).name if isinstance(text, str) and text else "image"
    name = " ".join(name.split())
    return name if len(name) <= 80 else name[:77] + "..."


def _model_line(models: core.AppModels, kind: str) -> str:
    loaded = models.get(kind)
    if loaded is None:
        return (
            f"**No {kind} loaded.** Start the app with `focalnet app --checkpoint PATH`, or load {_NEEDS[kind]} below."
        )
    mark = " **(random weights: not meaningful)**" if loaded.untrained else ""
    return f"Model: {loaded.source}{mark}"


def _load_hint(guard: Guard, kind: str) -> str:
    if guard.load_root is None:
        return "off: start the app with --allow-load DIR to load checkpoints under DIR by path"
    return f"{_NEEDS[kind]}, under {guard.load_root}"


def _unique_labels(top: list[dict[str, Any]]) -> dict[str, float]:
    """Top classes for ``gr.Label`` (names made unique: ImageNet has two 'crane's)."""
    out: dict[str, float] = {}
    for t in top:
        name = str(t["class"])
        out[name if name not in out else f"{name} (#{t['index']})"] = float(t["prob"])
    return out


def launch_kwargs(host: str, port: int, theme: Any) -> dict[str, Any]:
    """``Blocks.launch`` arguments: local, quiet, no error pages; the theme where this Gradio takes it."""
    import gradio as gr

    kw: dict[str, Any] = {"server_name": host, "server_port": port, "quiet": True, "show_error": False}
    if "theme" in inspect.signature(gr.Blocks.launch).parameters:
        kw["theme"] = theme
    return kw


def _theme() -> Any:
    """Gradio's default look with the system's fonts (no font fetched from the internet)."""
    import gradio as gr

    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "DejaVu Sans", "sans-serif"],
        font_mono=["ui-monospace", "DejaVu Sans Mono", "monospace"],
    )


def build_app(
    models: core.AppModels,
    examples: dict[str, list[Path]],
    device: str = "cpu",
    guard: Guard | None = None,
    temp: TempFiles | None = None,
) -> Any:
    """The ``gradio.Blocks`` of the app over ``models`` (tabs without a model say how to load one) with
    ``examples`` (:func:`focalnet.app.core.write_examples`); models loaded from the page go to ``device``.
    ``guard`` decides which paths a client may make the app read (default: Gradio's upload folder and the
    examples' folders, 50 MB, no loading by path); ``temp`` holds the raw maps written for clients.
    Returns ``(blocks, theme)``."""
    import gradio as gr

    from ..classification.evaluate import image_mode

    if guard is None:
        from gradio.utils import get_upload_folder

        roots = {str(Path(p).parent) for ps in examples.values() for p in ps}
        guard = Guard([get_upload_folder(), *roots], 50 * 2**20)
    temp = temp or TempFiles(tempfile.mkdtemp(prefix="focalnet-app-maps-"))
    raw_dir = temp.folder

    def upload(payload: Any, mode: str) -> Any:
        """The client's upload as a PIL image, None when there is none; refusals raise one line."""
        path = guard.image(payload)
        return None if path is None else core.read_upload(path, mode)

    theme = _theme()
    blocks_kw: dict[str, Any] = {"title": "FocalNet", "analytics_enabled": False}
    if "delete_cache" in inspect.signature(gr.Blocks.__init__).parameters:
        blocks_kw["delete_cache"] = (900, 3600)  # uploads older than an hour go, checked every 15 minutes
    if "theme" in inspect.signature(gr.Blocks.__init__).parameters:
        blocks_kw["theme"] = theme

    def empty_classify(msg: str) -> tuple:
        return None, None, None, None, None, msg

    def run_classify(image: Any, block: Any) -> tuple:
        clf = models.classifier
        if clf is None:
            return empty_classify(_model_line(models, "classifier"))
        try:
            img = upload(image, image_mode(clf.model))
            if img is None:
                return empty_classify("Upload an image or pick an example.")
            npz = temp.add(raw_dir / f"maps-{uuid.uuid4().hex[:8]}.npz")
            r = core.classify_image(clf, img, block, label=_name(image), npz_path=npz)
        except Exception as e:  # the page says what went wrong, in one line
            core.log_problem("classification", e)
            return empty_classify(f"**Could not classify {_name(image)}:** {core.one_line(e)}")
        h, w = r["crop"].shape[:2]
        status = f"{r['where']}; input {w}x{h} as the model was evaluated (resize, centre crop, normalise)."
        status += f" The model {clf.knows()}."  # a digits model shown a photo still answers a digit
        top = _unique_labels(r["top"]) if r["top"] else None
        return top, r["gates"], r["modulator"], r["kernels"], str(npz), status

    def run_detect(image: Any, score_thr: Any) -> tuple:
        det = models.detector
        if det is None:
            return None, None, _model_line(models, "detector")
        try:
            thr = core.score_threshold(score_thr)
            img = upload(image, "RGB")
            if img is None:
                return None, None, "Upload an image or pick an example."
            r = core.detect_image(det, img, thr)
        except Exception as e:
            core.log_problem("detection", e)
            return None, None, f"**Could not run the detector on {_name(image)}:** {core.one_line(e)}"
        n = len(r["detections"])
        status = f"{n} detection{'s' if n != 1 else ''} scoring at least {thr:g}."
        return r["image"], r["detections"], status

    def run_segment(image: Any) -> tuple:
        seg = models.segmentor
        if seg is None:
            return None, None, _model_line(models, "segmentor")
        try:
            img = upload(image, "RGB")
            if img is None:
                return None, None, "Upload an image or pick an example."
            r = core.segment_image(seg, img)
        except Exception as e:
            core.log_problem("segmentation", e)
            return None, None, f"**Could not segment {_name(image)}:** {core.one_line(e)}"
        shares = {k: v / 100.0 for k, v in r["shares"].items()}
        if "segments" in r:  # a panoptic model (Mask2Former): things counted one by one, stuff by class
            things = sum(1 for s in r["segments"] if s["isthing"])
            return r["image"], shares, f"{things} instance(s) and {len(r['segments']) - things} stuff segment(s)."
        return r["image"], shares, f"{len(shares)} class(es) present; shares of the pixels on the right."

    def load(kind: str, text: Any) -> tuple:
        keep = gr.update()
        if guard.load_root is not None and not str(text or "").strip():
            return f"Give the path of {_NEEDS[kind]}.", _model_line(models, kind), keep
        try:
            resolved = guard.checkpoint(text)
        except RefusedPath as e:
            return f"**Not loaded:** {e}", _model_line(models, kind), keep
        path = str(text).strip()
        try:
            loaded = core.load_checkpoint(resolved, device)
        except Exception as e:
            core.log_problem("loading a model", e)
            return f"**Could not load {path}:** {core.one_line(e)}", _model_line(models, kind), keep
        if loaded.kind != kind:
            msg = f"**{path} is a {loaded.kind}, not a {kind}:** load it in the {core.tab_name(loaded.kind)} tab."
            return msg, _model_line(models, kind), keep
        models.put(loaded)
        if kind == "classifier":
            choices = core.block_choices(loaded.model)
            keep = gr.update(choices=choices, value=core.default_block(loaded.model))
        return f"Loaded {path}.", _model_line(models, kind), keep

    photos = [[str(p)] for p in examples.get("photos", [])]
    digits = [[str(p)] for p in examples.get("digits", [])]

    with gr.Blocks(**blocks_kw) as app:
        gr.Markdown(_INTRO)
        for note in models.notes:
            gr.Markdown(f"Note: {note}")
        with gr.Tab("Classification and modulation", id="classification"):
            clf_line = gr.Markdown(_model_line(models, "classifier"))
            with gr.Row():
                with gr.Column(scale=2):
                    c_img = gr.Image(
                        type="filepath",
                        label="image",
                        sources=["upload", "clipboard"],
                        height=260,
                        elem_id="classify-image",
                    )
                    choices = core.block_choices(models.classifier.model) if models.classifier else []
                    c_block = gr.Dropdown(
                        choices=choices,
                        value=core.default_block(models.classifier.model) if models.classifier else None,
                        label="focal modulation (stage, block; 0-based)",
                        interactive=True,
                    )
                    ex_c = digits + photos
                    if models.classifier is not None and models.classifier.model.cfg.in_chans == 3:
                        ex_c = photos + digits
                    gr.Examples(ex_c, inputs=[c_img], label="examples (scikit-image photos, scikit-learn digits)")
                with gr.Column(scale=3):
                    c_status = gr.Markdown("Upload an image or pick an example.", elem_id="classify-status")
                    c_top = gr.Label(num_top_classes=5, label="top-5 classes")
                    c_raw = gr.File(label="raw maps (maps.npz, as `focalnet visualize` writes)")
            gr.Markdown(
                "**Gating maps**: the raw gate of each focal level and of the global level at every token "
                "(red positive, blue negative). **Modulator**: its norm over channels, upsampled and overlaid on "
                "the input. **Kernels**: the learned depth-wise kernels of each level (channel mean)."
            )
            fig = {"format": "png", "show_label": False}
            c_gates = gr.Image(label="gating maps", elem_id="gates", **fig)
            with gr.Row():
                c_mod = gr.Image(label="modulator", elem_id="modulator", **fig)
                c_ker = gr.Image(label="focal kernels", elem_id="kernels", **fig)
            with gr.Accordion("Load another classifier", open=models.classifier is None):
                c_path = gr.Textbox(label="checkpoint path", placeholder=_load_hint(guard, "classifier"))
                c_load = gr.Button("Load")
                c_msg = gr.Markdown()
            outs = [c_top, c_gates, c_mod, c_ker, c_raw, c_status]
            common = {"preprocess": False, "concurrency_id": "classifier"}
            c_img.change(run_classify, [c_img, c_block], outs, api_name=API["classify"][1:], **common)
            c_block.change(run_classify, [c_img, c_block], outs, api_name=API["classify_block"][1:], **common)
            c_load.click(
                lambda p: load("classifier", p),
                [c_path],
                [c_msg, clf_line, c_block],
                api_name=API["load"][1:],
                concurrency_id="classifier",
            )

        with gr.Tab("Detection", id="detection"):
            det_line = gr.Markdown(_model_line(models, "detector"))
            with gr.Row():
                with gr.Column(scale=2):
                    d_img = gr.Image(
                        type="filepath",
                        label="image",
                        sources=["upload", "clipboard"],
                        height=260,
                        elem_id="detect-image",
                    )
                    d_thr = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="score threshold")
                    gr.Examples(photos, inputs=[d_img], label="examples (scikit-image photos)")
                with gr.Column(scale=3):
                    d_status = gr.Markdown("Upload an image or pick an example.", elem_id="detect-status")
                    d_out = gr.Image(label="detections", elem_id="detections", format="png", show_label=False)
            d_json = gr.JSON(label="detections (as `focalnet detection predict` writes them)")
            with gr.Accordion("Load another detector", open=models.detector is None):
                d_path = gr.Textbox(label="checkpoint path", placeholder=_load_hint(guard, "detector"))
                d_load = gr.Button("Load")
                d_msg = gr.Markdown()
            common = {"preprocess": False, "concurrency_id": "detector"}
            d_img.change(run_detect, [d_img, d_thr], [d_out, d_json, d_status], api_name=API["detect"][1:], **common)
            d_thr.release(
                run_detect, [d_img, d_thr], [d_out, d_json, d_status], api_name=API["detect_threshold"][1:], **common
            )
            d_load.click(lambda p: load("detector", p)[:2], [d_path], [d_msg, det_line], concurrency_id="detector")

        with gr.Tab("Segmentation", id="segmentation"):
            seg_line = gr.Markdown(_model_line(models, "segmentor"))
            with gr.Row():
                with gr.Column(scale=2):
                    s_img = gr.Image(
                        type="filepath",
                        label="image",
                        sources=["upload", "clipboard"],
                        height=260,
                        elem_id="segment-image",
                    )
                    gr.Examples(photos, inputs=[s_img], label="examples (scikit-image photos)")
                with gr.Column(scale=3):
                    s_status = gr.Markdown("Upload an image or pick an example.", elem_id="segment-status")
                    s_shares = gr.Label(num_top_classes=10, label="classes present (share of the pixels)")
            s_out = gr.Image(label="segmentation", elem_id="segmentation", format="png", show_label=False)
            with gr.Accordion("Load another segmentation model", open=models.segmentor is None):
                s_path = gr.Textbox(label="checkpoint path", placeholder=_load_hint(guard, "segmentor"))
                s_load = gr.Button("Load")
                s_msg = gr.Markdown()
            s_img.change(
                run_segment,
                [s_img],
                [s_out, s_shares, s_status],
                api_name=API["segment"][1:],
                preprocess=False,
                concurrency_id="segmentor",
            )
            s_load.click(lambda p: load("segmentor", p)[:2], [s_path], [s_msg, seg_line], concurrency_id="segmentor")
    return app, theme
