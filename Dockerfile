# Production image of dialguard (worker, simulator, tools). Built by docker-compose.yml.
# The number stage's fold is compiled (streams/native, Rust): a build stage with rustup's
# toolchain builds the wheel; the image itself carries no compiler.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services services
COPY streams streams
COPY online_models online_models
COPY dashboards dashboards
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM python:3.11-slim
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV DIALGUARD_HOME=/var/lib/dialguard \
    DIALGUARD_METRICS_HOST=0.0.0.0
VOLUME /var/lib/dialguard
ENTRYPOINT ["dialguard"]
CMD ["--help"]
