# node-runtime: tested and assembled in the Node.js image, run on a distroless-style
# runtime (no shell, no package manager, user nonroot). The app needs no npm packages.
ARG REGISTRY=docker.io
ARG DISTROLESS=gcr.io/distroless

FROM ${REGISTRY}/library/node:18 AS build
WORKDIR /app
COPY package.json server.js greeting.js greeting.test.js ./
RUN node --test \
    && mkdir dist && cp package.json server.js greeting.js dist/

FROM ${DISTROLESS}/nodejs18-debian12:nonroot
WORKDIR /app
COPY --from=build /app/dist/ /app/
EXPOSE 8080
# The runtime's entrypoint is node itself: CMD names the script.
CMD ["/app/server.js"]
