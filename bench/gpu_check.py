"""The GPU check: vaelab's device-dependent code run on CUDA, timed against the hardware's floor.

Run through bench/gpu_check.sh, which also runs the device-dependent tests:

    bash bench/gpu_check.sh OUT          # on a machine with a CUDA GPU: the full check
    bash bench/gpu_check.sh --cpu OUT    # the short mode, on the CPU: a few batches per epoch

For every variant of params.yaml, through the train stage's own Trainer: epochs with the training
step compiled and replayed from CUDA graphs (the train stage's way), the same without compiling,
and epochs of eager steps, from the same initial weights; the first
epoch's loss against the same epoch on the CPU; one epoch's steps with any host synchronisation an
error; the epoch's GEMMs alone (bench/floor.py). Then the IWAE bound at the literature's k = 5000 on
the 10,000 test images, and two runs of `vae` with the same seed in fresh processes, with and without
torch.use_deterministic_algorithms, compared bit for bit. Writes OUT/gpu_check.json; prints a report.

The CPU figures the GPU is compared with are measured on the development machine by
`python -m bench.gpu_check --cpu-epochs .gpu/cpu_epochs.json` (bench/gpu_check.sh --prepare).
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from bench.floor import gemm_floor, linear_shapes
from vaelab.data import Split, fetch_mnist, load_split, mirror_from_env
from vaelab.metrics import test_elbo, test_iwae
from vaelab.models import VAE
from vaelab.params import Params, load_params
from vaelab.train import Trainer

CPU_EPOCHS_FILE = Path(".gpu/cpu_epochs.json")
LOSS_TOLERANCE = 0.03  # relative: CPU and GPU draw different noise, so only sampling noise separates them
SHORT_BATCHES = 3  # the short mode's full batches per epoch (plus a partial one)
TIMED_EPOCHS = 3  # graph epochs per variant; the first captures the graphs
TARGET_SPEEDUP, TARGET_FLOOR_RATIO = 10, 3  # the GPU issue's targets for vae


def load_data(device: torch.device, root: Path, short: bool, params: Params) -> tuple[Split, Split]:
    fetch_mnist(root, mirror_from_env(), params.data.md5)
    train, test = load_split(True, device, root), load_split(False, device, root)
    if short:
        n_train = SHORT_BATCHES * params.batch_size + params.batch_size // 2
        train = Split(train.images[:n_train], train.labels[:n_train])
        test = Split(test.images[: 2 * params.evaluate.batch_size], test.labels[: 2 * params.evaluate.batch_size])
    return train, test


def new_trainer(params: Params, name: str, train: Split, test: Split, **options) -> Trainer:
    """As the train stage builds it: the initial weights from the seed, drawn on the CPU, then moved."""
    variant = params.variant(name)
    torch.manual_seed(params.seed)
    model = VAE.for_variant(variant).to(train.images.device)
    return Trainer(model, variant, params, train, test, **options)


def synced_seconds(fn) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def attempt(report: dict, key: str, fn) -> object:
    """Run one section; a failure is recorded under report[key]['error'] and the check goes on."""
    try:
        result = fn()
        report[key] = result
        return result
    except Exception as err:  # the check reports every section it can, whatever broke
        traceback.print_exc()
        report[key] = {"error": f"{type(err).__name__}: {err}"}
        return None


# ---------------------------------------------------------------- per variant


def check_variant(params: Params, name: str, train: Split, test: Split, cpu_train: Split, cpu_test: Split) -> dict:
    device = train.images.device
    result = {}
    graphs = new_trainer(params, name, train, test)
    records = [graphs.train_epoch() for _ in range(TIMED_EPOCHS)]
    result["graph_epoch_seconds"] = [r["epoch_seconds"] for r in records]
    result["graphs_used"], result["compiled"] = graphs.cuda_graphs, graphs.compiled
    result["first_epoch_loss"] = records[0]["train_loss"]
    if device.type == "cuda":
        uncompiled = new_trainer(params, name, train, test, compiled=False)
        result["uncompiled_epoch_seconds"] = [uncompiled.train_epoch()["epoch_seconds"] for _ in range(TIMED_EPOCHS)]
        eager = new_trainer(params, name, train, test, cuda_graphs=False)
        eager_records = [eager.train_epoch() for _ in range(2)]
        result["eager_epoch_seconds"] = [r["epoch_seconds"] for r in eager_records]
        result["eager_first_epoch_loss"] = eager_records[0]["train_loss"]
        # a CPU epoch from the same weights: different random numbers, the same math
        cpu_record = new_trainer(params, name, cpu_train, cpu_test).train_epoch()
        result["cpu_first_epoch_loss"] = cpu_record["train_loss"]
        result["loss_gap_vs_cpu"] = records[0]["train_loss"] / cpu_record["train_loss"] - 1
        result["loss_matches_cpu"] = abs(result["loss_gap_vs_cpu"]) <= LOSS_TOLERANCE
        result["host_syncs_in_steps"] = steps_without_sync(graphs)
        if name == "vae":
            attempt(result, "kernel_profile", lambda: kernel_profile(graphs))
    steady = records[1:] or records
    result["epoch_seconds"] = statistics.median(r["epoch_seconds"] for r in steady)
    model = graphs.model
    result["gemm_floor_seconds"] = gemm_floor(linear_shapes(model), len(train), params.batch_size, device)
    result["model"] = model
    return result


def steps_without_sync(trainer: Trainer) -> str:
    """One epoch's training steps with CUDA's sync debug mode set to raise on any host synchronisation."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_steps(1.0)
        outcome = "none"
    except RuntimeError as err:
        outcome = f"synchronised: {err}".splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return outcome


def kernel_profile(trainer: Trainer) -> dict:
    """Where one epoch of replayed steps spends the GPU's time: its kernels, by kind, per step."""
    from torch.profiler import ProfilerActivity, profile

    trainer.train_steps(1.0)  # any capture happens before the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        trainer.train_steps(1.0)
        torch.cuda.synchronize()
    steps = trainer.steps_per_epoch
    kinds = {"GEMM": 0.0, "Adam": 0.0, "other (elementwise, reductions, RNG, copies)": 0.0}
    adam_tags = ("adam", "foreach", "triton_for")  # the fused kernel; Inductor's foreach kernels
    counts = dict.fromkeys(kinds, 0)
    top = []
    for event in prof.key_averages():
        if event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        seconds = event.self_device_time_total / 1e6
        name = event.key.lower()
        kind = "GEMM" if any(tag in name for tag in ("gemm", "gemv", "splitk", "xmma", "cutlass")) else (
            "Adam" if any(tag in name for tag in adam_tags) else "other (elementwise, reductions, RNG, copies)")
        kinds[kind] += seconds
        counts[kind] += event.count
        top.append((seconds, event.count, event.key[:70]))
    top.sort(reverse=True)
    return {
        "kernels_per_step": sum(counts.values()) / steps,
        "seconds_by_kind": kinds,
        "kernels_per_step_by_kind": {kind: n / steps for kind, n in counts.items()},
        "top_kernels": [{"seconds": t, "count": n, "name": name} for t, n, name in top[:10]],
    }


# ---------------------------------------------------------------- determinism


def repeat_run(data_root: Path, out: Path, deterministic: bool, short: bool) -> None:
    """In a fresh process: train `vae` for two epochs from the seed and save what it produced."""
    if deterministic:
        torch.use_deterministic_algorithms(True)
    params = load_params()
    device = torch.device("cuda" if not short else "cpu")
    train, test = load_data(device, data_root, short, params)
    trainer = new_trainer(params, "vae", train, test)
    records = [trainer.train_epoch() for _ in range(2)]
    torch.save(
        {
            "records": [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in records],
            "seconds": [r["epoch_seconds"] for r in records],
            "weights": {k: v.cpu() for k, v in trainer.model.state_dict().items()},
        },
        out,
    )


def check_determinism(data_root: Path, work: Path, short: bool) -> dict:
    """Two same-seed runs of `vae` per setting, each in its own process; are they bit-identical?"""
    settings = {
        "default": {},
        "deterministic": {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"},
    }
    result = {}
    for setting, extra_env in settings.items():
        env = {**os.environ, **extra_env}
        if short:
            env["OMP_NUM_THREADS"] = "1"  # the CPU's sums depend on the thread count; the short mode checks the plumbing
        outputs = []
        for i in range(2):
            path = work / f"{setting}-{i}.pt"
            command = [sys.executable, "-m", "bench.gpu_check", "--repeat-run", str(path), "--data-root", str(data_root)]
            command += ["--deterministic"] if setting == "deterministic" else []
            command += ["--cpu"] if short else []
            subprocess.run(command, env=env, check=True)
            outputs.append(torch.load(path, weights_only=True))
        first, second = outputs
        result[setting] = {
            "records_identical": first["records"] == second["records"],
            "weights_identical": all(torch.equal(first["weights"][k], second["weights"][k]) for k in first["weights"]),
            "largest_weight_difference": max(float((first["weights"][k] - second["weights"][k]).abs().max()) for k in first["weights"]),
            "second_epoch_seconds": statistics.median(o["seconds"][1] for o in outputs),
            "final_train_loss": [o["records"][-1]["train_loss"] for o in outputs],
        }
    result["deterministic_cost"] = result["deterministic"]["second_epoch_seconds"] / result["default"]["second_epoch_seconds"]
    return result


# ---------------------------------------------------------------- CPU reference figures


def measure_cpu_epochs(path: Path, repeats: int = 3) -> None:
    """One full epoch of each variant on this machine's CPU, as the train stage runs it; saved for the GPU check."""
    from vaelab.device import pick_device

    device = pick_device()
    params = load_params()
    with tempfile.TemporaryDirectory() as tmp:
        train, test = load_data(device, Path(tmp), False, params)
        names = list(params.pipeline)
        seconds = {name: [] for name in names}
        for _ in range(repeats):  # interleaved, so the machine's noise spreads over every variant
            for name in names:
                seconds[name].append(new_trainer(params, name, train, test).train_epoch()["epoch_seconds"])
    figures = {
        "machine": f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "repeats": repeats,
        "epoch_seconds": {name: statistics.median(s) for name, s in seconds.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


# ---------------------------------------------------------------- report


def print_report(report: dict) -> None:
    print(f"\n== vaelab GPU check on {report['device']} (torch {report['torch']}), {report['mode']} mode ==")
    cpu = report.get("cpu_reference") or {}
    cpu_seconds = cpu.get("epoch_seconds", {})
    if cpu:
        print(f"CPU figures: {cpu['machine']}, {cpu['threads']} threads, torch {cpu['torch']}, load {cpu['load_average']:.2f}")
    print(f"\none epoch of {report['n_train']} training images (+ the test ELBO on {report['n_test']}), seconds:")
    print("  vaelab: the train stage's epoch (on a GPU the step compiled and replayed from CUDA graphs); graphs: the")
    print("  same not compiled; eager: neither; CPU: the development machine's vaelab epoch; losses: the first")
    print("  epoch's mean train loss here and on this machine's CPU")
    print(f"  {'variant':<11s} {'vaelab':>8s} {'graphs':>8s} {'eager':>8s} {'eager/vaelab':>13s} {'GEMM floor':>11s} {'vaelab/floor':>13s} "
          f"{'CPU':>7s} {'CPU/vaelab':>11s}  {'loss':>9s} {'loss CPU':>9s} {'gap':>7s}  host syncs in steps")
    for name, v in report["variants"].items():
        if "error" in v:
            print(f"  {name:<11s} ERROR {v['error']}")
            continue
        eager = statistics.median(v["eager_epoch_seconds"]) if "eager_epoch_seconds" in v else math.nan
        uncompiled = statistics.median(v["uncompiled_epoch_seconds"][1:]) if "uncompiled_epoch_seconds" in v else math.nan
        cpu_epoch = cpu_seconds.get(name, math.nan)
        print(f"  {name:<11s} {v['epoch_seconds']:8.3f} {uncompiled:8.3f} {eager:8.3f} {eager / v['epoch_seconds']:13.1f} "
              f"{v['gemm_floor_seconds']:11.4f} {v['epoch_seconds'] / v['gemm_floor_seconds']:13.1f} "
              f"{cpu_epoch:7.2f} {cpu_epoch / v['epoch_seconds']:11.1f}  {v['first_epoch_loss']:9.3f} "
              f"{v.get('cpu_first_epoch_loss', math.nan):9.3f} {v.get('loss_gap_vs_cpu', math.nan):+7.2%}  "
              f"{v.get('host_syncs_in_steps', 'n/a (CPU)')}")
    profiled = report["variants"].get("vae", {}).get("kernel_profile", {})
    if "error" in profiled:
        print(f"\nkernel profile: ERROR {profiled['error']}")
    elif profiled:
        print(f"\nvae, one epoch of replayed steps under the profiler: {profiled['kernels_per_step']:.0f} kernels per step")
        for kind, seconds in profiled["seconds_by_kind"].items():
            print(f"  {kind:<46s} {seconds:7.4f} s  {profiled['kernels_per_step_by_kind'][kind]:5.1f} kernels per step")
        for kernel in profiled["top_kernels"]:
            print(f"  {kernel['seconds']:7.4f} s {kernel['count']:6d}x  {kernel['name']}")
    iwae = report.get("iwae", {})
    if "error" in iwae:
        print(f"\nIWAE: ERROR {iwae['error']}")
    elif iwae:
        print(f"\nIWAE bound, k={iwae['k']}, {iwae['n_images']} test images, vae trained above: "
              f"{iwae['bound']:.3f} nats per image (test ELBO {iwae['elbo']:.3f}) in {iwae['seconds']:.1f} s")
    det = report.get("determinism", {})
    if "error" in det:
        print(f"\ndeterminism: ERROR {det['error']}")
    elif det:
        print("\ntwo runs of vae (2 epochs) with the same seed, each in a fresh process:")
        for setting in ("default", "deterministic"):
            d = det[setting]
            print(f"  {setting:<14s} records identical: {d['records_identical']}, weights identical: {d['weights_identical']} "
                  f"(largest difference {d['largest_weight_difference']:.3g}), epoch {d['second_epoch_seconds']:.3f} s")
        print(f"  cost of torch.use_deterministic_algorithms(True) + CUBLAS_WORKSPACE_CONFIG=:4096:8: "
              f"{det['deterministic_cost']:.2f}x the epoch time")
    first = {name: v["graph_epoch_seconds"][0] for name, v in report["variants"].items() if "graph_epoch_seconds" in v}
    print("\nthe first epoch, compiling and capturing included, seconds: " + ", ".join(f"{n} {t:.1f}" for n, t in first.items()))
    for line in report["summary"]:
        print(line)


def summarise(report: dict) -> list[str]:
    vae = report["variants"].get("vae", {})
    cpu = (report.get("cpu_reference") or {}).get("epoch_seconds", {})
    if "epoch_seconds" not in vae:
        return ["vae: no figures"]
    lines = [f"\nvae_epoch_seconds={vae['epoch_seconds']:.4f} gemm_floor_seconds={vae['gemm_floor_seconds']:.4f}"]
    ratio_floor = vae["epoch_seconds"] / vae["gemm_floor_seconds"]
    line = f"epoch_over_floor={ratio_floor:.2f} (target <= {TARGET_FLOOR_RATIO})"
    if "vae" in cpu:
        line += f" cpu_over_gpu={cpu['vae'] / vae['epoch_seconds']:.1f} (target >= {TARGET_SPEEDUP})"
    if "eager_epoch_seconds" in vae:
        line += f" eager_over_vaelab={statistics.median(vae['eager_epoch_seconds']) / vae['epoch_seconds']:.1f}"
    if "uncompiled_epoch_seconds" in vae:
        line += f" uncompiled_over_vaelab={statistics.median(vae['uncompiled_epoch_seconds'][1:]) / vae['epoch_seconds']:.2f}"
    lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, help="folder for gpu_check.json")
    parser.add_argument("--cpu", action="store_true", help="the short mode, on the CPU")
    parser.add_argument("--cpu-epochs", type=Path, help="measure this CPU's epoch per variant into this file, and stop")
    parser.add_argument("--repeat-run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_epochs:
        return measure_cpu_epochs(args.cpu_epochs)
    if args.repeat_run:
        return repeat_run(args.data_root, args.repeat_run, args.deterministic, args.cpu)
    if not args.out:
        parser.error("give the folder for the results")
    if not args.cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; `bash bench/gpu_check.sh --cpu OUT` runs the short mode on the CPU")

    short = args.cpu
    device = torch.device("cpu" if short else "cuda")
    params = load_params()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "mode": "short (CPU)" if short else "full",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else cpu_model(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        # a full epoch's time on the development CPU: comparable with a full epoch here, not with the short mode's
        "cpu_reference": json.loads(CPU_EPOCHS_FILE.read_text()) if CPU_EPOCHS_FILE.exists() and not short else None,
        "variants": {},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data_root = Path(tmp) / "data"
        train, test = load_data(device, data_root, short, params)
        cpu_train, cpu_test = (Split(s.images.cpu(), s.labels.cpu()) for s in (train, test))
        report["n_train"], report["n_test"] = len(train), len(test)
        models = {}
        for name in params.pipeline:
            print(f"{name}: training on {device} ...", flush=True)
            result = attempt(report["variants"], name, lambda: check_variant(params, name, train, test, cpu_train, cpu_test))
            if result:
                models[name] = result.pop("model")

        def iwae() -> dict:
            k = 10 if short else 5000
            model, batch_size = models["vae"], params.evaluate.batch_size
            seconds, bound = synced_seconds(lambda: test_iwae(model, test, k, batch_size, params.seed))
            elbo = test_elbo(model, test, batch_size, params.seed)["elbo"]
            return {"k": k, "n_images": len(test), "bound": bound, "seconds": seconds, "elbo": elbo}

        print("IWAE ...", flush=True)
        attempt(report, "iwae", iwae)
        print("determinism ...", flush=True)
        attempt(report, "determinism", lambda: check_determinism(data_root, Path(tmp), short))
    report["seconds"] = time.perf_counter() - started
    report["summary"] = summarise(report)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    failed = [name for name, v in report["variants"].items() if "error" in v or v.get("loss_matches_cpu") is False]
    failed += [key for key in ("iwae", "determinism") if "error" in report[key]]
    if failed:
        sys.exit(f"gpu_check: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
