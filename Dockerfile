# One image for every fleet process: worker, beat and Flower differ only by their command.
#   docker build -t fliplet-workers .                      (add --build-arg EXTRAS=mssql for SQL Server)
FROM python:3.11-slim

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLIPLET_CONFIG_DIR=/configs \
    FLIPLET_AGENT_LOG=-

WORKDIR /app
COPY pyproject.toml README.md ./
COPY fliplet_workers ./fliplet_workers
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin fliplet \
    && mkdir -p /configs && chown -R fliplet /app

# Never root: the configs are mounted read-only and nothing else is written.
USER fliplet
# `docker run fliplet-workers` starts a worker; compose gives beat and Flower their own command.
CMD ["celery", "-A", "fliplet_workers", "worker", "-l", "info"]
