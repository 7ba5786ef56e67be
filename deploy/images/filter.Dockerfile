# The filter image for plain Kubernetes, ghcr.io/example/bridle/filter: a shell, `cp` and
# /bridle_filter.wasm, copied into Envoy's pod by an init container
# (deploy/kubernetes/envoy.yaml). Build from the repository root after `make wasm`:
#
#   docker build -f deploy/images/filter.Dockerfile -t ghcr.io/example/bridle/filter:0.1.0 .
#
# Not built in CI (no container daemon there).
FROM busybox:1.37
COPY target/wasm32-wasip1/release/bridle_filter.wasm /bridle_filter.wasm
USER 101:101
