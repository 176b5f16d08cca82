# shellcheck shell=bash
# Shared by the launch scripts (sourced, not run). SCRIPT_NAME names the script in errors.

# Prints one command, each word quoted only where the shell needs it.
print_command() {
  local word words=()
  for word in "$@"; do
    if [[ $word =~ ^[[:alnum:]_./:=@,+%-]+$ ]]; then words+=("$word")
    else words+=("'${word//\'/\'\\\'\'}'"); fi
  done
  echo "${words[*]}"
}

die() {
  echo "${SCRIPT_NAME}: $*" >&2
  exit 2
}

# The options every launch script has, with their defaults (take_main_option sets them).
# shellcheck disable=SC2034  # used by the scripts that source this file
{
  config="${RESNET_JAX_CONFIG:-configs/best.py}"
  workdir="${RESNET_JAX_WORKDIR:-}"
  dry_run=false
  main_flags=()
}

# Takes the options every launch script has from the front of "$@": --config FILE,
# --config.KEY=VALUE (kept in main_flags for python -m resnet_jax.main), --workdir DIR,
# --dry-run and -- (the rest goes to main_flags). Sets config, workdir, main_flags, dry_run,
# and `taken` to the number of words used (0: not one of these).
# shellcheck disable=SC2034  # the variables are the calling script's
take_main_option() {
  taken=1
  case "$1" in
    --config) config="${2:?--config needs a file}"; taken=2 ;;
    --config=*) config="${1#*=}" ;;
    --config.*) main_flags+=("$1") ;;
    --workdir) workdir="${2:?--workdir needs a directory or gs:// path}"; taken=2 ;;
    --workdir=*) workdir="${1#*=}" ;;
    --dry-run) dry_run=true ;;
    --) main_flags+=("${@:2}"); taken=$# ;;
    *) taken=0 ;;
  esac
}

# The GPU launchers check that jax has a GPU before they start anything; --allow-cpu skips it.
allow_cpu="${RESNET_JAX_ALLOW_CPU:-false}"

# Runs "$@" -m resnet_jax.platform_check --expect=gpu ("$@": the interpreter, after any prefix
# such as srun's) and stops with its one line where jax has no GPU; --dry-run prints it instead.
require_gpu() {
  local check=("$@" -m resnet_jax.platform_check --expect=gpu) reason
  [[ $allow_cpu == true || $allow_cpu == false ]] ||
    die "RESNET_JAX_ALLOW_CPU must be true or false, not '$allow_cpu'"
  if $allow_cpu; then return 0; fi
  if $dry_run; then print_command "${check[@]}"; return 0; fi
  if ! reason="$("${check[@]}" 2>&1)"; then
    reason="${reason##*$'\n'}"
    die "${reason#error: }; --allow-cpu starts it on the CPU anyway"
  fi
}
