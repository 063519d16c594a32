# syntax=docker/dockerfile:1
# The notify service's image: `pacsflow notify`, the worklist page and API, webhooks.
#
# pacsflow built without cgo (the tensorflow build tag is off, so pkg/model has no TensorFlow
# and the binary is static: notify never loads a model), on distroless static, run as the
# non-root user 65532. Build from the repository root:
#
#   docker build -f deploy/docker/notify.Dockerfile -t pacsflow-notify:0.1.0 .
#
# deploy/deploy_test.go runs the same go build command and checks the binary is static.
ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
# What ./cmd/pacsflow is built from (its packages and embedded files).
COPY cmd/ cmd/
COPY internal/ internal/
COPY model/ model/
COPY pkg/ pkg/
COPY schemas/ schemas/
COPY services/ services/
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags="-s -w" -o /out/pacsflow ./cmd/pacsflow

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pacsflow /usr/local/bin/pacsflow
USER 65532:65532
# HTTP: the page, the API, /metrics, /healthz, /readyz (with --http-addr).
EXPOSE 8082
ENTRYPOINT ["/usr/local/bin/pacsflow"]
CMD ["notify", "--help"]
