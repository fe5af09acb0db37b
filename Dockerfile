# resolver: a filtering DNS resolver. Build: docker build -t resolver .
# Run:   docker run -p 53:53/udp -p 53:53/tcp -p 9153:9153 resolver
# The image serves deploy/docker.yaml: DNS on port 53 (all addresses), metrics on 9153. Mount your own config
# over /etc/resolver/resolver.yaml to change policy; send SIGHUP (docker kill -s HUP) to reload it.
FROM python:3.11-slim AS build
# A C compiler for setup.py's mypyc build of the hot path; it stays in this stage, the image gets the wheel.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libnghttp2-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md LICENSE ./
COPY resolver ./resolver
COPY blocklists ./blocklists
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# nghttp2's shared library: DoH's HTTP/2 (resolver/net/_h2.c) is linked against it.
RUN apt-get update && apt-get install -y --no-install-recommends libnghttp2-14 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10053 --no-create-home --shell /usr/sbin/nologin resolver
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY deploy/docker.yaml /etc/resolver/resolver.yaml
USER resolver
# Docker lets unprivileged processes bind ports below 1024 inside the container (ip_unprivileged_port_start=0).
EXPOSE 53/udp 53/tcp 9153/tcp
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9153/readyz', timeout=2).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["resolver"]
CMD ["serve", "-c", "/etc/resolver/resolver.yaml"]
