#!/bin/sh
# One-shot preparation of the compose fleet's Garage through its admin API (v2): a
# one-node layout, the bucket, and the fleet's access key with read/write on it.
# Idempotent: run on every `up`; each step is skipped when already done.
# Needs only busybox (sh, wget, grep, sed).
set -eu
api="${GARAGE_ADMIN_URL:-http://garage:3903}"
bucket="${S3_BUCKET:-ccfleet}"
: "${GARAGE_ADMIN_TOKEN:?}" "${S3_ACCESS_KEY_ID:?}" "${S3_SECRET_ACCESS_KEY:?}"
log() { echo "garage-init: $*" >&2; }

# call ENDPOINT [JSON_BODY]: the answer's body; non-zero on an HTTP error.
call() {
  if [ $# -ge 2 ]; then
    wget -q -O - --header "Authorization: Bearer $GARAGE_ADMIN_TOKEN" \
      --header 'Content-Type: application/json' --post-data "$2" "$api/v2/$1"
  else
    wget -q -O - --header "Authorization: Bearer $GARAGE_ADMIN_TOKEN" "$api/v2/$1"
  fi
}
# The first `"id": "<hex>"` of a JSON answer (pretty-printed or not).
first_id() { grep -o '"id": *"[0-9a-f]*"' | head -n 1 | sed 's/.*"\([0-9a-f]*\)"$/\1/'; }

tries=0
until status="$(call GetClusterStatus 2>/dev/null)"; do
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || { log "Garage's admin API at $api did not answer"; exit 1; }
  sleep 1
done

if echo "$status" | grep -Eq '"layoutVersion": *0[^0-9]'; then
  node="$(echo "$status" | first_id)"
  [ -n "$node" ] || { log "no node id in $status"; exit 1; }
  call UpdateClusterLayout \
    "{\"roles\":[{\"id\":\"$node\",\"zone\":\"${GARAGE_ZONE:-dc1}\",\"capacity\":${GARAGE_CAPACITY_BYTES:-10000000000},\"tags\":[]}]}" >/dev/null
  call ApplyClusterLayout '{"version":1}' >/dev/null
  log "layout applied (node $node)"
fi

# The layout takes a moment to be usable: retry the bucket until it is there.
tries=0
until info="$(call "GetBucketInfo?globalAlias=$bucket" 2>/dev/null || call CreateBucket "{\"globalAlias\":\"$bucket\"}" 2>/dev/null)"; do
  tries=$((tries + 1))
  [ "$tries" -lt 60 ] || { log "could not create bucket $bucket"; exit 1; }
  sleep 1
done
bucket_id="$(echo "$info" | first_id)"

if ! call "GetKeyInfo?id=$S3_ACCESS_KEY_ID" >/dev/null 2>&1; then
  call ImportKey \
    "{\"accessKeyId\":\"$S3_ACCESS_KEY_ID\",\"secretAccessKey\":\"$S3_SECRET_ACCESS_KEY\",\"name\":\"ccfleet\"}" >/dev/null
  log "key $S3_ACCESS_KEY_ID imported"
fi
call AllowBucketKey \
  "{\"bucketId\":\"$bucket_id\",\"accessKeyId\":\"$S3_ACCESS_KEY_ID\",\"permissions\":{\"read\":true,\"write\":true,\"owner\":true}}" >/dev/null
log "bucket $bucket ready"
