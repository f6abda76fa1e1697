# MomoBridge. Build: docker build -t momobridge .   Check it: make docker-test
#
# The base is a build argument so machines that reach no image registry can build from a local
# stand-in with the same layout (Python 3.11 with `python`/`pip` on PATH; scripts/docker_test.sh
# makes one from Debian's archive): docker build --build-arg BASE_IMAGE=<local image> .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# A fixed uid/gid, so a bind-mounted /data can be prepared on the host with
# `chown -R 10001:10001 <dir>` (the bridge names that fix when it cannot write there).
RUN groupadd --gid 10001 momo \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /data --shell /usr/sbin/nologin momo \
    && mkdir /data && chown momo:momo /data

WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# Dependencies first, exactly as locked (versions and hashes; `make lock` refreshes the file):
# this layer stays cached while only the bridge's own code changes.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# The distribution installs top-level packages named bridge/adapters/plugins/storage: fine inside
# this image, never to be published to a package index as is. --no-deps: everything it needs is
# already installed from the lock, and nothing unlocked may slip in here.
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY adapters ./adapters
COPY plugins ./plugins
COPY storage ./storage
# (pip compiles the bytecode as it installs: no .pyc writes, and no compile cost, at each start.)
# `pip check` fails the build when pyproject.toml needs something the lock does not hold (a
# dependency added without `make lock`), rather than the server at its first import.
RUN pip install --no-deps . && pip check

# Listen on all interfaces inside the container and keep the database on the volume.
ENV MOMOBRIDGE_SERVER__HOST=0.0.0.0 \
    MOMOBRIDGE_STORAGE__PATH=/data/momobridge.db \
    PYTHONUNBUFFERED=1

VOLUME /data
EXPOSE 3080
USER 10001:10001

# `momobridge healthcheck` reads the same /data/config.toml and MOMOBRIDGE_* variables as the
# server, so it probes the configured port, not a fixed 3080. It asks /healthz (the process
# serves), not /readyz: an upstream outage is not something a restart can fix. The start period
# covers a slow first start (database migrations, replies recovered after a crash, a cold and
# busy host) while MomoHub or a provider is slow to answer: failures in it do not count, and the
# first success ends it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["momobridge", "healthcheck", "--config", "/data/config.toml"]

CMD ["momobridge", "serve", "--config", "/data/config.toml"]
