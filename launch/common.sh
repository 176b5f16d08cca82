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
