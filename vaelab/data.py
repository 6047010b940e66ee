"""MNIST: fetching the official files (or a mirror's), verifying them, and holding them in memory."""

import os
import shutil
import socket
import urllib.error
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import MNIST
from torchvision.datasets.utils import calculate_md5, download_url, extract_archive

from vaelab.errors import VaelabError
from vaelab.paths import atomic_path, clean_scratch

DATA_ROOT = Path("data")  # MNIST(root=DATA_ROOT) reads DATA_ROOT/MNIST/raw
DOWNLOAD_TIMEOUT_SECONDS = 30.0
N_CLASSES = 10
N_PIXELS = 28 * 28


def mirror_from_env() -> str | None:
    """MNIST_MIRROR: a directory or URL holding the four .gz files; relative to the repository."""
    mirror = os.environ.get("MNIST_MIRROR", "").strip()
    if not mirror:
        return None
    if mirror.startswith("file://"):
        mirror = mirror.removeprefix("file://")
    if "://" in mirror:
        return mirror.rstrip("/") + "/"
    # DVC runs queued experiments in a temporary copy; DVC_ROOT names the real repository.
    path = Path(os.environ.get("DVC_ROOT", ".")) / mirror
    if not path.is_dir():
        raise VaelabError(
            f"MNIST_MIRROR={mirror} is not a directory; point it at a directory or URL holding the four MNIST .gz files"
        )
    return str(path.resolve())


def fetch_mnist(root: Path, mirror: str | None, md5: dict[str, str], timeout: float = DOWNLOAD_TIMEOUT_SECONDS) -> None:
    """Fetch, verify and extract the four MNIST files into root/MNIST/raw, all or nothing.

    Files land in a temporary directory first (vaelab.paths.scratch_path: where neither git nor
    DVC looks), which replaces root/MNIST only once every checksum has matched, so an
    interrupted or failed fetch never leaves a file that a later stage could take as valid.
    A server that does not answer for `timeout` seconds counts as failed.
    """
    final = root / "MNIST"
    clean_scratch(root)
    with atomic_path(final) as staging:
        raw = staging / "raw"
        raw.mkdir(parents=True)
        for filename, official_md5 in MNIST.resources:
            source = _fetch_one(filename, raw, mirror, timeout)
            expected = md5.get(filename, official_md5)
            actual = calculate_md5(raw / filename)
            if actual != expected:
                raise VaelabError(
                    f"{filename} from {source}: md5 {actual} does not match the expected {expected}; "
                    "the file is damaged or not MNIST, fetch it again or fix the mirror"
                )
            try:
                extract_archive(str(raw / filename), str(raw))
            except (OSError, EOFError) as err:
                raise VaelabError(f"{filename} from {source} cannot be decompressed ({err}); fetch it again") from None
        shutil.rmtree(final, ignore_errors=True)


def _fetch_one(filename: str, dest: Path, mirror: str | None, timeout: float) -> str:
    if mirror and "://" not in mirror:
        source = Path(mirror) / filename
        if not source.is_file():
            raise VaelabError(f"the mirror {mirror} has no {filename}; put the four MNIST .gz files there")
        shutil.copyfile(source, dest / filename)
        return str(source)
    errors = []
    for base in [mirror] if mirror else MNIST.mirrors:
        url = base + filename
        try:
            with socket_timeout(timeout):  # torchvision's download waits forever on a server that never answers
                download_url(url, str(dest), filename)
            return url
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            timed_out = isinstance(err, TimeoutError) or isinstance(reason, TimeoutError)
            errors.append(f"{url}: {f'no answer within {timeout:g} s (data.timeout_seconds)' if timed_out else reason}")
    raise VaelabError(
        f"cannot download {filename} ({'; '.join(errors)}); without internet, set MNIST_MIRROR to a local copy"
    )


@contextmanager
def socket_timeout(seconds: float):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@dataclass(frozen=True)
class Split:
    """One MNIST split held in memory: pixels in [0, 1], flattened, and integer labels."""

    images: torch.Tensor  # (N, 784) float32
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def onehot(self) -> torch.Tensor:
        return F.one_hot(self.labels, N_CLASSES).to(self.images.dtype)

    def first(self, n: int) -> "Split":
        return Split(self.images[:n], self.labels[:n])

    def binarized(self, seed: int) -> "Split":
        """Binary pixels b ~ Bernoulli(x), the same for a seed on every device: b = 1[u < x] with u
        uniform on [0, 1), drawn on the CPU (so a black pixel stays 0, a white one 1)."""
        uniforms = torch.rand(self.images.shape, generator=torch.Generator().manual_seed(seed))
        return Split(binarize(self.images, uniforms.to(self.images.device)), self.labels)


def binarize(images: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] -> binary pixels, P(b = 1) = x for uniforms on [0, 1)."""
    return (uniforms < images).to(images.dtype)


def load_split(train: bool, device: torch.device, root: Path = DATA_ROOT, binarize_seed: int | None = None) -> Split:
    """One split of the MNIST files under root; with binarize_seed, binarised once by Split.binarized."""
    try:
        mnist = MNIST(str(root), train=train, download=False)
    except RuntimeError:
        raise VaelabError(f"no MNIST data under {root}/MNIST/raw; run the download stage: dvc repro download") from None
    images = mnist.data.reshape(len(mnist.data), N_PIXELS).to(device=device, dtype=torch.float32) / 255
    split = Split(images, mnist.targets.to(device))
    return split if binarize_seed is None else split.binarized(binarize_seed)
