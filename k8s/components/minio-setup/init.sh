#!/bin/sh
# One-shot MinIO set-up for funasr-fleet (the `minio-init` service of docker-compose.yml; idempotent):
#   1. buckets: inbox (users drop audio) and results;
#   2. a dedicated fleet user limited to those buckets (fleet-policy.json);
#   3. bucket notification: every object created in the inbox with an audio/video suffix is published to the
#      AMQP target FLEET (MINIO_NOTIFY_AMQP_*_FLEET on the server: exchange fleet.jobs, routing key s3-event),
#      which the consumers turn into jobs. `--event put` covers PUT, POST, COPY and completed multipart uploads.
# MinIO's suffix filter is case-sensitive: `Talk.WAV` raises no event; the reconcile sweep picks such objects up.
set -eu

MINIO_URL=${MINIO_URL:-http://minio:9000}
: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set}"
INBOX_BUCKET=${INBOX_BUCKET:-fleet-inbox}
RESULTS_BUCKET=${RESULTS_BUCKET:-fleet-results}
NOTIFY_ARN=${NOTIFY_ARN:-arn:minio:sqs::FLEET:amqp}
SUFFIXES=${SUFFIXES:-.wav .mp3 .m4a .aac .flac .ogg .opus .webm .mp4 .mov}
POLICY_FILE=${POLICY_FILE:-/init/fleet-policy.json}

tries=0
until mc alias set fleet "$MINIO_URL" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 30 ]; then
    echo "minio-init: MinIO at $MINIO_URL did not answer" >&2
    exit 1
  fi
  sleep 2
done

mc mb --ignore-existing "fleet/$INBOX_BUCKET" "fleet/$RESULTS_BUCKET"

if [ -n "${FLEET_S3_ACCESS_KEY_FILE:-}" ] && [ -n "${FLEET_S3_SECRET_KEY_FILE:-}" ]; then
  access_key=$(cat "$FLEET_S3_ACCESS_KEY_FILE")
  secret_key=$(cat "$FLEET_S3_SECRET_KEY_FILE")
  mc admin user add fleet "$access_key" "$secret_key"
  mc admin policy create fleet funasr-fleet "$POLICY_FILE"
  mc admin policy attach fleet funasr-fleet --user "$access_key" 2>/dev/null || echo "minio-init: policy already attached"
fi

existing=$(mc event ls "fleet/$INBOX_BUCKET" "$NOTIFY_ARN" 2>/dev/null || true)
for suffix in $SUFFIXES; do
  case "$existing" in
    *"$suffix"*) echo "minio-init: rule for *$suffix already there" ;;
    *) mc event add "fleet/$INBOX_BUCKET" "$NOTIFY_ARN" --event put --suffix "$suffix" ;;
  esac
done
mc event ls "fleet/$INBOX_BUCKET"
echo "minio-init: done"
