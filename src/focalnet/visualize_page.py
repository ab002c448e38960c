"""The files `focalnet visualize` and `focalnet demo` write next to their figures: the raw maps
(``maps.npz``) and the ``index.html`` page that shows them."""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .visualize import ModulationMaps

__all__ = ["save_maps", "write_index"]

PathLike = str | os.PathLike


def save_maps(path: PathLike, maps: Sequence[ModulationMaps], extra: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write the raw arrays to ``.npz``: ``{stage}_{block}_gates``, ``..._modulator``, ``..._modulator_norm``,
    ``..._context{l}`` for each block (batch first), plus ``extra`` arrays (e.g. the input images)."""
    arrays: dict[str, np.ndarray] = {}
    for m in maps:
        arrays.update(m.to_numpy(prefix=f"stage{m.stage}_block{m.block}_"))
        arrays[f"stage{m.stage}_block{m.block}_kernel_sizes"] = np.asarray(m.kernel_sizes)
    arrays.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}figure{margin:1em 0}
figure img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:.9em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
.note{background:#fff6d6;border:1px solid #e6cf7a;padding:.5em .8em}.ok{color:#0a0}.bad{color:#b00}
#image-status{color:#888;font-size:.8em}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var el = document.getElementById('image-status');
  el.setAttribute('data-loaded', String(ok.length));
  el.setAttribute('data-total', String(imgs.length));
  el.textContent = ok.length + '/' + imgs.length + ' images loaded';
});
"""


def write_index(
    out_dir: PathLike,
    title: str,
    figures: Sequence[tuple[str, str]],
    *,
    predictions: Sequence[Mapping[str, Any]] = (),
    info: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``out_dir/index.html`` showing ``figures`` (``(file name relative to out_dir, caption)``),
    a predictions table (``{"image", "top": [{"class", "prob"}], optional "true"}``), ``info`` and ``notes``.

    A small script fills ``#image-status`` (``data-loaded``/``data-total``) once the page has loaded.
    """
    out = Path(out_dir)
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    parts += [f'<p class="note">{e(n)}</p>' for n in notes]
    if info:
        parts.append("<table>")
        parts += [f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in info.items()]
        parts.append("</table>")
    if predictions:
        parts.append("<h2>Predictions</h2><table><tr><th>image</th>")
        has_true = any("true" in p for p in predictions)
        if has_true:
            parts.append("<th>true</th>")
        parts.append("<th>top predictions</th></tr>")
        for p in predictions:
            top = p.get("top", [])
            cells = ", ".join(f"{e(str(t['class']))} ({100 * float(t['prob']):.1f}%)" for t in top)
            row = f"<tr><td>{e(str(p.get('image', '')))}</td>"
            if has_true:
                true = p.get("true")
                hit = top and true is not None and str(top[0]["class"]) == str(true)
                cls = "ok" if hit else "bad"
                row += f'<td class="{cls}">{e(str(true))}</td>'
            parts.append(row + f"<td>{cells}</td></tr>")
        parts.append("</table>")
    parts.append("<h2>Figures</h2>")
    for name, caption in figures:
        src = e(Path(name).as_posix(), quote=True)
        parts.append(
            f'<figure><img src="{src}" alt="{e(caption, quote=True)}"><figcaption>{e(caption)}</figcaption></figure>'
        )
    parts.append('<p id="image-status">images not checked yet</p>')
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
