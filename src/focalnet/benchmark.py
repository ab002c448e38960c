"""``focalnet benchmark``: this library's execution paths side by side with timm's FocalNet.

Every path runs the *same weights* (timm gets them through :func:`focalnet.convert_state_dict`).
Measurements are interleaved: each repetition times every path once, in turn, so that a machine
shared with other work slows all paths alike and the ratios stay meaningful. Reported: images/s
(median, min and max over the repetitions) for inference at each batch size and for a training step
(forward, cross-entropy, backward, SGD step), peak memory, and the max absolute difference of each
path's outputs from this library's eager fp32 outputs.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "run_benchmark",
    "format_table",
    "run_kinds_benchmark",
    "format_kinds_table",
    "DEFAULT_PATHS",
    "ALL_PATHS",
    "KINDS",
]

#: every path the benchmark knows; ``compiled`` is opt-in (``--paths ...,compiled``): torch.compile's
#: first call took over 7 minutes on a loaded 2-core CPU before anything was timed
ALL_PATHS = ("eager", "fused", "compiled", "onnxruntime", "timm")
DEFAULT_PATHS = ("eager", "fused", "onnxruntime", "timm")
COMPILE_NOTE = (
    "compiled first spends minutes in torch.compile before anything is timed "
    "(over 7 min measured on a loaded 2-core CPU)"
)


def _malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc), so that RSS starts near the live size."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class _PeakMemory:
    """Peak memory during a block: CUDA peak allocation, or on CPU peak RSS above the start (sampled)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        _malloc_trim()
        self.base = _rss_bytes()
        self._stop = threading.Event()
        self._max = self.base

        def sample() -> None:
            while not self._stop.is_set():
                self._max = max(self._max, _rss_bytes())
                time.sleep(0.002)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _rss_bytes()) - self.base


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _our_model(name: str, num_classes: int, drop_path_rate: float) -> nn.Module:
    from .factory import create_model

    torch.manual_seed(0)
    return create_model(name, num_classes=num_classes, drop_path_rate=drop_path_rate)


def _timm_model(name: str, ours: nn.Module, drop_path_rate: float) -> nn.Module | None:
    try:
        import timm
    except ImportError:
        return None
    from .weights import convert_state_dict

    try:
        m = timm.create_model(name, pretrained=False, num_classes=ours.num_classes, drop_path_rate=drop_path_rate)
    except RuntimeError:  # unknown to this timm version
        return None
    sd = convert_state_dict(ours.state_dict(), to="timm", use_postln=ours.cfg.use_postln)
    m.load_state_dict(sd, strict=True)
    return m


def _ort_session(model: nn.Module, threads: int, workdir: str) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort

    from .classification.export import export_onnx

    path = export_onnx(model, Path(workdir) / "model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {"images": x.numpy()})[0])

    return run


def _time_once(fn: Callable[[], Any], n: int, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return time.perf_counter() - t


def _summary(batch: int, n: int, times: list[float]) -> dict[str, Any]:
    rates = [batch * n / t for t in times]
    med = statistics.median(rates)
    return {
        "images_per_s": round(med, 3),
        "min": round(min(rates), 3),
        "max": round(max(rates), 3),
        "spread_pct": round(100 * (max(rates) - min(rates)) / med, 1),
        "iters_per_rep": n,
        "reps": len(rates),
    }


def _interleaved(
    fns: dict[str, Callable[[], Any]],
    batch: int,
    reps: int,
    warmup: int,
    min_time: float,
    device: torch.device,
    log: Callable[[str], None],
) -> dict[str, dict[str, Any]]:
    """Time every callable ``reps`` times, round-robin; iterations per repetition sized to ``min_time``."""
    iters: dict[str, int] = {}
    for name, fn in fns.items():
        log(f"  warming up {name} ({max(1, warmup)} run(s))")
        t = 0.0
        for _ in range(max(1, warmup)):
            t = _time_once(fn, 1, device)
        iters[name] = max(1, math.ceil(min_time / max(t, 1e-6)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(reps):
        for name, fn in fns.items():
            times[name].append(_time_once(fn, iters[name], device))
        log(f"  rep {r + 1}/{reps}: " + ", ".join(f"{k} {batch * iters[k] / v[-1]:.2f}" for k, v in times.items()))
    return {k: _summary(batch, iters[k], v) for k, v in times.items()}


def _peak(fn: Callable[[], Any], device: torch.device) -> float:
    with _PeakMemory(device) as pm:
        fn()
    return round(pm.peak / 2**20, 1)


def run_benchmark(
    model: str = "focalnet_tiny_srf",
    *,
    batch_sizes: Sequence[int] = (1, 32),
    train_batch: int = 16,
    img_size: int = 224,
    threads: int | None = None,
    reps: int = 5,
    warmup: int = 2,
    min_time: float = 1.0,
    paths: Sequence[str] = DEFAULT_PATHS,
    train: bool = True,
    compile_train: bool = False,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure the requested ``paths`` side by side and return a JSON-serialisable dict.

    ``paths``: ``eager`` (default forward), ``fused`` (after :meth:`FocalNet.fuse`), ``compiled``
    (``torch.compile(dynamic=True, fullgraph=True)``; not in :data:`DEFAULT_PATHS`, its compilation takes
    minutes), ``onnxruntime`` (CPU only), ``timm`` (timm's FocalNet with the same weights, if timm is
    installed). Every measurement, inference and training, is repeated ``reps`` times. On CUDA, ``eager-bf16``/``eager-fp16`` and
    ``timm-bf16``/``timm-fp16`` (autocast) are added. Training steps are timed for eager, timm and, with
    ``compile_train``, the compiled model (its backward compilation takes minutes on a small CPU).
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        # torch.compile imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on a
        # CPU-only machine that has a CUDA toolkit folder: irrelevant to a CPU benchmark
        import logging

        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    num_classes = 1000
    log(f"building {model} ({', '.join(paths)}) on {device}, {threads} threads")
    if "compiled" in paths and dev.type == "cpu":
        log(f"note: {COMPILE_NOTE}")
    ours = _our_model(model, num_classes, 0.1).to(dev).eval()
    timm_model = _timm_model(model, ours, 0.1) if "timm" in paths else None
    if timm_model is not None:
        timm_model = timm_model.to(dev).eval()
    paths = [p for p in paths if p != "timm" or timm_model is not None]
    if dev.type != "cpu":
        paths = [p for p in paths if p != "onnxruntime"]
    fused = copy.deepcopy(ours).fuse() if "fused" in paths else None

    g = torch.Generator().manual_seed(0)
    x_check = torch.randn(2, 3, img_size, img_size, generator=g).to(dev)

    infer: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    notes: dict[str, str] = {}
    with torch.inference_mode():
        ref = ours(x_check).float()
    for p in paths:
        if p == "eager":
            infer[p] = ours
        elif p == "fused":
            infer[p] = fused
        elif p == "compiled":
            log("compiling with torch.compile (the first call takes minutes on a small CPU)...")
            t = time.perf_counter()
            comp = torch.compile(ours, dynamic=True, fullgraph=True)
            with torch.no_grad():
                comp(x_check)
            notes["compiled"] = (
                f"torch.compile(dynamic=True, fullgraph=True); first call {time.perf_counter() - t:.0f} s"
            )
            log(f"  compiled in {time.perf_counter() - t:.0f} s")
            infer[p] = comp
        elif p == "onnxruntime":
            log("exporting to ONNX for onnxruntime...")
            workdir = tempfile.mkdtemp(prefix="focalnet-bench-")
            import onnxruntime

            infer[p] = _ort_session(ours, threads, workdir)
            notes["onnxruntime"] = f"onnxruntime {onnxruntime.__version__}, CPUExecutionProvider, {threads} threads"
        elif p == "timm":
            infer[p] = timm_model
    if dev.type == "cuda":
        for dt_name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            for base in ("eager", "timm"):
                if base in infer:
                    fn = infer[base]
                    infer[f"{base}-{dt_name}"] = (
                        lambda x, fn=fn, dt=dt: _autocast(fn, x, dt)  # type: ignore[misc]
                    )

    results: dict[str, Any] = {"inference": {}, "train": {}, "max_abs_diff": {}, "peak_memory_mb": {}}
    # outputs against eager fp32
    with torch.no_grad():
        for name, fn in infer.items():
            out = fn(x_check).float()
            results["max_abs_diff"][name] = float((out - ref).abs().max())

    for bs in batch_sizes:
        log(f"inference, batch {bs}")
        x = torch.randn(bs, 3, img_size, img_size, generator=g).to(dev)
        with torch.no_grad():
            fns = {k: (lambda fn=fn, x=x: fn(x)) for k, fn in infer.items()}
            res = _interleaved(fns, bs, reps, warmup, min_time, dev, log)
            for k, fn in fns.items():
                res[k]["peak_memory_mb"] = _peak(fn, dev)
        results["inference"][str(bs)] = res

    if train:
        log(f"training step, batch {train_batch}")
        steps = {}
        models: dict[str, nn.Module] = {"eager": copy.deepcopy(ours).train()}
        if "compiled" in paths and compile_train:
            models["compiled"] = torch.compile(copy.deepcopy(ours).train(), dynamic=True, fullgraph=True)
        if timm_model is not None:
            models["timm"] = copy.deepcopy(timm_model).train()
        xt = torch.randn(train_batch, 3, img_size, img_size, generator=g).to(dev)
        yt = torch.randint(0, num_classes, (train_batch,), generator=g).to(dev)
        for k, m in models.items():
            opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)

            def step(m: nn.Module = m, opt: torch.optim.Optimizer = opt) -> None:
                loss = F.cross_entropy(m(xt), yt)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            steps[k] = step
        res = _interleaved(steps, train_batch, reps, warmup, min_time, dev, log)
        for k, fn in steps.items():
            res[k]["peak_memory_mb"] = _peak(fn, dev)
        results["train"][str(train_batch)] = res

    results["speedup_vs_timm"] = _speedups(results)
    results["setup"] = {
        "model": model,
        "img_size": img_size,
        "dtype": "float32" if dev.type == "cpu" else "float32 (+ autocast rows)",
        "device": _device_name(dev),
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "python": platform.python_version(),
        "reps": reps,
        "warmup": warmup,
        "min_time_per_rep_s": min_time,
        "train_batch": train_batch,
        "batch_sizes": list(batch_sizes),
        "method": "interleaved round-robin repetitions; images/s median [min, max]; "
        "max_abs_diff against this library's eager fp32 logits on a fixed batch of 2; "
        "peak memory: CUDA max allocated, or CPU peak RSS above the start of one extra run (after malloc_trim; 2 ms sampling)",
        "notes": notes,
    }
    return results


def _autocast(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    with torch.autocast(x.device.type, dtype=dtype):
        return fn(x)


def _version(pkg: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(pkg)
    except Exception:
        return None


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"CPU: {name} ({os.cpu_count()} logical cores)"


def _speedups(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for kind in ("inference", "train"):
        for bs, res in results[kind].items():
            if "timm" not in res:
                continue
            base = res["timm"]["images_per_s"]
            for k, v in res.items():
                out.setdefault(k, {})[f"{kind}_bs{bs}"] = round(v["images_per_s"] / base, 2)
    return out


def format_table(results: dict[str, Any]) -> str:
    """Markdown table: one row per path, images/s median [min-max] and the ratio to timm's eager."""
    kinds = [("inference", bs) for bs in results["inference"]] + [("train", bs) for bs in results["train"]]
    paths: list[str] = []
    for kind, bs in kinds:
        for k in results[kind][bs]:
            if k not in paths:
                paths.append(k)
    head = ["path"] + [f"{'infer' if k == 'inference' else 'train'} bs{bs} img/s" for k, bs in kinds]
    head += ["peak MB (infer bs{}/train)".format(max(results["inference"], key=int, default="-")), "max abs diff"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in paths:
        cells = [p]
        for kind, bs in kinds:
            r = results[kind][bs].get(p)
            if r is None:
                cells.append("-")
                continue
            ratio = results["speedup_vs_timm"].get(p, {}).get(f"{kind}_bs{bs}")
            ratio_s = f" ({ratio:.2f}x)" if ratio is not None and not p.startswith("timm") else ""
            cells.append(f"{r['images_per_s']:.2f} [{r['min']:.2f}-{r['max']:.2f}]{ratio_s}")
        big = max(results["inference"], key=int, default=None)
        mi = results["inference"].get(big, {}).get(p, {}).get("peak_memory_mb") if big else None
        tr = next((results["train"][bs].get(p, {}).get("peak_memory_mb") for bs in results["train"]), None)
        cells.append(f"{'-' if mi is None else f'{mi:.0f}'} / {'-' if tr is None else f'{tr:.0f}'}")
        d = results["max_abs_diff"].get(p)
        cells.append("-" if d is None else f"{d:.1e}")
        lines.append("| " + " | ".join(cells) + " |")
    s = results["setup"]
    lines.append("")
    lines.append(
        f"{s['model']}, {s['img_size']}x{s['img_size']}, {s['dtype']}, {s['device']}, "
        f"{s['torch_threads']} threads, torch {s['torch']}, timm {s['timm']}; "
        f"{s['reps']} interleaved repetitions of >= {s['min_time_per_rep_s']} s after {s['warmup']} warm-up "
        "runs; (x) = ratio to timm's eager in the same run."
    )
    return "\n".join(lines)


#: the model kinds of ``--kinds``: what is built and its usual test resolution (height, width)
KINDS = {
    "classification": ("focalnet_tiny_srf classifier, 1000 classes", (224, 224)),
    "detection": ("Mask R-CNN, focalnet_tiny_lrf, 81 classes (short side 800)", (800, 1067)),
    "segmentation": ("UPerNet, focalnet_tiny_srf, 150 classes (test scale 2048x512)", (512, 683)),
}


def _kind_paths(kind: str, tiny: bool, workdir: Path, threads: int) -> tuple[dict[str, Callable[[], Any]], Path]:
    """Eager, fused and ONNX Runtime callables of one model kind on the same input (the exported graph's
    input: for detection and segmentation the uint8 image with pre- and post-processing), and the file."""
    from .engine.onnx import ort_session, sample_image
    from .models.inference import inference_path

    kw: dict[str, Any] = {"embed_dim": 16, "depths": (1, 1, 1, 1)} if tiny else {}
    h, w = (96, 128) if tiny else KINDS[kind][1]
    torch.manual_seed(0)
    path = workdir / f"{kind}.onnx"
    if kind == "classification":
        from .classification.export import export_classifier
        from .factory import create_model

        eager = create_model("focalnet_tiny_srf", **kw).eval()
        fused = copy.deepcopy(eager).fuse()
        export_classifier(eager, path, shapes=((1, h, w), (1, h - 32, w), (2, h, w - 32)))
        x = torch.randn(1, 3, h, w)
        feed, args = {"images": x.numpy()}, x
    elif kind == "detection":
        from .detection.export import DetectorGraph, export_detector
        from .detection.registry import build_detector

        det = build_detector(
            "mask_rcnn", "focalnet_tiny_lrf", 81, **kw, **({"min_size": 96, "max_size": 128} if tiny else {})
        )
        eager, fused = DetectorGraph(det.eval(), True), DetectorGraph(inference_path(copy.deepcopy(det)), True)
        meta = {"detector": "mask_rcnn", "class_names": [str(i) for i in range(80)], "category_ids": list(range(80))}
        export_detector(det, meta, path, sizes=((h, w), (w, h), (h, h)))
        args = sample_image(h, w)
        feed = {"image": args.numpy()}
    else:
        from .segmentation import upernet
        from .segmentation.export import SegmentorGraph, export_segmentor, exportable

        seg = upernet("focalnet_tiny_srf", 150, **kw, **({"head": {"channels": 16, "aux_channels": 8}} if tiny else {}))
        scale = (256, 64) if tiny else (2048, 512)
        eager = SegmentorGraph(seg.eval(), scale)
        fused = SegmentorGraph(exportable(inference_path(copy.deepcopy(seg))), scale)
        export_segmentor(seg, {"test": {"scale": list(scale)}}, path, sizes=((h, w), (w, h), (h, h)))
        args = sample_image(h, w)
        feed = {"image": args.numpy()}
    sess = ort_session(path, threads)
    return {
        "eager": lambda: eager(args),
        "fused": lambda: fused(args),
        "onnxruntime": lambda: sess.run(None, feed),
    }, path


def run_kinds_benchmark(
    kinds: Sequence[str], *, tiny: bool = False, threads: int | None = None, reps: int = 5, warmup: int = 1,
    min_time: float = 1.0, log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Per model kind at its usual resolution (``tiny``: embed_dim 16, one block per stage, 96x128 images):
    images/s of ONNX Runtime, eager PyTorch and the fused path (:func:`~focalnet.models.inference.inference_path`),
    interleaved in one run, and the exported file's size. Exports are checked as ``focalnet export`` checks."""
    if threads is not None:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="focalnet-bench-") as tmp:
        for kind in kinds:
            log(f"{kind}: building and exporting ({'tiny' if tiny else KINDS[kind][0]})")
            fns, path = _kind_paths(kind, tiny, Path(tmp), threads)
            with torch.inference_mode():
                res = _interleaved(fns, 1, reps, warmup, min_time, torch.device("cpu"), log)
            rows[kind] = {
                "model": "tiny" if tiny else KINDS[kind][0],
                "file_mb": round(path.stat().st_size / 2**20, 2),
                **res,
            }
    return {
        "kinds": rows,
        "setup": {"threads": threads, "reps": reps, "tiny": tiny, "device": _device_name(torch.device("cpu"))},
    }


def format_kinds_table(results: dict[str, Any]) -> str:
    """Markdown: one row per kind, images/s median [min-max] of each path and the ONNX file size."""
    lines = [
        "| kind | model | eager img/s | fused img/s | onnxruntime img/s | ORT / eager | ONNX MB |",
        "|" + "---|" * 7,
    ]
    for kind, r in results["kinds"].items():
        cells = [
            f"{r[p]['images_per_s']:.2f} [{r[p]['min']:.2f}-{r[p]['max']:.2f}]"
            for p in ("eager", "fused", "onnxruntime")
        ]
        ratio = r["onnxruntime"]["images_per_s"] / r["eager"]["images_per_s"]
        lines.append(f"| {kind} | {r['model']} | {' | '.join(cells)} | {ratio:.2f}x | {r['file_mb']:.1f} |")
    s = results["setup"]
    lines += [
        "",
        f"{s['device']}, {s['threads']} threads, {s['reps']} interleaved repetitions; batch 1, pre/post-processing included",
    ]
    return "\n".join(lines)
