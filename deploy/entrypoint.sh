#!/bin/sh
# One image, three roles on ECS: `webserver` and `daemon` start Dagster's services on $DAGSTER_HOME/dagster.yaml
# and workspace.yaml; anything else runs as given, which is how a run task starts: EcsRunLauncher replaces the
# container's command with `dagster api execute_run <run>` and keeps this entrypoint.
set -eu

case "${1:-}" in
  webserver)
    shift
    exec dagster-webserver --host 0.0.0.0 --port "${DAGSTER_WEBSERVER_PORT:-3000}" --workspace workspace.yaml "$@"
    ;;
  daemon)
    shift
    exec dagster-daemon run --workspace workspace.yaml "$@"
    ;;
  "")
    echo "usage: webserver | daemon | a command (a run task's: dagster api execute_run ...)" >&2
    exit 2
    ;;
  *)
    exec "$@"
    ;;
esac
