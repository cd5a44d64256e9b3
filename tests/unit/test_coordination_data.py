"""Dataset files for CoDE link training: a generated ``.npz`` served over HTTPS (a local
server with a test CA) and from a directory standing in for a mounted claim, checked against
its sha256, validated array by array, and trained on by ``splitdnn code-train`` (what a
CrossLink's training Job runs)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trustme
from typer.testing import CliRunner

from splitdnn.cli import app
from splitdnn.coordination.data import check_fits, file_task, load_dataset
from splitdnn.coordination.errors import CoordinationError, DatasetUnavailable

SHAPE = (3, 16, 16)
CLASSES = 3


def dataset(samples: int = 60, shape: tuple[int, ...] = SHAPE, **extra: Any) -> bytes:
    """An .npz of ``samples`` images whose class is the brightest channel (learnable)."""
    rng = np.random.default_rng(0)
    y = np.arange(samples) % CLASSES
    x = rng.random((samples, *shape), dtype=np.float32) * 0.5
    x[np.arange(samples), y % shape[0]] += 0.5
    buffer = io.BytesIO()
    np.savez(buffer, **{"x": x, "y": y.astype(np.int64), **extra})
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def https_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """HTTPS on 127.0.0.1 serving ``tmp_path/served``, trusted through SSL_CERT_FILE."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(Quiet, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SPLITDNN_CACHE_DIR", str(tmp_path / "cache"))
    try:
        yield f"https://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()


def test_an_https_dataset_is_fetched_checked_and_cached(https_server: tuple[str, Path]) -> None:
    base, served = https_server
    data = dataset()
    (served / "train.npz").write_bytes(data)
    pair = load_dataset(f"{base}/train.npz", sha(data))
    assert pair.host is None and not pair.resizable
    task = pair.local
    assert task.input_shape == SHAPE and task.num_classes == CLASSES
    assert len(task.y_train) == 42 and len(task.y_test) == 18  # 70/30
    assert sorted(np.bincount(task.y_test.numpy())) == [6, 6, 6]  # stratified
    (served / "train.npz").unlink()  # the second load comes from the cache
    assert load_dataset(f"{base}/train.npz", sha(data)).local.input_shape == SHAPE


def test_a_wrong_or_missing_sha256_names_the_option(https_server: tuple[str, Path]) -> None:
    base, served = https_server
    (served / "train.npz").write_bytes(dataset())
    with pytest.raises(CoordinationError, match=r"^--data-sha256: .*does not match"):
        load_dataset(f"{base}/train.npz", "ab" * 32)
    with pytest.raises(CoordinationError, match=r"^--data-sha256: .*needs its sha256"):
        load_dataset(f"{base}/train.npz")
    with pytest.raises(CoordinationError, match=r"^--data: cannot download .*404") as error:
        load_dataset(f"{base}/missing.npz", "ab" * 32)
    assert not isinstance(error.value, DatasetUnavailable), "a 404 is the URL's fault"


def test_a_server_that_cannot_be_reached_is_worth_a_retry(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITDNN_CACHE_DIR", str(tmp_path))
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(DatasetUnavailable, match=r"^--data: cannot download .*refused"):
        load_dataset(f"https://127.0.0.1:{port}/train.npz", "ab" * 32)


def test_a_dataset_on_a_claim_is_read_where_the_claim_is_mounted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITDNN_PVC_ROOT", str(tmp_path))
    data = dataset(x_test=np.zeros((4, *SHAPE), np.float32), y_test=np.array([0, 1, 2, 2]))
    (tmp_path / "datasets" / "digits").mkdir(parents=True)
    (tmp_path / "datasets" / "digits" / "train.npz").write_bytes(data)
    task = load_dataset("pvc://datasets/digits/train.npz").local
    assert len(task.y_train) == 60 and task.y_test.tolist() == [0, 1, 2, 2]
    assert load_dataset("pvc://datasets/digits/train.npz", sha(data)).local.num_classes == 3
    with pytest.raises(CoordinationError, match=r"^--data-sha256: .*does not match"):
        load_dataset("pvc://datasets/digits/train.npz", "0" * 64)
    with pytest.raises(CoordinationError, match=r"^--data: .*is the claim mounted"):
        load_dataset("pvc://datasets/other.npz")
    (tmp_path / "datasets" / "notes.txt").write_text("not an archive")
    with pytest.raises(CoordinationError, match=r"^--data: .*not a NumPy \.npz"):
        load_dataset("pvc://datasets/notes.txt")


X = np.zeros((8, *SHAPE), np.float32)
Y = np.arange(8) % 2


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x": X}, "no array 'y'"),
    ({"x": X, "y": Y, "labels": Y}, "unexpected arrays labels"),
    ({"x": X.astype(np.float64), "y": Y}, "x: expected float32 samples, got float64"),
    ({"x": X[:, 0], "y": Y}, r"x: expected shape \[N, C, H, W\]"),
    ({"x": X, "y": Y.astype(np.float32)}, "y: expected integer labels, got float32"),
    ({"x": X, "y": Y[:5]}, r"y: expected shape \[8\] \(one label per sample of x\)"),
    ({"x": X, "y": Y - 1}, "y: labels must be 0..K-1, found -1"),
    ({"x": np.full_like(X, np.nan), "y": Y}, "x: contains NaN"),
    ({"x": X, "y": Y, "x_test": X}, "both x_test and y_test or neither"),
    ({"x": X, "y": Y, "x_test": X[:, :1], "y_test": Y}, r"x_test has samples of shape \[1,"),
    ({"x": X[:3], "y": Y[:3]}, "too few to split"),
])
def test_bad_arrays_are_refused_naming_them(arrays: dict[str, Any], message: str) -> None:
    with pytest.raises(CoordinationError, match=f"^--data: file.npz: .*{message}"):
        file_task("file.npz", arrays)


def test_samples_must_fit_the_local_model(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLITDNN_PVC_ROOT", str(tmp_path))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "d.npz").write_bytes(dataset())
    pair = load_dataset("pvc://c/d.npz")
    check_fits(pair, SHAPE, 1000)
    with pytest.raises(CoordinationError, match=r"x holds samples of shape \[3, 16, 16\], the "
                                                r"local model takes \[3, 32, 32\]"):
        check_fits(pair, (3, 32, 32), 1000)
    with pytest.raises(CoordinationError, match="labels go up to 2, the local model has 2 "):
        check_fits(pair, SHAPE, 2)
    check_fits(load_dataset("sklearn:digits"), (3, 32, 32), 1000)  # digits are resized


runner = CliRunner()
MODELS = ["--local", "torchvision:resnet18", "--host", "torchvision:mobilenet_v2",
          "--local-input-shape", "1,3,16,16", "--host-input-shape", "1,3,16,16"]


def code_train(data: str, digest: str | None, out: Path, *extra: str) -> tuple[int, str, str]:
    args = ["code-train", *MODELS, "--data", data, "--path", "0,0,0,2", "--epochs", "1",
            "--repeats", "1", "--s", "4", "--local-batch", "8", "--host-batch", "8",
            "--out", str(out), *extra]
    if digest:
        args += ["--data-sha256", digest]
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


def test_code_train_trains_links_on_an_https_dataset(https_server: tuple[str, Path],
                                                     tmp_path: Path) -> None:
    base, served = https_server
    data = dataset()
    (served / "train.npz").write_bytes(data)
    code, out, err = code_train(f"{base}/train.npz", sha(data), tmp_path / "links")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["path"] == [0, 0, 0, 2] and set(result["links"]) == {"entry", "exit"}
    assert 0 <= result["accuracy"] <= 1 and 0 <= result["main_accuracy"] <= 1
    code, _, err = code_train(f"{base}/train.npz", "0" * 64, tmp_path / "bad")
    assert code == 2 and "--data-sha256" in err and "does not match" in err
    (served / "wide.npz").write_bytes(wide := dataset(shape=(3, 24, 24)))
    code, _, err = code_train(f"{base}/wide.npz", sha(wide), tmp_path / "wide")
    assert code == 2 and "--data:" in err and "the local model takes [3, 16, 16]" in err
    code, _, err = code_train(f"{base}/train.npz", "xyz", tmp_path / "short")
    assert code == 2 and "--data-sha256: expected 64 hex digits" in err
