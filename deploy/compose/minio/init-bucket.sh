#!/bin/sh
# Runs once in the `minio-init` container (minio/mc image) before the relay starts:
# - creates the recordings bucket with Object Lock (and therefore versioning) turned on,
# - sets a default GOVERNANCE retention, so a recording cannot be deleted or overwritten before
#   it expires without the explicit bypass permission the relay does not have,
# - creates the relay's own user, limited to that bucket and unable to delete (relay-policy.json).
# Object Lock can only be enabled when a bucket is created; an existing bucket without it fails
# below instead of silently running without retention.
set -eu

: "${MINIO_ROOT_USER:?}" "${MINIO_ROOT_PASSWORD:?}" "${RELAY_S3_ACCESS_KEY:?}" "${RELAY_S3_SECRET_KEY:?}"
# Must match recording.s3.bucket in deploy/compose/relay.yaml and relay-policy.json.
BUCKET=relay-recordings
RETENTION="${RECORDING_RETENTION:-30d}"

mc alias set local http://minio:9000 "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null
mc mb --ignore-existing --with-lock "local/$BUCKET"
mc retention set --default GOVERNANCE "$RETENTION" "local/$BUCKET"
mc retention info --default "local/$BUCKET"

mc admin policy create local relay-recorder /init/relay-policy.json
mc admin user add local "$RELAY_S3_ACCESS_KEY" "$RELAY_S3_SECRET_KEY"
# Attaching twice (a second `docker compose up`) reports an error: the end state is what counts.
mc admin policy attach local relay-recorder --user "$RELAY_S3_ACCESS_KEY" \
  || mc admin user info local "$RELAY_S3_ACCESS_KEY" | grep -q relay-recorder
echo "bucket $BUCKET ready: Object Lock on, default retention GOVERNANCE $RETENTION"
