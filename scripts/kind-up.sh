#!/usr/bin/env bash
# A local pretrain cluster on kind (one node, CPU only):
#   1. creates the kind cluster (KIND_CLUSTER, default "pretrain") unless it exists;
#   2. installs Kubeflow Pipelines 2.17.0, Kubeflow Trainer v2.3.0 with its runtimes, the Training
#      Operator v1.9.0 (INSTALL_TRAINING_OPERATOR=0 skips it) and the PodMonitor CRD, all from
#      the pinned remote kustomizations in manifests/install/ (needs network);
#   3. builds the CPU image and loads it into the kind node (SKIP_BUILD=1 skips both);
#   4. creates the Secret pretrain-s3 with random credentials in the namespaces pretrain and
#      kubeflow (an existing Secret is kept), applies manifests/overlays/kind (MinIO) and waits
#      for MinIO and the bucket Job;
#   5. prints the command that forwards the KFP UI to localhost.
# Needs: docker (a running engine), kind, kubectl, openssl. Safe to re-run.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CLUSTER="${KIND_CLUSTER:-pretrain}"
NAMESPACE=pretrain
KFP_NAMESPACE=kubeflow
SECRET=pretrain-s3
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)"
IMAGE="ghcr.io/pretrain-dev/pretrain:${VERSION}"
ENDPOINT="http://minio.${NAMESPACE}.svc.cluster.local:9000"

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'kind-up: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl openssl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is required (see manifests/README.md)"
done
docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed)"

if kind get clusters | grep -qx "$CLUSTER"; then
  log "kind cluster $CLUSTER exists"
else
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 120s
fi
KUBECTL=(kubectl --context "kind-${CLUSTER}")

log "Kubeflow Pipelines 2.17.0"
"${KUBECTL[@]}" apply -k manifests/install/kfp-cluster-scoped
"${KUBECTL[@]}" wait --for condition=established --timeout=120s crd/applications.app.k8s.io
"${KUBECTL[@]}" apply -k manifests/install/kfp

log "Kubeflow Trainer v2.3.0"
"${KUBECTL[@]}" apply --server-side -k manifests/install/trainer
"${KUBECTL[@]}" wait --for condition=established --timeout=120s \
  crd/trainjobs.trainer.kubeflow.org crd/clustertrainingruntimes.trainer.kubeflow.org
"${KUBECTL[@]}" -n kubeflow-system wait --for condition=Available --timeout=600s deployment --all
"${KUBECTL[@]}" apply --server-side -k manifests/install/trainer-runtimes

if [[ "${INSTALL_TRAINING_OPERATOR:-1}" == 1 ]]; then
  log "Kubeflow Training Operator v1.9.0"
  "${KUBECTL[@]}" apply --server-side -k manifests/install/training-operator
fi

log "PodMonitor CRD"
"${KUBECTL[@]}" apply --server-side -k manifests/install/prometheus-crds
"${KUBECTL[@]}" wait --for condition=established --timeout=120s crd/podmonitors.monitoring.coreos.com

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building $IMAGE and loading it into the kind node"
  docker build -f images/Dockerfile.cpu -t "$IMAGE" \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" .
  kind load docker-image "$IMAGE" --name "$CLUSTER"
fi

log "namespace $NAMESPACE and Secret $SECRET"
"${KUBECTL[@]}" apply -f manifests/base/namespace.yaml
if ! "${KUBECTL[@]}" -n "$NAMESPACE" get secret "$SECRET" >/dev/null 2>&1; then
  # Random credentials, never written to disk or put on a command line.
  "${KUBECTL[@]}" -n "$NAMESPACE" create secret generic "$SECRET" --from-env-file=<(
    printf 'AWS_ENDPOINT_URL=%s\nAWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' \
      "$ENDPOINT" "$(openssl rand -hex 12)" "$(openssl rand -hex 24)"
  )
fi
# Standalone KFP runs the pipeline's steps in its own namespace: give them the same Secret.
if ! "${KUBECTL[@]}" -n "$KFP_NAMESPACE" get secret "$SECRET" >/dev/null 2>&1; then
  key() { "${KUBECTL[@]}" -n "$NAMESPACE" get secret "$SECRET" -o "jsonpath={.data.$1}" | base64 -d; }
  "${KUBECTL[@]}" -n "$KFP_NAMESPACE" create secret generic "$SECRET" --from-env-file=<(
    printf 'AWS_ENDPOINT_URL=%s\nAWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' \
      "$(key AWS_ENDPOINT_URL)" "$(key AWS_ACCESS_KEY_ID)" "$(key AWS_SECRET_ACCESS_KEY)"
  )
fi

log "pretrain (manifests/overlays/kind: MinIO, bucket Job, RBAC, NetworkPolicy, monitoring)"
"${KUBECTL[@]}" apply -k manifests/overlays/kind
"${KUBECTL[@]}" -n "$NAMESPACE" rollout status deployment/minio --timeout=300s
"${KUBECTL[@]}" -n "$NAMESPACE" wait --for condition=complete --timeout=600s job/pretrain-create-bucket

log "waiting for Kubeflow Pipelines (first start takes several minutes)"
"${KUBECTL[@]}" -n "$KFP_NAMESPACE" wait --for condition=Available --timeout=900s deployment --all

cat <<DONE

Ready. KFP UI:
  kubectl --context kind-${CLUSTER} -n ${KFP_NAMESPACE} port-forward svc/ml-pipeline-ui 8080:80
  then open http://localhost:8080
A training job without KFP (run root on s3://pretrain/...):
  pretrain job RECIPE train.launcher=trainjob | kubectl --context kind-${CLUSTER} apply -f -
DONE
