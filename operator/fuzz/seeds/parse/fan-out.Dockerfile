# Independent stages that can run at the same time, gathered by a final stage.
FROM busybox AS assets
RUN mkdir /out && echo css > /out/site.css

FROM golang:1.23 AS server
RUN mkdir /out && echo bin > /out/server

FROM debian:bookworm AS docs
RUN mkdir /out && echo doc > /out/index.html

FROM busybox
COPY --from=assets /out/ /srv/static/
COPY --from=server /out/server /usr/local/bin/server
RUN --mount=type=bind,from=docs,source=/out,target=/docs cp -r /docs /srv/docs
COPY --from=nginx:1.27 /etc/nginx/mime.types /etc/mime.types
