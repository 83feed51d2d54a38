# syntax=docker/dockerfile:1
# llm-exporter: multi-stage build; the final image has no compilers and runs as a fixed non-root UID.
#   docker build --build-arg VERSION=0.1.0 -t llm-exporter .
#   (the version comes from git tags; the build context has no .git, so it is passed in: VERSION)
#   docker run -p 9787:9787 -v ./config.yaml:/etc/llm-exporter/config.yaml:ro llm-exporter

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter ./exporter
ARG VERSION=0.0.0+unknown
RUN python -m venv /opt/llm-exporter \
 && SETUPTOOLS_SCM_PRETEND_VERSION="$VERSION" /opt/llm-exporter/bin/python -m pip install --no-cache-dir .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="llm-exporter" \
      org.opencontainers.image.description="Prometheus exporter for LLM inference servers (llama.cpp, vLLM, SGLang, TGI, NVIDIA GPUs)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/llm-exporter /opt/llm-exporter
ENV PATH="/opt/llm-exporter/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    LLM_EXPORTER_CONFIG=/etc/llm-exporter/config.yaml
USER 65532:65532
EXPOSE 9787
# The health check reads the same config, $LLM_EXPORTER_LISTEN and $LLM_EXPORTER_WEB_CONFIG as the exporter,
# so it follows a changed port or TLS (set the port with the config's listen or $LLM_EXPORTER_LISTEN).
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
  CMD ["llm-exporter", "--healthcheck"]
ENTRYPOINT ["llm-exporter"]
