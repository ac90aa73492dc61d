# Global ARGs choose the base images; --build-arg overrides them.
ARG REGISTRY=docker.io/library
ARG GO_VERSION=1.23
FROM ${REGISTRY}/golang:${GO_VERSION} AS build
ARG GO_VERSION
RUN echo "building with Go ${GO_VERSION}" > /version

FROM ${REGISTRY}/busybox:${BUSYBOX_TAG:-latest}
COPY --from=build /version /version
