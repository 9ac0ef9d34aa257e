#!/bin/sh
# Installs what is missing, builds turnpike (Release) and runs it in the
# foreground on the self-contained demo configuration conf/turnpike.yaml.
# Ctrl-C drains and stops it.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh build/rel -DCMAKE_BUILD_TYPE=Release
./build/rel/turnpike -t -c conf/turnpike.yaml
cat <<'MSG'

turnpike is starting on the demo configuration (conf/turnpike.yaml). Try, from another shell:

  curl -i http://127.0.0.1:8080/ping             # answered by the gateway (direct_response)
  curl -i http://127.0.0.1:8080/api/hello        # proxied to the demo backend listener (127.0.0.1:8081)
  curl -i http://127.0.0.1:8080/nowhere          # 404 with a JSON error body
  curl -s http://127.0.0.1:9901/metrics | head   # admin: Prometheus metrics
  curl -s http://127.0.0.1:9901/config           # admin: configuration and live state
  kill -HUP <pid>                                # reload conf/turnpike.yaml

Ctrl-C stops it (graceful drain).

MSG
exec ./build/rel/turnpike -c conf/turnpike.yaml
