# flashguard, single node: one process owns the state, journal and snapshots in the /data volume.
#
#   docker build -t flashguard .
#   docker run -d --name flashguard -p 8080:8080 -v flashguard-data:/data \
#     -e FLASHGUARD_ADMIN_TOKEN=change-me --stop-timeout 300 flashguard
#
# With a configuration of your own, mounted read-only (it seeds an empty /data; see README):
#   docker run ... -v "$PWD/examples:/etc/flashguard:ro" flashguard \
#     serve --host 0.0.0.0 --data /data --config /etc/flashguard/double11-phone-launch.toml

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# What the package is built from: its metadata and the packages pyproject.toml lists (the tests
# and benchmarks stay out of the image).
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
COPY actors ./actors
COPY snapshots ./snapshots
COPY cluster ./cluster
COPY node ./node
COPY rules ./rules
COPY domain ./domain
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin flashguard \
    && mkdir -p /data \
    && chown flashguard:flashguard /data \
    && chmod 0700 /data

# The data directory holds the journal, the snapshots and the decision log (and the admin token
# with the rest of the configuration): keep it on a volume, and private.
VOLUME /data
WORKDIR /data
USER flashguard

EXPOSE 8080

# /healthz needs no token and answers once the state is restored and the server listens. The
# start period covers a large restore (about 7 s at a million users).
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]

# SIGTERM (docker stop) writes the final snapshot before the process ends: give it time with
# `docker stop -t 300` or `--stop-timeout 300` (docker's default is 10 s; a kill before the end
# loses nothing acknowledged, the journal holds it, but the next start replays more).
STOPSIGNAL SIGTERM
ENTRYPOINT ["flashguard"]
CMD ["serve", "--host", "0.0.0.0", "--data", "/data"]
