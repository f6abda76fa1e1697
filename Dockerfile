FROM python:3.11-slim

# The distribution installs top-level packages named bridge/adapters/plugins/storage: fine inside
# this image, never to be published to a package index as is.
RUN useradd --create-home --uid 10001 momo \
    && mkdir /data && chown momo:momo /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY adapters ./adapters
COPY plugins ./plugins
COPY storage ./storage
RUN pip install --no-cache-dir .

# Listen on all interfaces inside the container and keep the database on the volume.
ENV MOMOBRIDGE_SERVER__HOST=0.0.0.0 \
    MOMOBRIDGE_STORAGE__PATH=/data/momobridge.db \
    PYTHONUNBUFFERED=1

VOLUME /data
EXPOSE 3080
USER momo

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3080/healthz', timeout=4)" || exit 1

CMD ["momobridge", "serve", "--config", "/data/config.toml"]
