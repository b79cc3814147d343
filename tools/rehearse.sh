#!/usr/bin/env bash
# What a new machine sees, before a landing: the README's test command in a fresh clone of this
# repository against a state root that does not exist yet. Shared with this machine: only the
# image store (guest images, ready states: DESKVM_IMAGE_DIR, default ~/.cache/deskvm), Docker's
# images, and the build directory (CARGO_TARGET_DIR, default this checkout's target/; pass
# --fresh-target for a build from nothing, ~10 min more). Afterwards it checks that the image
# store holds nothing but artifacts and leases.
#
#   tools/rehearse.sh [--fresh-target] [REV] [-- cargo test args...]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
fresh_target=no
rev=HEAD
if [ "${1:-}" = --fresh-target ]; then fresh_target=yes; shift; fi
if [ $# -gt 0 ] && [ "$1" != -- ]; then rev=$1; shift; fi
[ "${1:-}" = -- ] && shift
work=$(mktemp -d /tmp/deskvm-rehearse.XXXXXX)
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
git clone -q --no-local "$repo" "$work/clone"
git -C "$work/clone" checkout -q "$rev"
# Uncommitted work is not on a new machine either: say so instead of testing it silently.
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
  echo "rehearse: note: uncommitted changes in $repo are not part of the rehearsal ($rev is)" >&2
fi
store=${DESKVM_IMAGE_DIR:-${DESKVM_CACHE_DIR:-$HOME/.cache/deskvm}}
export DESKVM_IMAGE_DIR=$store
unset DESKVM_CACHE_DIR DESKVM_DATA_DIR DESKVM_RUNTIME_DIR
# Not made here: the product must make every directory it needs.
export DESKVM_STATE_DIR=$work/state
if [ "$fresh_target" = yes ]; then
  export CARGO_TARGET_DIR=$work/target
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
fi
echo "rehearse: $(git -C "$work/clone" log -1 --format='%h %s') in $work/clone"
echo "rehearse: state root $DESKVM_STATE_DIR (absent), image store $store, target $CARGO_TARGET_DIR"
started=$(date +%s)
touch "$work/started"
status=0
(cd "$work/clone" && cargo run --release -- setup --image all && cargo test --release "$@") || status=$?
echo "rehearse: test command exited $status after $(( $(date +%s) - started )) s"

# The image store keeps artifacts (images/, builds in work/) and small leases (instances/: live
# servers; roots/: state roots with checkpoints), nothing a test made for itself.
leaks=()
for entry in "$store"/* "$store"/.[!.]*; do
  [ -e "$entry" ] || continue
  name=$(basename "$entry")
  case $name in
    # apt-archives: downloaded .debs (named by version); test-disks: the import test's disk
    # (named by its script's hash). Both content-addressed, like images.
    images|work|instances|roots|apt-archives|test-disks|.lock|*.lock|accel-*.json|guest-image.*) ;;
    *) [ "$entry" -nt "$work/started" ] && leaks+=("$entry") ;;
  esac
done
while IFS= read -r d; do leaks+=("$d (build work left behind)"); done \
  < <(find "$store/work" -mindepth 1 -maxdepth 1 -newer "$work/started" 2>/dev/null)
while IFS= read -r d; do leaks+=("$d (a checkpoint in the image store)"); done \
  < <(find "$store" -maxdepth 3 -name checkpoint.json -newer "$work/started" 2>/dev/null)
if [ ${#leaks[@]} -gt 0 ]; then
  printf 'rehearse: the run left state in the image store:\n' >&2
  printf '  %s\n' "${leaks[@]}" >&2
  [ "$status" = 0 ] && status=3
else
  echo "rehearse: the image store holds only artifacts and leases"
fi
exit "$status"
