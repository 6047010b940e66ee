#!/usr/bin/env bash
# One experiment of a sweep, in a clone of its own, on whichever machine runs it: a Ray task sent by
# `python -m vaelab.sweep`, or a Slurm array job (team/sweep.sbatch). Several experiments never share
# a workspace: DVC's locks would make them wait on, or fail, each other.
#
#   bash team/experiment.sh NAME GIT_URL COMMIT [-S PARAM=VALUE ...]
#
# It clones GIT_URL at COMMIT (full history: `dvc exp push` needs the baseline), pulls the baseline's
# data and results from the DVC remote committed there, runs `dvc exp run -n NAME -S ...`, and pushes the experiment back (git refs
# to GIT_URL, outputs to the DVC remote). The stages log to MLFLOW_TRACKING_URI: the team server.
set -euo pipefail
name=$1 url=$2 commit=$3
shift 3
if [[ ${MLFLOW_TRACKING_URI:-} != http://* && ${MLFLOW_TRACKING_URI:-} != https://* ]]; then
    echo "team/experiment.sh: set MLFLOW_TRACKING_URI to the team's MLflow server, http(s)://HOST:PORT: runs logged in this temporary clone would be lost" >&2
    exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/vaelab-experiment-$name-XXXXXX")
trap 'rm -rf "$work"' EXIT
git clone -q "$url" "$work/repo"
cd "$work/repo"
if ! git checkout -q "$commit" 2>/dev/null; then
    echo "team/experiment.sh: commit $commit is not in $url: git push it first" >&2
    exit 2
fi
dvc pull --allow-missing  # what the baseline lacks, the experiment produces
dvc exp run -n "$name" "$@"
dvc exp push origin "$name"
