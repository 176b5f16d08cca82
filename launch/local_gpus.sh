#!/usr/bin/env bash
# Trains on every GPU of this machine: one process that sees them all (the default), or one
# process per GPU joined through jax.distributed with the coordinator on 127.0.0.1.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local_gpus.sh --workdir DIR [options] [--config.KEY=VALUE ...] [-- MAIN_FLAGS...]

Trains with every GPU of this machine. Run it from the repository root (or with resnet-jax
installed and CONFIG an absolute path).

Options (environment variable in brackets):
  --config FILE        config file [RESNET_JAX_CONFIG, default configs/best.py]
  --workdir DIR        where checkpoints, metrics and the report go [RESNET_JAX_WORKDIR]
  --process-per-gpu    one process per GPU (CUDA_VISIBLE_DEVICES=i) instead of one for all
  --num-gpus N         GPUs to use with --process-per-gpu [RESNET_JAX_NUM_GPUS,
                       default: all that nvidia-smi lists]
  --port PORT          coordinator port on 127.0.0.1 [RESNET_JAX_PORT, default 12355]
  --python PYTHON      interpreter [RESNET_JAX_PYTHON, default python3]
  --allow-cpu          start even where jax finds no GPU [RESNET_JAX_ALLOW_CPU=true]
  --dry-run            print the commands, one per line, and run nothing
  -h, --help           this message
--config.KEY=VALUE arguments and everything after -- go to python -m resnet_jax.main unchanged.
EOF
}

SCRIPT_NAME=local_gpus.sh
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

num_gpus="${RESNET_JAX_NUM_GPUS:-}"
port="${RESNET_JAX_PORT:-12355}"
python="${RESNET_JAX_PYTHON:-python3}"
process_per_gpu=false
while (($#)); do
  take_main_option "$@"
  if ((taken)); then shift "$taken"; continue; fi
  case "$1" in
    --num-gpus) num_gpus="${2:?--num-gpus needs a number}"; shift ;;
    --num-gpus=*) num_gpus="${1#*=}" ;;
    --port) port="${2:?--port needs a number}"; shift ;;
    --port=*) port="${1#*=}" ;;
    --python) python="${2:?--python needs an interpreter}"; shift ;;
    --python=*) python="${1#*=}" ;;
    --process-per-gpu) process_per_gpu=true ;;
    --allow-cpu) allow_cpu=true ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
  shift
done
[[ -n $workdir ]] || { usage >&2; die "--workdir is required"; }

main_command=("$python" -m resnet_jax.main "--config=$config" "--workdir=$workdir" "${main_flags[@]}")
if $process_per_gpu; then
  if [[ -z $num_gpus ]]; then
    # A dry run too: it shows the commands for this machine's GPUs, never a count it guessed.
    command -v nvidia-smi >/dev/null ||
      die "nvidia-smi not found, so the GPUs cannot be counted: pass --num-gpus N"
    num_gpus="$(nvidia-smi --list-gpus | wc -l)"
  fi
  [[ $num_gpus =~ ^[1-9][0-9]*$ ]] || die "--num-gpus must be a positive integer, not '$num_gpus'"
fi
require_gpu "$python"

if ! $process_per_gpu; then
  if $dry_run; then print_command "${main_command[@]}"; exit 0; fi
  exec "${main_command[@]}"
fi

pids=()
for ((gpu = 0; gpu < num_gpus; gpu++)); do
  process_command=(env "CUDA_VISIBLE_DEVICES=$gpu"
                   "RESNET_JAX_COORDINATOR_ADDRESS=127.0.0.1:$port"
                   "RESNET_JAX_NUM_PROCESSES=$num_gpus" "RESNET_JAX_PROCESS_ID=$gpu"
                   "${main_command[@]}")
  if $dry_run; then
    echo "$(print_command "${process_command[@]}") &"
  else
    "${process_command[@]}" &
    pids+=("$!")
  fi
done
if $dry_run; then echo wait; exit 0; fi

# Background processes ignore Ctrl-C; pass it on as SIGTERM (the trainer saves and stops).
trap 'kill "${pids[@]}" 2>/dev/null; wait; exit 130' INT TERM
# The first process to fail stops the others: they would wait for it forever.
status=0
for ((remaining = num_gpus; remaining > 0; remaining--)); do
  if ! wait -n; then
    status=1
    kill "${pids[@]}" 2>/dev/null || true
    wait || true
    break
  fi
done
exit "$status"
