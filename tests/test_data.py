"""Fetching MNIST: from a directory or URL mirror, checksums verified, all or nothing."""

import functools
import hashlib
import http.server
import socket
import threading

import pytest
import torch

from vaelab.data import fetch_mnist, load_split, mirror_from_env
from vaelab.errors import VaelabError
from tests.conftest import N_TEST, N_TRAIN


def test_a_directory_mirror_is_fetched_verified_and_readable(tmp_path, mirror):
    directory, md5 = mirror
    fetch_mnist(tmp_path, str(directory), md5)

    train, test = load_split(True, torch.device("cpu"), tmp_path), load_split(False, torch.device("cpu"), tmp_path)

    assert train.images.shape == (N_TRAIN, 784) and len(test) == N_TEST
    assert 0 <= float(train.images.min()) and float(train.images.max()) <= 1
    assert torch.equal(test.labels, torch.arange(N_TEST) % 10)
    assert [p.name for p in tmp_path.iterdir()] == ["MNIST"]


def test_a_url_mirror_is_fetched(tmp_path, mirror):
    directory, md5 = mirror
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fetch_mnist(tmp_path, f"http://127.0.0.1:{server.server_port}/", md5)
    finally:
        server.shutdown()
    assert len(load_split(False, torch.device("cpu"), tmp_path)) == N_TEST


def test_a_checksum_mismatch_names_the_file_and_both_checksums_and_leaves_nothing(tmp_path, mirror):
    directory, md5 = mirror
    wrong = {**md5, "t10k-labels-idx1-ubyte.gz": "0" * 32}

    with pytest.raises(VaelabError) as error:
        fetch_mnist(tmp_path / "data", str(directory), wrong)

    assert f"t10k-labels-idx1-ubyte.gz from {directory}" in str(error.value)
    assert f"md5 {md5['t10k-labels-idx1-ubyte.gz']} does not match the expected {'0' * 32}" in str(error.value)
    assert list((tmp_path / "data").iterdir()) == []


def test_a_failed_fetch_keeps_the_previous_good_copy(tmp_path, mirror):
    directory, md5 = mirror
    fetch_mnist(tmp_path, str(directory), md5)
    with pytest.raises(VaelabError):
        fetch_mnist(tmp_path, str(directory), {**md5, "train-images-idx3-ubyte.gz": "0" * 32})
    assert len(load_split(True, torch.device("cpu"), tmp_path)) == N_TRAIN


def test_a_truncated_gz_is_refused(tmp_path, mirror):
    directory, md5 = mirror
    broken = tmp_path / "broken"
    broken.mkdir()
    for source in directory.iterdir():
        (broken / source.name).write_bytes(source.read_bytes())
    cut = broken / "train-images-idx3-ubyte.gz"
    cut.write_bytes(cut.read_bytes()[:200])
    # even a mirror that publishes the truncated file's own checksum cannot pass it off as data
    truncated_md5 = {**md5, cut.name: hashlib.md5(cut.read_bytes()).hexdigest()}

    with pytest.raises(VaelabError, match="train-images-idx3-ubyte.gz .* cannot be decompressed"):
        fetch_mnist(tmp_path / "data", str(broken), truncated_md5)
    assert list((tmp_path / "data").iterdir()) == []


def test_a_mirror_directory_that_does_not_exist_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("MNIST_MIRROR", str(tmp_path / "nowhere"))
    with pytest.raises(VaelabError, match=r"MNIST_MIRROR=.*nowhere is not a directory"):
        mirror_from_env()


def test_a_relative_mirror_is_found_from_the_real_repository(monkeypatch, tmp_path):
    (tmp_path / "mnist").mkdir()
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("MNIST_MIRROR", "mnist")
    assert mirror_from_env() == str(tmp_path / "mnist")


def test_a_mirror_url_that_does_not_answer_says_so(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(VaelabError, match=f"cannot download train-images-idx3-ubyte.gz .*127.0.0.1:{port}.*MNIST_MIRROR"):
        fetch_mnist(tmp_path / "data", f"http://127.0.0.1:{port}/", {})
    assert list((tmp_path / "data").iterdir()) == []
