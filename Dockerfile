# scaleset-listener: one process serving the scale sets listed in RUNNERS (docs/deploy.md).
#
#   docker build -t scaleset-listener .
#   docker run --env-file my.env scaleset-listener check-config
#   docker run --env-file my.env -v ...:ro scaleset-listener            # `scaleset-listener run`
#
# The default (last) stage is the production image: the service only. The `demo` stage is the
# same image plus the simulator (scaleset-listener-sim, sim/) for `scaleset-listener demo`:
#   docker build --target demo -t scaleset-listener-demo .
#
# BASE is the official slim image by default. Without a registry, scripts/container-check builds
# from a local Debian bookworm base with pre-downloaded wheels:
#   --build-arg BASE=localhost/py311-bookworm-slim:local
#   --build-arg PIP_INSTALL_OPTIONS="--no-index --find-links /wheelhouse"  (-v wheels:/wheelhouse)
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# Empty: the project's dependencies (and the build backend) come from PyPI.
ARG PIP_INSTALL_OPTIONS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md /src/
COPY scaleset_listener /src/scaleset_listener
COPY provisioners /src/provisioners
COPY reconciler /src/reconciler
# python3 from PATH: the official image's own build and Debian's packaged one both fit. pip
# builds a wheel from /src and installs it (not editable) with its dependencies; versions are
# those of pyproject.toml's ranges at build time. PIP_INSTALL_OPTIONS is split into words.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install ${PIP_INSTALL_OPTIONS} /src

# The simulator on top of the service's venv; the production stage never sees this one.
FROM build AS build-demo
ARG PIP_INSTALL_OPTIONS=""
COPY sim/pyproject.toml sim/README.md /src/sim/
COPY sim/simulator /src/sim/simulator
RUN /opt/venv/bin/pip install ${PIP_INSTALL_OPTIONS} /src/sim

FROM ${BASE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
# A fixed uid, so mounted keys can be made readable to it (chown 10001, or a pod's fsGroup).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/scaleset \
    --shell /usr/sbin/nologin scaleset
WORKDIR /home/scaleset
# METRICS_ADDR's default port (/healthz and /readyz when ENABLE_METRICS=true).
EXPOSE 8080
# The command's name as entry point and `run` as the default argument: `docker run IMAGE` runs
# the service, `docker run IMAGE check-config` (or `reconcile --dry-run`; `demo` in the demo
# image) runs the other commands without --entrypoint.
ENTRYPOINT ["scaleset-listener"]
CMD ["run"]

FROM runtime AS demo
# Same BASE in every stage, so the venv's interpreter path holds in this one too.
COPY --from=build-demo /opt/venv /opt/venv
USER 10001:10001

# The production image (the default target): the service's venv only, no simulator.
FROM runtime AS production
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
