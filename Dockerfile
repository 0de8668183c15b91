# Production image of dialguard (worker, simulator, tools). Built by docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services services
COPY streams streams
COPY online_models online_models
COPY dashboards dashboards
RUN pip install --no-cache-dir .
ENV DIALGUARD_HOME=/var/lib/dialguard \
    DIALGUARD_METRICS_HOST=0.0.0.0
VOLUME /var/lib/dialguard
ENTRYPOINT ["dialguard"]
CMD ["--help"]
