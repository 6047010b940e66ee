"""Where a stage computes: the GPU when there is one, else its fair share of the CPU's cores."""

import fcntl
import os
import tempfile
from pathlib import Path

import torch


class CpuShare:
    """Sizes this process's thread pool to its share of the cores.

    Stages running at once on one machine (`dvc queue start -j 2`) would otherwise
    each start a thread per core and fight over them. Each process holds a lock on one slot file;
    the number of held slots is the number of processes sharing the cores. rebalance() re-reads it,
    so a process speeds up again when its neighbour finishes. OMP_NUM_THREADS, if set, wins.
    """

    def __init__(self, slots_dir: Path = Path(tempfile.gettempdir()) / "vaelab-cpu-slots"):
        self.cores = len(os.sched_getaffinity(0))
        self.fixed = "OMP_NUM_THREADS" in os.environ
        slots_dir.mkdir(exist_ok=True)
        self.slots = [slots_dir / f"slot-{i}" for i in range(self.cores)]
        self.held = None
        for slot in self.slots:
            handle = open(slot, "a")
            if self._try_lock(handle):
                self.held = handle  # kept open: the lock lasts as long as the process
                break
            handle.close()

    @staticmethod
    def _try_lock(handle) -> bool:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def sharers(self) -> int:
        others = 0
        for slot in self.slots:
            if self.held and slot == Path(self.held.name):
                continue
            with open(slot, "a") as handle:
                if self._try_lock(handle):
                    fcntl.flock(handle, fcntl.LOCK_UN)
                else:
                    others += 1
        return others + 1

    def rebalance(self) -> int:
        """Set and return the thread count for the processes training now."""
        if not self.fixed:
            torch.set_num_threads(max(1, self.cores // self.sharers()))
        return torch.get_num_threads()


_cpu_share: CpuShare | None = None


def pick_device() -> torch.device:
    """CUDA when present; else the CPU, this process's threads sized to its share of the cores.

    Call it before any computation: it also sets how the CPU treats tiny numbers.

    The share is held until the process ends, so stages running at once count each other.
    """
    global _cpu_share
    if torch.cuda.is_available():
        return torch.device("cuda")
    # Adam's running means of rarely used weights decay through float32's subnormal range (below
    # 1.2e-38), where each operation costs the CPU many times more: later epochs ran ~20% slower.
    # Flush them to zero. Set before the first parallel op: worker threads inherit it when created.
    torch.set_flush_denormal(True)
    if _cpu_share is None:
        _cpu_share = CpuShare()
    _cpu_share.rebalance()
    return torch.device("cpu")


def rebalance_threads() -> int:
    """Re-size the thread pool to the processes computing now (a long stage calls it now and then)."""
    return _cpu_share.rebalance() if _cpu_share else torch.get_num_threads()
