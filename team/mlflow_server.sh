#!/usr/bin/env bash
# The team's MLflow tracking server: runs, params and metrics in PostgreSQL, artifacts (images,
# models) in S3 through the server's proxy. Teammates need only MLFLOW_TRACKING_URI; the S3
# credentials stay on the server.
#
#   VAELAB_DB_URI=postgresql+psycopg2://USER:PASSWORD@HOST:5432/DATABASE \
#   VAELAB_ARTIFACTS=s3://BUCKET/mlflow \
#   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \
#   MLFLOW_S3_ENDPOINT_URL=http://HOST:8333 \
#   bash team/mlflow_server.sh [mlflow server options, e.g. --host 0.0.0.0 --port 5000 --allowed-hosts mlflow.lab:5000]
#
# MLFLOW_S3_ENDPOINT_URL names an on-premises S3 (SeaweedFS, MinIO); leave it unset on AWS.
# Without options it listens on 127.0.0.1:5000 only. README.md, "Working as a team", says more.
set -euo pipefail
db=${VAELAB_DB_URI:?"set VAELAB_DB_URI to the PostgreSQL database, postgresql+psycopg2://USER:PASSWORD@HOST:PORT/DATABASE"}
artifacts=${VAELAB_ARTIFACTS:?"set VAELAB_ARTIFACTS to the S3 folder for artifacts, s3://BUCKET/PATH"}
if [[ $db != postgresql+psycopg2://* ]]; then
    # the driver installed with the requirements; SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3,
    # which is not installed: the server would die at start
    echo "team/mlflow_server.sh: VAELAB_DB_URI must start with postgresql+psycopg2://, not ${db%%://*}://" >&2
    exit 2
fi
exec mlflow server --backend-store-uri "$db" --serve-artifacts --artifacts-destination "$artifacts" \
    --host 127.0.0.1 --port 5000 "$@"
