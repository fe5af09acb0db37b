#!/bin/sh
# CI gate for a policy change (README "Policy rollout"):
#   deploy/rollout/check-policy.sh OLD_DIR NEW_DIR
# OLD_DIR holds the policy now deployed (e.g. `git worktree add /tmp/deployed origin/main`, then its
# deploy/kubernetes), NEW_DIR the proposed one; each holds resolver.yaml and the lists it names.
# Exit 0: NEW loads and unblocks nothing that is not approved; 1: it unblocks something nobody approved;
# 2: NEW (or OLD) does not load. Prints `resolver check` of NEW, then `resolver diff OLD NEW`.
# RESOLVER names the resolver command (default: resolver on PATH).
set -eu
if [ $# -ne 2 ]; then
    echo "usage: $0 OLD_DIR NEW_DIR" >&2
    exit 2
fi
old=$1
new=$2
resolver=${RESOLVER:-resolver}
echo "== resolver check -c $new/resolver.yaml"
$resolver check -c "$new/resolver.yaml" || exit $?
echo "== resolver diff $old $new"
$resolver diff "$old" "$new"
