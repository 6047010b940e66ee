#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py says what it measures). Three modes:
#
#   bash bench/gpu_check.sh --prepare    here, with network to the package index: fills the git-ignored
#                                        .gpu/ with what the GPU machine lacks (wheels, the MNIST files)
#                                        and this CPU's epoch times, which the GPU's are compared with
#   bash bench/gpu_check.sh OUT          on the GPU machine, from the repository root with .gpu/ beside
#                                        it: the device-dependent tests on CUDA, then the check
#   bash bench/gpu_check.sh --cpu OUT    the short mode on the CPU (a few batches per epoch), which the
#                                        test suite runs so that the GPU run is never the first
#
#   bash bench/gpu_check.sh --repro OUT  on the GPU machine: the whole default `dvc repro` there, timed,
#                                        in a copy of the project (needs the wheels); a run of its own
#
# Results go to OUT: gpu_check.json, gpu_check.txt (the report), device_tests.txt; repro.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

if [[ ${1:-} == --prepare ]]; then
    set -e
    mkdir -p .gpu/wheels .gpu/mnist
    mirror=${MNIST_MIRROR:-../shared/data/mnist}
    cp "$mirror"/*-ubyte.gz .gpu/mnist/
    # the one sdist-only dependency (of DVC's Hydra): a pure-Python wheel built here
    $python -m pip wheel -q --no-deps -w .gpu/wheels antlr4-python3-runtime==4.9.3
    $python -m pip download -q --no-deps --only-binary=:all: --find-links .gpu/wheels -d .gpu/wheels \
        --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_26_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -r bench/gpu_wheels.txt
    MNIST_MIRROR=.gpu/mnist $python -m bench.gpu_check --cpu-epochs .gpu/cpu_epochs.json
    du -sh .gpu
    exit 0
fi

mode=gpu repro=no
while [[ ${1:-} == --* ]]; do
    case $1 in
        --cpu) mode=cpu ;;
        --repro) repro=yes ;;
        *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
out=${1:?usage: bash bench/gpu_check.sh [--prepare | --cpu OUT | --repro OUT | OUT]}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONUNBUFFERED=1
started=$SECONDS

if [[ -d .gpu/wheels ]] && ! $python -c "import pydantic, mlflow, dvc" 2>/dev/null; then
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vaelab-site .gpu/wheels/*.whl
    export PYTHONPATH=/tmp/vaelab-site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/vaelab-site/bin:$PATH
fi
[[ -d .gpu/mnist && -z ${MNIST_MIRROR:-} ]] && export MNIST_MIRROR=.gpu/mnist

status=0
device=cuda check_args=("$out")
[[ $mode == cpu ]] && device=cpu check_args=(--cpu "$out")
if [[ $repro == no ]]; then
    echo "== device-dependent tests on $device"
    VAELAB_TEST_DEVICE=$device $python -m pytest -q -m device -p no:cacheprovider 2>&1 | tee "$out/device_tests.txt" || status=1
    echo "== the check"
    $python -m bench.gpu_check "${check_args[@]}" 2>&1 | tee "$out/gpu_check.txt" || status=1
else
    echo "== the whole default dvc repro on $device"
    copy=$(mktemp -d)
    git ls-files -z 2>/dev/null | xargs -0 -I{} cp --parents {} "$copy" 2>/dev/null || cp -r dvc.yaml dvc.lock params.yaml stages vaelab .dvc .dvcignore .gitignore "$copy"
    (
        cd "$copy" && rm -rf data/MNIST models reports comparison dvc.lock
        { git init -q && git add -A && git -c user.name=gpu -c user.email=gpu@vaelab.invalid commit -qm copy; } 2>/dev/null \
            || dvc config core.no_scm true
        dvc config core.analytics false
        begin=$SECONDS rc=0
        MNIST_MIRROR=$OLDPWD/.gpu/mnist timeout "${REPRO_TIMEOUT:-300}" dvc repro || rc=$?
        echo "dvc repro exited $rc after $((SECONDS - begin)) s"
        cp comparison/README.md "$out/repro_report.md" 2>/dev/null
        exit $rc
    ) 2>&1 | tee "$out/repro.txt" || status=1
fi
echo "gpu_check.sh took $((SECONDS - started)) s"
exit $status
