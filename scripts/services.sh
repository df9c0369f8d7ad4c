#!/usr/bin/env bash
# Start (up) or stop (down) the local services: the system RabbitMQ, and for the demo a SeaweedFS
# S3 server whose data lives under .stack/ in the project.
set -euo pipefail
cd "$(dirname "$0")/.."

rabbit_up() {
  if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then return 0; fi
  command -v rabbitmq-server >/dev/null || {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    else
      echo "services: RabbitMQ is not running on 127.0.0.1:5672 and not installed" >&2; exit 1
    fi
  }
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached || true
  for _ in $(seq 1 60); do
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null && break
    sleep 1
  done
  rabbitmqctl await_startup >/dev/null 2>&1 || { sleep 3; rabbitmqctl await_startup; }
}

# A vhost per test run: parallel suites on one broker never see each other's queues.
vhost_add() {
  rabbitmqctl add_vhost "$1" >/dev/null
  rabbitmqctl set_permissions -p "$1" guest '.*' '.*' '.*' >/dev/null
}

case "${1:-up}" in
  rabbitmq) rabbit_up ;;
  vhost-add) vhost_add "$2" ;;
  vhost-del) rabbitmqctl delete_vhost "$2" >/dev/null 2>&1 || true ;;
  up) rabbit_up
      .venv/bin/python -m funasr_fleet.devstack up ;;
  down) .venv/bin/python -m funasr_fleet.devstack down ;;
  *) echo "usage: $0 up|down|rabbitmq|vhost-add NAME|vhost-del NAME" >&2; exit 2 ;;
esac
