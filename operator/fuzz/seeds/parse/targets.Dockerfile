# targets: one Dockerfile, two targets. `test` runs the tests and `prod` is the image;
# both build from the shared `base` and `src` stages, and the ImageBuild pushes only prod.
ARG REGISTRY=docker.io
ARG GO_VERSION=1.26

FROM ${REGISTRY}/library/golang:${GO_VERSION} AS base
WORKDIR /src
ENV CGO_ENABLED=0
COPY go.mod ./

FROM base AS src
COPY *.go ./

FROM src AS test
RUN --mount=type=cache,target=/root/.cache/go-build go test -v ./...

FROM src AS build
RUN --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags=-s -o /out/greet .

FROM scratch AS prod
COPY --from=build /out/greet /greet
USER 65534
EXPOSE 8080
ENTRYPOINT ["/greet"]
