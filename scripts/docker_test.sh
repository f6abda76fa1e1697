#!/usr/bin/env bash
# Build MomoBridge's Docker image from this repository's Dockerfile, run it, and check it.
#
#   make docker-test                  (or: bash scripts/docker_test.sh)
#   BROKEN=root make docker-test      the same checks on a deliberately broken variant (must FAIL)
#
# The container runs with a named volume on /data holding a /data/config.toml that moves the
# port to 3181 and sets a title, then these checks run (each prints PASS or FAIL):
#   - /healthz answers on the configured port; the config file is read (title, log line)
#   - the process is not root (uid in /proc/1/status, `docker exec id -u`)
#   - the database and the generated admin_code land on the volume, owned by uid 10001
#   - the admin code is printed in the log on first start, once
#   - Docker's HEALTHCHECK is `momobridge healthcheck` (no fixed port), has a start period of at
#     least 60 s, turns healthy on port 3181, and the same command fails with no server
#   - SIGTERM with a WebSocket client connected: exit code 0 within 5 s, an orderly stop logged
#   - a restart on the same volume keeps the admin code and the database (and logs no new code)
#   - /data owned by another uid (as a bind-mounted host directory often is): the bridge exits
#     with an error naming the fix (chown -R 10001:10001) instead of a traceback
# Exit code 0 only when the build and every check passed.
#
# The engine: the one `docker` reaches (DOCKER_HOST, or the default socket) when it answers.
# Otherwise (as root) the script installs Debian's docker.io if needed and starts a private
# dockerd with its own data-root, socket and pidfile under $STATE, without a bridge network or
# iptables changes, and stops it again at the end (images and build cache stay for the next run).
#
# The base image: python:3.11-slim, pulled as usual. Where no registry is reachable (or with
# LOCAL_BASE=1) a stand-in is built with mmdebstrap from Debian bookworm's archive (Python 3.11,
# a venv at /opt/venv first on PATH so `python` and `pip` behave as in the official image, the
# host's local CA certificates so pip trusts an intercepting proxy) and passed to the build as
# BASE_IMAGE. Needs root and the Debian archive; installs mmdebstrap if missing.
#
# The broken variant, to see the checks catch a bad image: BROKEN=root builds the image, then a
# layer on top of it with `USER root`, and checks that one. Expected: the non-root check FAILs
# (so do the uid-10001 ownership and the foreign-owner checks, which root passes through), and
# the script exits 1.
#
# Knobs (environment):
#   BASE_IMAGE=python:3.11-slim   the base to build from (a pullable or local image)
#   LOCAL_BASE=auto|1|0           1: always the mmdebstrap stand-in; 0: never; auto: when the
#                                 base can be neither found locally nor pulled
#   BROKEN=root                   check a deliberately broken variant instead (see above)
#   IMAGE=momobridge:test         the tag the image is built under (left in place afterwards)
#   HEALTH_INTERVAL=2s            the HEALTHCHECK interval for the test container (the image's is
#                                 30 s); "image" keeps the image's own timing
#   STATE=/var/lib/momobridge-docker-test   the private dockerd's data-root, socket and logs
#   PURGE=1                       delete $STATE after a run with a private dockerd
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE:-momobridge:test}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
LOCAL_BASE=${LOCAL_BASE:-auto}
BROKEN=${BROKEN:-}
STATE=${STATE:-/var/lib/momobridge-docker-test}
HEALTH_INTERVAL=${HEALTH_INTERVAL:-2s}
# The stand-in's tag and recipe version (bump it when the recipe changes: forces a rebuild).
STANDIN=momobridge-base:py3.11-bookworm
STANDIN_RECIPE=1
PORT=3181                        # set by the test config: not the image's default 3080
APP_UID=10001                    # the image's user
SUFFIX=$$
CNAME=momobridge-test-$SUFFIX
CLIENT=momobridge-test-client-$SUFFIX
BADC=momobridge-test-badowner-$SUFFIX
VOL=momobridge-test-data-$SUFFIX
BADVOL=momobridge-test-badowner-$SUFFIX
LOGS=$(mktemp -d /tmp/momobridge-docker-test.XXXXXX)

case "$BROKEN" in "" | root) ;; *) echo "BROKEN=$BROKEN: only BROKEN=root exists" >&2; exit 2 ;; esac

T0=$(date +%s)
say() { printf '[%4ss] %s\n' "$(($(date +%s) - T0))" "$*"; }
FAILS=0
check() { # check NAME COMMAND...: runs the command quietly, prints PASS/FAIL, counts failures
    local name=$1
    shift
    if "$@" >>"$LOGS/checks.log" 2>&1; then
        echo "  PASS  $name"
    else
        echo "  FAIL  $name"
        FAILS=$((FAILS + 1))
    fi
}

# --- clean-up: only what this run made ------------------------------------------------------
DOCKERD_PID="" MADE_POLICY=0 ENGINE_READY=0
stop_pid() { # TERM, up to 20 s, then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 80); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.25
    done
    kill -KILL "$pid" 2>/dev/null || true
}
cmdline_has() { # cmdline_has PID TEXT: the process exists and its command line contains TEXT
    [ -n "$1" ] && [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$2"
}
cleanup() {
    set +e
    if [ "$ENGINE_READY" = 1 ]; then
        docker rm -f "$CNAME" "$CLIENT" "$BADC" >/dev/null 2>&1
        docker volume rm "$VOL" "$BADVOL" >/dev/null 2>&1
    fi
    if [ -n "$DOCKERD_PID" ]; then
        stop_pid "$DOCKERD_PID"
        # The containerd that dockerd started for itself, by the pid it recorded.
        local c
        c=$(cat "$STATE/run/containerd/containerd.pid" 2>/dev/null)
        cmdline_has "$c" "$STATE/run/containerd" && stop_pid "$c"
        # dockerd bind-mounts the host's network namespace into its exec-root.
        for m in "$STATE"/run/netns/*; do [ -e "$m" ] && umount "$m" 2>/dev/null; done
        # Paths outside $STATE that dockerd 20.10 creates: removed when this run created them.
        [ -e "$STATE/.made-run-docker" ] && rmdir /run/docker/plugins /run/docker 2>/dev/null
        rm -f "$STATE/.made-run-docker"
        [ -e "$STATE/.made-key" ] && rm -f /etc/docker/key.json
        [ -e "$STATE/.made-etc-docker" ] && rmdir /etc/docker 2>/dev/null
        rm -f "$STATE/.made-key" "$STATE/.made-etc-docker"
        say "private dockerd (pid $DOCKERD_PID) stopped"
        if [ "${PURGE:-0}" = 1 ]; then rm -rf "$STATE" && say "purged $STATE"; fi
    fi
    [ "$MADE_POLICY" = 1 ] && rm -f /usr/sbin/policy-rc.d
    rm -rf "$LOGS"
}
trap cleanup EXIT

need_root() {
    [ "$(id -u)" = 0 ] || {
        echo "$1 needs root (run as root, or give the script a Docker engine it can reach)" >&2
        exit 2
    }
}
apt_install() { # apt_install PACKAGE...: without letting a package start its service
    need_root "installing $*"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        MADE_POLICY=1
    fi
    say "apt-get install $*"
    apt-get update -qq >"$LOGS/apt.log" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        >>"$LOGS/apt.log" 2>&1 || { tail -20 "$LOGS/apt.log"; exit 1; }
    if [ "$MADE_POLICY" = 1 ]; then rm -f /usr/sbin/policy-rc.d && MADE_POLICY=0; fi
}

# --- 1. an engine ------------------------------------------------------------------------------
start_private_dockerd() {
    need_root "starting a private dockerd"
    command -v dockerd >/dev/null || apt_install docker.io
    mkdir -p "$STATE/run" "$STATE/logs"
    # One run at a time owns the private daemon: a second run would take the first one's daemon
    # for a leftover and stop it under it. The lock goes with this shell (its fd 9).
    exec 9>"$STATE/run.lock"
    if ! flock -n 9; then
        echo "another docker test is using the private dockerd in $STATE; wait for it to end" >&2
        exit 1
    fi
    # The client that came with this dockerd, when there is one (a newer client elsewhere on PATH
    # may want a builder plugin this daemon's era does not need).
    local bundled
    bundled=$(cd "$(dirname "$(command -v dockerd)")/../bin" 2>/dev/null && pwd)
    if [ -x "$bundled/docker" ]; then export PATH="$bundled:$PATH"; fi
    local old
    old=$(cat "$STATE/run/dockerd.pid" 2>/dev/null || true)
    if cmdline_has "$old" "--data-root $STATE/docker"; then
        say "stopping a private dockerd left by an earlier run (pid $old)"
        stop_pid "$old"
    fi
    [ -e /run/docker ] || touch "$STATE/.made-run-docker"
    [ -e /etc/docker/key.json ] || touch "$STATE/.made-key"
    [ -e /etc/docker ] || touch "$STATE/.made-etc-docker"
    # An empty daemon.json of its own: a system Docker's /etc/docker/daemon.json is not read.
    [ -f "$STATE/daemon.json" ] || echo '{}' >"$STATE/daemon.json"
    export DOCKER_HOST=unix://$STATE/run/docker.sock
    dockerd --config-file "$STATE/daemon.json" --data-root "$STATE/docker" \
        --exec-root "$STATE/run" --pidfile "$STATE/run/dockerd.pid" -H "$DOCKER_HOST" \
        --bridge=none --iptables=false --ip-forward=false --ip-masq=false --log-level=warn \
        >"$STATE/logs/dockerd.log" 2>&1 9>&- &  # (not holding the run's lock after it)
    DOCKERD_PID=$!
    local i
    for i in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$DOCKERD_PID" 2>/dev/null || break
        sleep 0.25
    done
    docker info >/dev/null 2>&1 || { tail -20 "$STATE/logs/dockerd.log"; exit 1; }
    say "private dockerd up (pid $DOCKERD_PID, $DOCKER_HOST)"
}

PRIVATE=0
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    say "using the Docker engine at ${DOCKER_HOST:-the default socket}"
else
    start_private_dockerd
    PRIVATE=1
fi
ENGINE_READY=1
# The legacy builder where no buildx plugin is installed (BuildKit needs it in newer clients).
docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0
# The private daemon has no bridge network: builds use the host's, containers none at all
# (every check reaches the server from inside its own network namespace).
BUILD_NET=()
[ "$PRIVATE" = 1 ] && BUILD_NET=(--network host)

# --- 2. the base image -------------------------------------------------------------------------
build_standin() {
    need_root "building the stand-in base image"
    if [ "$(docker image inspect -f '{{index .Config.Labels "momobridge.base-recipe"}}' \
        "$STANDIN" 2>/dev/null)" = "$STANDIN_RECIPE" ]; then
        return 0
    fi
    command -v mmdebstrap >/dev/null || apt_install mmdebstrap
    say "building $STANDIN with mmdebstrap (Debian bookworm; a few minutes)"
    # This host's own Debian sources when it runs bookworm (the mirror apt already uses here).
    local sources=()
    if grep -qs bookworm /etc/apt/sources.list.d/debian.sources; then
        sources=(/etc/apt/sources.list.d/debian.sources)
    elif grep -qs '^deb .*bookworm' /etc/apt/sources.list; then
        sources=(/etc/apt/sources.list)
    fi
    local tar=$LOGS/base.tar
    # shellcheck disable=SC2016  # $1 is mmdebstrap's, expanded in its hook
    mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --customize-hook='for c in /usr/local/share/ca-certificates/*.crt; do [ -e "$c" ] && cp "$c" "$1/usr/local/share/ca-certificates/"; done; chroot "$1" update-ca-certificates >/dev/null 2>&1' \
        --customize-hook='chroot "$1" python3 -m venv /opt/venv' \
        bookworm "$tar" "${sources[@]}" >"$LOGS/mmdebstrap.log" 2>&1 ||
        { tail -20 "$LOGS/mmdebstrap.log"; exit 1; }
    docker import \
        --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change "LABEL momobridge.base-recipe=$STANDIN_RECIPE" \
        --change 'CMD ["python3"]' \
        "$tar" "$STANDIN" >/dev/null
    rm -f "$tar"
}
base_available() { # present locally, or pulled (bounded: an unreachable registry may hang)
    docker image inspect "$1" >/dev/null 2>&1 && return 0
    say "pulling $1"
    timeout 300 docker pull -q "$1" >>"$LOGS/pull.log" 2>&1
}
if [ "$LOCAL_BASE" = 1 ]; then
    build_standin
    BASE_IMAGE=$STANDIN
elif ! base_available "$BASE_IMAGE"; then
    if [ "$LOCAL_BASE" = 0 ]; then
        echo "cannot pull $BASE_IMAGE and LOCAL_BASE=0:" >&2
        tail -5 "$LOGS/pull.log" >&2
        exit 1
    fi
    say "$BASE_IMAGE cannot be pulled here: using a local stand-in"
    build_standin
    BASE_IMAGE=$STANDIN
fi
say "base: $BASE_IMAGE ($(docker run --rm --network none "$BASE_IMAGE" python --version 2>&1))"

# --- 3. the image --------------------------------------------------------------------------------
say "docker build --build-arg BASE_IMAGE=$BASE_IMAGE -t $IMAGE $ROOT"
docker build "${BUILD_NET[@]}" --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" "$ROOT" \
    >"$LOGS/build.log" 2>&1 || { tail -30 "$LOGS/build.log"; exit 1; }
if [ "$BROKEN" = root ]; then
    printf 'FROM %s\nUSER root\n' "$IMAGE" |
        docker build -t "$IMAGE-broken-root" - >>"$LOGS/build.log" 2>&1 ||
        { tail -30 "$LOGS/build.log"; exit 1; }
    IMAGE=$IMAGE-broken-root
    say "BROKEN=root: checking $IMAGE (USER root on top of the real image); checks must FAIL"
fi
say "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"

# --- 4. run it -----------------------------------------------------------------------------------
docker volume create "$VOL" >/dev/null
# The config is written as the image's own user, as an operator's file would be.
docker run --rm -i --network none -v "$VOL:/data" --entrypoint sh "$IMAGE" \
    -c 'cat > /data/config.toml' <<EOF
[server]
port = $PORT
title = "docker-test"
[log]
format = "json"
EOF
health=()
[ "$HEALTH_INTERVAL" != image ] && health=(--health-interval "$HEALTH_INTERVAL")
docker run -d --name "$CNAME" --network none -v "$VOL:/data" "${health[@]}" "$IMAGE" >/dev/null
say "container $CNAME started"

# Probes run inside the container's network namespace, with the image's own Python.
GET='import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())'
http() { docker exec "$CNAME" python -c "$GET" "http://127.0.0.1:$PORT$1"; }
running() { [ "$(docker inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }
wait_http() { # up to 60 s for /healthz on the configured port
    local i
    for i in $(seq 1 300); do
        http /healthz >/dev/null 2>&1 && return 0
        running "$CNAME" || return 1
        sleep 0.2
    done
    return 1
}
wait_healthy() { # Docker's own health status
    local i
    for i in $(seq 1 120); do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$CNAME")" = healthy ] && return 0
        sleep 0.5
    done
    return 1
}
on_volume() { # on_volume SCRIPT: read the volume from a fresh container, not the one under test
    docker run --rm --network none -v "$VOL:/data" --entrypoint sh "$IMAGE" -c "$1"
}
logs() { docker logs "$CNAME" 2>&1; }

if ! wait_http; then
    echo "the server did not answer on port $PORT; its log:"
    logs | tail -30
    exit 1
fi
say "checks (first start)"

healthz_ok() { http /healthz | grep -q '"status": *"ok"'; }
check "/healthz answers on the configured port $PORT" healthz_ok

title_shown() { http /api/base_info | grep -q '"title": *"docker-test"'; }
check "/data/config.toml is read (its title shows in /api/base_info)" title_shown
config_logged() { logs | grep '"config.loaded"' | grep -q '/data/config.toml'; }
check "the log says config.loaded path=/data/config.toml" config_logged

not_root() {
    local uids
    uids=$(docker exec "$CNAME" sh -c 'grep ^Uid: /proc/1/status') || return 1
    echo "pid 1: $uids; exec: $(docker exec "$CNAME" id -u)"
    # Real, effective, saved and filesystem uid of the server (pid 1) are all non-zero.
    echo "$uids" | awk '{exit !($2 != 0 && $3 != 0 && $4 != 0 && $5 != 0)}' &&
        [ "$(docker exec "$CNAME" id -u)" != 0 ]
}
check "the process is not root" not_root

data_mounted() { # /data in the container is the named volume
    docker inspect -f '{{range .Mounts}}{{.Name}}={{.Destination}} {{end}}' "$CNAME" |
        grep -q "$VOL=/data"
}
check "/data is the named volume $VOL" data_mounted
db_on_volume() { [ "$(on_volume 'stat -c %u /data/momobridge.db')" = "$APP_UID" ]; }
check "the database is on the volume (momobridge.db, owned by uid $APP_UID)" db_on_volume
code_on_volume() { [ "$(on_volume 'stat -c %u:%a /data/admin_code')" = "$APP_UID:600" ]; }
check "the generated admin_code is on the volume (uid $APP_UID, mode 600)" code_on_volume
ADMIN_CODE=$(on_volume 'cat /data/admin_code' 2>/dev/null | tr -d '\r\n' || true)
code_logs() { logs | grep -c '"admin_code.generated"' || true; }
code_in_log() {
    [ -n "$ADMIN_CODE" ] && [ "$(code_logs)" = 1 ] &&
        logs | grep '"admin_code.generated"' | grep -qF "\"$ADMIN_CODE\""
}
check "the admin code is printed in the log on first start (admin_code.generated)" code_in_log

hc_test=$(docker inspect -f '{{json .Config.Healthcheck.Test}}' "$IMAGE")
hc_start=$(docker inspect -f '{{.Config.Healthcheck.StartPeriod.Seconds}}' "$IMAGE" | cut -d. -f1)
hc_is_command() { # exec form, our command, and no port of its own
    echo "test: $hc_test; start period: $hc_start s"
    echo "$hc_test" | grep -q '"momobridge","healthcheck"' && ! echo "$hc_test" | grep -q 3080
}
check "HEALTHCHECK runs momobridge healthcheck (no hard-coded port)" hc_is_command
hc_start_ok() { [ "${hc_start:-0}" -ge 60 ]; }
check "HEALTHCHECK start period is at least 60 s (${hc_start:-?} s)" hc_start_ok
check "Docker's health status turns healthy (the probe follows port $PORT)" wait_healthy
hc_fails_alone() { # the same command with no server: exit 1, quickly
    local t0 rc=0
    t0=$(date +%s%N)
    docker run --rm --network none -v "$VOL:/data" --entrypoint momobridge "$IMAGE" \
        healthcheck --config /data/config.toml || rc=$?
    local ms=$((($(date +%s%N) - t0) / 1000000))
    echo "exit $rc after $ms ms (container start included)"
    [ "$rc" = 1 ] && [ "$ms" -lt 15000 ]
}
check "the healthcheck command fails (exit 1) when no server listens" hc_fails_alone

# A WebSocket client in the container's network namespace: handshake, then it holds the
# connection open and idle while the server is told to stop.
WS_CLIENT='
import base64, os, socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
key = base64.b64encode(os.urandom(16)).decode()
s.sendall(("GET /api/gateway HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode())
assert s.recv(4096).startswith(b"HTTP/1.1 101"), "no upgrade"
print("connected", flush=True)
time.sleep(120)'
docker run -d --name "$CLIENT" --network "container:$CNAME" --entrypoint python "$IMAGE" \
    -c "$WS_CLIENT" "$PORT" >/dev/null 2>>"$LOGS/checks.log"
client_connected() {
    local i
    for i in $(seq 1 50); do
        http /healthz | grep -q '"connections": *[1-9]' && return 0
        sleep 0.2
    done
    return 1
}
check "a WebSocket client is connected before the stop" client_connected
t0=$(date +%s%N)
docker kill --signal TERM "$CNAME" >/dev/null
for i in $(seq 1 100); do
    running "$CNAME" || break
    sleep 0.1
done
STOP_MS=$((($(date +%s%N) - t0) / 1000000))
EXIT_CODE=$(docker inspect -f '{{.State.ExitCode}}' "$CNAME")
stopped_cleanly() { ! running "$CNAME" && [ "$EXIT_CODE" = 0 ] && [ "$STOP_MS" -lt 5000 ]; }
check "SIGTERM with a client connected: stopped in $STOP_MS ms (< 5000), exit code $EXIT_CODE (0)" \
    stopped_cleanly
orderly_stop() { logs | grep -q '"momobridge.stopping"' && logs | grep -q '"app.stopped"'; }
check "the log shows an orderly stop (momobridge.stopping, app.stopped)" orderly_stop
docker rm -f "$CLIENT" >/dev/null 2>&1 || true

say "checks (restart on the same volume)"
docker start "$CNAME" >/dev/null
check "after a restart /healthz answers again" wait_http
state_kept() {
    [ -n "$ADMIN_CODE" ] && [ "$(on_volume 'cat /data/admin_code' | tr -d '\r\n')" = "$ADMIN_CODE" ] &&
        [ "$(on_volume 'test -s /data/momobridge.db && echo yes')" = yes ]
}
check "the restart keeps the admin code and the database" state_kept
code_once() { [ "$(code_logs)" = 1 ]; } # docker logs holds both starts
check "the admin code is not printed again on the second start" code_once
docker stop -t 5 "$CNAME" >/dev/null

say "checks (/data owned by another uid)"
# As a bind-mounted host directory owned by someone else would be: a volume whose root and
# database (left by an earlier run) belong to uid 4242, prepared by a root helper container.
# Not empty, so Docker does not copy the image's /data (and its owner) into it at the start.
docker volume create "$BADVOL" >/dev/null
docker run --rm --network none -u 0 -v "$BADVOL:/data" --entrypoint sh "$IMAGE" \
    -c 'touch /data/momobridge.db && chown -R 4242:4242 /data'
docker run -d --name "$BADC" --network none -v "$BADVOL:/data" "$IMAGE" >/dev/null
refused_with_fix() {
    local i
    for i in $(seq 1 150); do
        running "$BADC" || break
        sleep 0.2
    done
    local code out
    code=$(docker inspect -f '{{.State.ExitCode}}' "$BADC")
    out=$(docker logs "$BADC" 2>&1)
    echo "running: $(running "$BADC" && echo yes || echo no), exit $code; log:"
    echo "$out" | tail -5
    ! running "$BADC" && [ "$code" != 0 ] && echo "$out" | grep -q "chown -R $APP_UID:$APP_UID" &&
        ! echo "$out" | grep -q Traceback
}
check "it exits with an error naming the fix (chown -R $APP_UID:$APP_UID), no traceback" \
    refused_with_fix
docker logs "$BADC" 2>&1 | grep '"startup.failed"' | cut -c1-600 | sed 's/^/        log: /' || true

if [ "$FAILS" != 0 ]; then
    echo "--- details of the checks ---"
    tail -40 "$LOGS/checks.log"
fi
if [ "$FAILS" = 0 ]; then say "all checks passed ($IMAGE)"; else say "$FAILS check(s) FAILED ($IMAGE)"; fi
[ "$FAILS" = 0 ]
