# fanout: three independent stages (two Go programs and the static assets) run at the same
# time, each in its own pod, and the final stage copies their results together.
ARG REGISTRY=docker.io
ARG GO_VERSION=1.26

FROM ${REGISTRY}/library/golang:${GO_VERSION} AS api
WORKDIR /src
COPY go.mod api.go ./
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /out/api api.go

FROM ${REGISTRY}/library/golang:${GO_VERSION} AS worker
WORKDIR /src
COPY go.mod worker.go ./
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /out/worker worker.go

FROM ${REGISTRY}/library/busybox AS assets
COPY index.html style.css /in/
RUN mkdir /out && cp /in/index.html /out/ \
    && sed -e 's|/\*.*\*/||' -e '/^[[:space:]]*$/d' /in/style.css > /out/style.css

FROM scratch
COPY --from=api /out/api /api
COPY --from=worker /out/worker /worker
COPY --from=assets /out/ /srv/assets/
USER 65534
EXPOSE 8080
ENTRYPOINT ["/api"]
