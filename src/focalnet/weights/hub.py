"""Pretrained weights: download from public hub mirrors or the original URLs, with caching.

Order of attempts: the Hugging Face cache (timm mirror), the torch hub cache (original URL), then,
if the network is reachable, the timm mirror through ``huggingface_hub`` and the original URL through
``torch.hub``. Offline (``HF_HUB_OFFLINE=1`` or ``FOCALNET_OFFLINE=1``, or no route to the hosts) it
fails at once with a message that names the URLs and the ``checkpoint_path=`` alternative.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..models.registry import Source, get_variant

__all__ = ["PretrainedUnavailableError", "download_pretrained", "resolve_tag"]


class PretrainedUnavailableError(RuntimeError):
    """Pretrained weights could not be found in a cache nor downloaded."""


def resolve_tag(name: str, tag: str | bool | None) -> tuple[str, Source]:
    variant = get_variant(name)
    if tag in (None, True):
        tag = variant.default_tag
    if tag not in variant.tags:
        raise ValueError(f"{name} has no pretrained tag {tag!r}; available: {list(variant.tags)}")
    return str(tag), variant.tags[str(tag)]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, sha256: str | None) -> Path:
    if sha256 and _sha256(path) != sha256:
        path.unlink(missing_ok=True)
        raise PretrainedUnavailableError(f"checksum mismatch for {path} (expected sha256 {sha256}); file removed")
    return path


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "FOCALNET_OFFLINE"))


def _reachable(url: str, timeout: float = 3.0) -> bool:
    host = urlparse(url).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_file(repo: str, local_only: bool) -> Path | None:
    from huggingface_hub import hf_hub_download

    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            return Path(hf_hub_download(repo, filename, local_files_only=local_only))
        except Exception:
            continue
    return None


def _url_cache(url: str) -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def download_pretrained(name: str, tag: str | bool | None = None) -> Path:
    """Local path of the pretrained checkpoint ``name`` (``tag`` defaults to the variant's first)."""
    tag, src = resolve_tag(name, tag)
    if src.timm_repo and (p := _hub_file(src.timm_repo, local_only=True)) is not None:
        return _verify(p, None)
    cached = _url_cache(src.url)
    if cached.exists():
        return _verify(cached, src.sha256)
    tried = [f"https://huggingface.co/{src.timm_repo}" if src.timm_repo else None, src.url]
    tried_s = ", ".join(t for t in tried if t)
    hint = (
        f"Download it by hand and pass checkpoint_path=... (or --checkpoint), e.g. "
        f"focalnet.create_model({name!r}, checkpoint_path='{os.path.basename(src.url)}')."
    )
    if _offline():
        raise PretrainedUnavailableError(
            f"offline mode: pretrained {name}.{tag} is not cached (sources: {tried_s}). {hint}"
        )
    errors = []
    if src.timm_repo:
        if _reachable("https://huggingface.co"):
            p = _hub_file(src.timm_repo, local_only=False)
            if p is not None:
                return p
            errors.append(f"{src.timm_repo}: download failed")
        else:
            errors.append("huggingface.co unreachable")
    if _reachable(src.url):
        import torch.hub

        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(src.url, str(cached), progress=True)
            return _verify(cached, src.sha256)
        except Exception as e:
            errors.append(f"{src.url}: {e}")
    else:
        errors.append(f"{urlparse(src.url).hostname} unreachable")
    raise PretrainedUnavailableError(
        f"could not get pretrained weights {name}.{tag} (tried {tried_s}: {'; '.join(errors)}). {hint}"
    )
