# who, multi-stage: compiled in the golang image, the binary copied alone onto scratch.
ARG REGISTRY=docker.io
ARG GO_VERSION=1.26

FROM ${REGISTRY}/library/golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod main.go ./
# The Go build cache persists between builds on the cache volume.
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags=-s -o /out/who .

FROM scratch
COPY --from=build /out/who /who
USER 65534
EXPOSE 8080
ENTRYPOINT ["/who"]
