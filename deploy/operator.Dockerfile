# The operator image: the static (musl) stagecoach binary and CA certificates, nothing else.
# Built by `stagecoach build` itself (e2e/cluster install); the context is a directory holding
# `stagecoach` and `ca-certificates.crt`. The same binary runs the controller and, copied into
# builder pods by an init container, `stagecoach stage`.
FROM scratch
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY stagecoach /stagecoach
USER 65532:65532
ENTRYPOINT ["/stagecoach"]
CMD ["controller"]
