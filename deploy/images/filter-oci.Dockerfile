# The filter as an Istio WasmPlugin image, ghcr.io/example/bridle-filter (the `url` of
# deploy/istio/wasmplugins.yaml): exactly one layer holding plugin.wasm, the Docker variant
# of the format Istio pulls. Build from the repository root after `make wasm`:
#
#   docker build -f deploy/images/filter-oci.Dockerfile -t ghcr.io/example/bridle-filter:0.1.0 .
#
# Not built in CI (no container daemon there).
FROM scratch
COPY target/wasm32-wasip1/release/bridle_filter.wasm ./plugin.wasm
