"""Stage download: the four MNIST files into data/MNIST, checksums verified.

The official mirrors by default; MNIST_MIRROR (a directory or URL) points at a copy instead.
"""

from vaelab.data import DATA_ROOT, fetch_mnist, mirror_from_env
from vaelab.errors import run_stage
from vaelab.params import load_params


def main() -> None:
    params = load_params()
    fetch_mnist(DATA_ROOT, mirror_from_env(), params.data.md5, params.data.timeout_seconds)


if __name__ == "__main__":
    run_stage(main)
