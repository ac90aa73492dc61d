# One base stage shared by a test target and a prod target: building prod skips test.
FROM alpine:3.20 AS base
RUN apk add --no-cache ca-certificates
WORKDIR /app
COPY . .

FROM base AS test
RUN ./run-tests.sh

FROM base AS prod
CMD ["./serve"]
