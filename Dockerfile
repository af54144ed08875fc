# Multi-stage build of a static, non-root zeroscaler image:
#   make image   (needs a Docker engine; none runs on the development machines)
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /zeroscaler .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /zeroscaler /zeroscaler
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/zeroscaler"]
