"""Model artifacts for a stage pod: fetch the model, extract one stage's block, check digests.

What a stage pod's init container runs (``splitdnn fetch-block``): the model comes from
``torchvision:NAME`` (exported here, as ``splitdnn split`` does), ``https://...`` (downloaded
once into the cache and checked against the required sha256) or ``pvc://CLAIM/PATH`` (the
claim mounted under ``$SPLITDNN_PVC_ROOT``, default ``/mnt/pvc``); the block for the stage's
layer range is cut out and its digest compared with the plan's, so that a pod never serves a
block other than the one that was planned. A torchvision model's state dict (``weights``) is
fetched the same ways as a file and exported with the model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from splitdnn.graph import ModelGraph, analyse_model, resolve_model, split_model
from splitdnn.graph.sources import cache_dir, file_sha256

PVC_ROOT_ENV = "SPLITDNN_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
DOWNLOAD_CHUNK = 1 << 20


class ArtifactError(RuntimeError):
    """A model that cannot be fetched, or a digest that does not match."""


def _check_digest(path: Path, expected: str | None, what: str) -> None:
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected.lower():
        raise ArtifactError(f"{what}: sha256 {actual} does not match the expected {expected}")


def download(url: str, sha256: str, cache: Path | None = None, timeout_s: float = 300,
             suffix: str = ".onnx") -> Path:
    """An https file, downloaded once into the cache and verified against ``sha256``."""
    target = (cache or cache_dir()) / "downloads" / f"{sha256.lower()}{suffix}"
    if target.is_file():
        _check_digest(target, sha256, url)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as partial:
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                shutil.copyfileobj(response, partial, DOWNLOAD_CHUNK)
        except OSError as error:
            Path(partial.name).unlink(missing_ok=True)
            raise ArtifactError(f"cannot download {url}: {error}") from error
    try:
        _check_digest(Path(partial.name), sha256, url)
    except ArtifactError:
        Path(partial.name).unlink(missing_ok=True)
        raise
    os.replace(partial.name, target)
    return target


def network_failure(error: BaseException | None) -> bool:
    """A download error a retry may cure, anywhere in ``error``'s chain of causes: no
    connection, a timeout, a 5xx or 429 answer (a 4xx such as 404 is the URL's fault)."""
    import urllib.error

    while error is not None:
        if isinstance(error, urllib.error.HTTPError):
            return error.code >= 500 or error.code == 429
        if isinstance(error, OSError):
            return True
        error = error.__cause__
    return False


def pvc_path(source: str) -> Path:
    """``pvc://CLAIM/PATH`` -> the file under the mounted claim."""
    claim, _, inner = source.removeprefix("pvc://").partition("/")
    if not claim or not inner:
        raise ArtifactError(f"expected pvc://CLAIM/PATH, got {source!r}")
    path = Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT)) / claim / inner
    if not path.is_file():
        raise ArtifactError(f"{source}: {path} does not exist (is the claim mounted?)")
    return path


def fetch_model(source: str, sha256: str | None = None,
                input_shape: tuple[int, ...] | None = None, weights: str | None = None,
                weights_sha256: str | None = None) -> tuple[Path, tuple[int, ...] | None]:
    """A local ONNX file for a model source (its digest checked when one is given) and the
    input shape to analyse it at (torchvision exports keep a symbolic batch); a torchvision
    model exported with the state dict at ``weights`` (fetched as :func:`fetch_file` does)."""
    if source.startswith(("https://", "http://", "pvc://")):
        if weights is not None:
            raise ArtifactError("--weights: applies only to torchvision:NAME models")
        return fetch_file(source, sha256), input_shape
    try:
        weights_path = fetch_file(weights, weights_sha256, ".pt") if weights else None
    except ArtifactError as error:
        raise ArtifactError(f"weights: {error}") from error
    resolved = resolve_model(source, input_shape=input_shape, weights=weights_path)
    _check_digest(resolved.onnx_path, sha256, source)
    return resolved.onnx_path, resolved.input_shape


def fetch_file(source: str, sha256: str | None, suffix: str = ".onnx") -> Path:
    """A local file for ``https://`` (downloaded once, ``sha256`` required),
    ``pvc://CLAIM/PATH`` or a path, its digest checked when one is given."""
    if source.startswith("https://"):
        if sha256 is None:
            raise ArtifactError(f"{source}: an https file needs its sha256")
        return download(source, sha256, suffix=suffix)
    if source.startswith("http://"):
        raise ArtifactError(f"{source}: plain http is not accepted, use https:// with sha256")
    path = pvc_path(source) if source.startswith("pvc://") else Path(source)
    if not path.is_file():
        raise ArtifactError(f"{source}: no such file")
    _check_digest(path, sha256, source)
    return path


def _cut_block(graph: ModelGraph, layers: tuple[int, int], work: Path) -> dict[str, Any]:
    """Write the block of ``layers`` (and its neighbours) into ``work``; its manifest entry."""
    first, last = layers
    count = len(graph.layers)
    if not 0 <= first <= last < count:
        raise ArtifactError(f"layers [{first}, {last}] are outside the model's 0..{count - 1}")
    cuts = [cut for cut in (first - 1, last) if 0 <= cut < count - 1]
    manifest = split_model(graph, cuts, work)
    block: dict[str, Any] = next(b for b in manifest.blocks if tuple(b["layers"]) == layers)
    return block


def block_sha256s(model: Path, source: str, ranges: list[tuple[int, int]],
                  input_shape: tuple[int, ...] | None = None) -> dict[tuple[int, int], str]:
    """The sha256 of each range's block, cut as :func:`extract_block` cuts it (what a plan's
    ``blockSha256`` must state for the stage's init container to accept the block)."""
    graph = analyse_model(model, input_shape, source=source)
    digests = {}
    for layers in ranges:
        with tempfile.TemporaryDirectory() as work:
            digests[layers] = str(_cut_block(graph, layers, Path(work))["sha256"])
    return digests


def extract_block(model: Path, source: str, layers: tuple[int, int], out: Path,
                  input_shape: tuple[int, ...] | None = None,
                  expected_sha256: str | None = None) -> Path:
    """Cut the block of ``layers`` (inclusive) out of ``model`` into ``out/block.onnx``."""
    graph = analyse_model(model, input_shape, source=source)
    first, last = layers
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as work:
        block = _cut_block(graph, layers, Path(work))
        if expected_sha256 is not None and block["sha256"] != expected_sha256.lower():
            raise ArtifactError(f"block for layers [{first}, {last}] has sha256 "
                                f"{block['sha256']}, the plan expects {expected_sha256}")
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("block*.onnx*"):
            stale.unlink()
        # Files keep their names: a large block's ONNX file refers to its data file by name.
        for part in Path(work).glob(f"{block['file']}*"):
            shutil.move(str(part), out / part.name)
    link = out / "block.onnx"
    if block["file"] != link.name:
        link.symlink_to(block["file"])
    return link


EXIT_HEAD_FILE = "exit.onnx"


def fetch_exit_head(source: str, sha256: str | None, out: Path) -> Path:
    """An early-exit head (``https://`` with sha256, ``pvc://`` or a path) copied to
    ``out/exit.onnx``, its digest checked when one is given."""
    try:
        path, _ = fetch_model(source, sha256)
    except ArtifactError as error:
        raise ArtifactError(f"exit head: {error}") from error
    out.mkdir(parents=True, exist_ok=True)
    target = out / EXIT_HEAD_FILE
    shutil.copyfile(path, target)
    return target
