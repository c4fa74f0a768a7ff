#!/bin/sh
# Roll a new run out to every replica without downtime:
#     deploy/rollout.sh RUNS_DIR NEW_RUN REPLICA_URL...
# points RUNS_DIR/current at NEW_RUN (a folder in RUNS_DIR) in one rename, then asks each
# replica in turn to reload it (POST /v1/admin/reload: the new model is loaded beside
# the old one and swapped in by one assignment; requests in flight finish on the old).
# A replica that cannot load the run keeps serving the old one, and the script stops
# there with its answer: point current back and run it again to roll back. A replica
# started later loads RUNS_DIR/current, the new run. The API key, when the replicas
# have one (--api-key-file), comes from MODREC_API_KEY.
set -eu
if [ $# -lt 3 ]; then
    echo "usage: $0 RUNS_DIR NEW_RUN REPLICA_URL..." >&2
    exit 2
fi
runs=$1 new=$2
shift 2
if [ ! -f "$runs/$new/config.json" ] || [ ! -f "$runs/$new/model.pt" ]; then
    echo "$runs/$new is not a trained run (no config.json or model.pt); name a folder" \
         "in $runs that modrec train finished" >&2
    exit 2
fi
# A new link beside the old, renamed over it: a replica starting meanwhile reads the
# old run or the new one, never a missing link.
ln -sfn "$new" "$runs/.current.next"
mv -T "$runs/.current.next" "$runs/current"
for url in "$@"; do
    answer=$(curl -sS -X POST -H "Content-Type: application/json" \
        ${MODREC_API_KEY:+-H "Authorization: Bearer $MODREC_API_KEY"} \
        -d '{}' -w '\n%{http_code}' "$url/v1/admin/reload") || {
        echo "$url: no answer; it keeps its old run (it loads current when it restarts)" >&2
        exit 1
    }
    status=$(printf '%s\n' "$answer" | tail -n 1)
    if [ "$status" != 200 ]; then
        echo "$url did not reload ($status: $(printf '%s\n' "$answer" | head -n 1));" \
             "it keeps serving its old run" >&2
        exit 1
    fi
    echo "$url now serves $new"
done
