# static-site: a Node.js stage generates the pages, an nginx stage serves them.
ARG REGISTRY=docker.io

FROM ${REGISTRY}/library/node:18 AS build
WORKDIR /site
COPY build.js ./
COPY about.txt news.txt site.css pages/
RUN node build.js pages /out

FROM ${REGISTRY}/library/nginx:1.22
COPY nginx.conf /etc/nginx/conf.d/default.conf
COPY --from=build /out/ /usr/share/nginx/html/
EXPOSE 8080
