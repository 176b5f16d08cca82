#!/usr/bin/env bash
# Trains on a Cloud TPU VM or pod slice: creates it (or reuses it), installs resnet-jax on every
# worker, starts python -m resnet_jax.main on all workers at once, and deletes it on request.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --workdir gs://BUCKET/PATH [options] [--config.KEY=VALUE ...]
           [-- MAIN_FLAGS...]
       launch/tpu_vm.sh --delete [--name NAME --zone ZONE --project PROJECT]

Creates the TPU VM unless one of that name is READY (a preempted one is deleted and created
again), copies this checkout (or clones --git) to every worker, installs it with its tpu and
gcs extras in a Python 3.12 virtual environment there, and trains on all workers at once.
Checkpoints go to the bucket, so running the same command again after a preemption resumes
the run.

Options (environment variable in brackets):
  --name NAME              TPU VM name [RESNET_JAX_TPU_NAME, default resnet-jax]
  --project PROJECT        [RESNET_JAX_PROJECT, default gcloud's configured project]
  --zone ZONE              [RESNET_JAX_ZONE, default gcloud's configured compute/zone]
  --accelerator-type TYPE  e.g. v5litepod-8, v5litepod-16 (4 hosts), v4-32
                           [RESNET_JAX_ACCELERATOR_TYPE, default v5litepod-8]
  --version VERSION        TPU software version [RESNET_JAX_TPU_VERSION,
                           default v2-alpha-tpuv5-lite; v4: tpu-ubuntu2204-base,
                           v5p: v2-alpha-tpuv5, v6e: v2-alpha-tpuv6e]
  --spot                   create a Spot VM (cheaper, may be preempted)
  --config FILE            config file, relative to the repository [RESNET_JAX_CONFIG,
                           default configs/best.py]
  --workdir gs://...       bucket path for checkpoints, metrics, report [RESNET_JAX_WORKDIR]
  --git URL                clone URL on every worker instead of copying this checkout
                           [RESNET_JAX_GIT_URL]
  --git-ref REF            branch or tag to clone [RESNET_JAX_GIT_REF]
  --skip-setup             reuse the code and environment already on the workers
  --delete-after           delete the TPU VM once training has succeeded
  --delete                 only delete the TPU VM, then exit
  --dry-run                print the commands, one per line, and run nothing
  -h, --help               this message
--config.KEY=VALUE arguments and everything after -- go to python -m resnet_jax.main unchanged.
EOF
}

SCRIPT_NAME=tpu_vm.sh
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

name="${RESNET_JAX_TPU_NAME:-resnet-jax}"
project="${RESNET_JAX_PROJECT:-}"
zone="${RESNET_JAX_ZONE:-}"
accelerator_type="${RESNET_JAX_ACCELERATOR_TYPE:-v5litepod-8}"
version="${RESNET_JAX_TPU_VERSION:-v2-alpha-tpuv5-lite}"
git_url="${RESNET_JAX_GIT_URL:-}"
git_ref="${RESNET_JAX_GIT_REF:-}"
spot=false
skip_setup=false
delete_after=false
delete_only=false
while (($#)); do
  take_main_option "$@"
  if ((taken)); then shift "$taken"; continue; fi
  case "$1" in
    --name) name="${2:?--name needs a value}"; shift ;;
    --name=*) name="${1#*=}" ;;
    --project) project="${2:?--project needs a value}"; shift ;;
    --project=*) project="${1#*=}" ;;
    --zone) zone="${2:?--zone needs a value}"; shift ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator-type) accelerator_type="${2:?--accelerator-type needs a value}"; shift ;;
    --accelerator-type=*) accelerator_type="${1#*=}" ;;
    --version) version="${2:?--version needs a value}"; shift ;;
    --version=*) version="${1#*=}" ;;
    --git) git_url="${2:?--git needs a URL}"; shift ;;
    --git=*) git_url="${1#*=}" ;;
    --git-ref) git_ref="${2:?--git-ref needs a branch or tag}"; shift ;;
    --git-ref=*) git_ref="${1#*=}" ;;
    --spot) spot=true ;;
    --skip-setup) skip_setup=true ;;
    --delete-after) delete_after=true ;;
    --delete) delete_only=true ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done

run() {
  if $dry_run; then print_command "$@"; else "$@"; fi
}

tpu=(gcloud compute tpus tpu-vm)
scope=()
[[ -z $zone ]] || scope+=("--zone=$zone")
[[ -z $project ]] || scope+=("--project=$project")
delete_command=("${tpu[@]}" delete "$name" "${scope[@]}" --quiet)

if $delete_only; then
  run "${delete_command[@]}"
  exit 0
fi
[[ $workdir == gs://?* ]] ||
  die "--workdir must be a gs:// bucket path (the TPU VM's disk is lost on preemption or delete)"

create_command=("${tpu[@]}" create "$name" "${scope[@]}" "--accelerator-type=$accelerator_type"
                "--version=$version")
if $spot; then create_command+=(--spot); fi
if $dry_run; then
  echo "# create runs unless '${tpu[*]} describe $name' finds it READY"
  run "${create_command[@]}"
else
  state="$("${tpu[@]}" describe "$name" "${scope[@]}" --format='value(state)' 2>/dev/null || true)"
  case "$state" in
    READY) echo "tpu_vm.sh: reusing the TPU VM $name" >&2 ;;
    PREEMPTED|TERMINATED) run "${delete_command[@]}"; run "${create_command[@]}" ;;
    '') run "${create_command[@]}" ;;
    *) die "the TPU VM $name is $state: wait until it is READY, or --delete it" ;;
  esac
fi

# Remote paths are relative to the home directory, where gcloud's ssh starts.
if ! $skip_setup; then
  if [[ -n $git_url ]]; then
    clone=(git clone --depth=1)
    [[ -z $git_ref ]] || clone+=("--branch=$git_ref")
    fetch="rm -rf resnet-jax && $(print_command "${clone[@]}" "$git_url" resnet-jax)"
  else
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    archive="${TMPDIR:-/tmp}/resnet-jax-$name.tar.gz"
    # Everything but environments, caches and local runs; data/ goes too (data.source='auto').
    run tar --exclude=.git --exclude=.venv --exclude=__pycache__ --exclude=.pytest_cache \
      --exclude='*.egg-info' --exclude=./runs --exclude=./build --exclude=./dist \
      -czf "$archive" -C "$repo" .
    run "${tpu[@]}" scp "$archive" "$name:resnet-jax.tar.gz" "${scope[@]}" --worker=all
    fetch='rm -rf resnet-jax && mkdir resnet-jax && tar -xzf resnet-jax.tar.gz -C resnet-jax'
  fi
  # shellcheck disable=SC2016  # $HOME and $PATH expand on the worker
  install='export PATH="$HOME/.local/bin:$PATH"'
  install+=' && (command -v uv || curl -LsSf https://astral.sh/uv/install.sh | sh)'
  install+=' && rm -rf resnet-jax-venv && uv venv --python=3.12 resnet-jax-venv'
  # The tpu extra: jax with libtpu; gcs: what etils.epath and TensorBoard need for gs://.
  install+=" && uv pip install --python=resnet-jax-venv/bin/python './resnet-jax[tpu,gcs]'"
  run "${tpu[@]}" ssh "$name" "${scope[@]}" --worker=all --command="$fetch && $install"
fi

train="cd resnet-jax && RESNET_JAX_DISTRIBUTED=auto $(print_command ../resnet-jax-venv/bin/python \
  -m resnet_jax.main "--config=$config" "--workdir=$workdir" "${main_flags[@]}")"
run "${tpu[@]}" ssh "$name" "${scope[@]}" --worker=all --command="$train"
if $delete_after; then run "${delete_command[@]}"; fi
