# A small CPU image that serves one model with `gptpipe serve`: the ONNX-only build (no
# libtorch), ONNX Runtime's library beside the binary, the model baked in. It suits Cloud
# Run's scale-to-zero: a few tens of MB to pull, a model loaded in well under a second.
#
#   ./scripts/quickstart.sh                          # trains runs/quickstart/train
#   docker build --build-arg MODEL=runs/quickstart/train -t my-gpt2 .
#   docker run -p 8080:8080 my-gpt2                  # then open http://localhost:8080
#
# MODEL is a folder inside the build context: an export stage's output (model.onnx,
# config.json, ...) or a Hugging Face folder with model.safetensors (exported at start).
# The steps below are replayed outside a container by tests/serve/deploy.rs.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --no-default-features --features onnx -p gptpipe

# ONNX Runtime's shared library, from the same wheel the tests use (scripts/requirements.txt).
FROM python:3.11-slim-bookworm AS ort
RUN pip install --no-cache-dir onnxruntime==1.32.0 \
 && cp "$(python -c 'import glob, os, onnxruntime; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[-1])')" /libonnxruntime.so

FROM debian:bookworm-slim
ARG MODEL=runs/quickstart/train
# The library sits beside the binary, where gptpipe looks for it (never in the working folder).
COPY --from=build /src/target/release/gptpipe /app/bin/gptpipe
COPY --from=ort /libonnxruntime.so /app/bin/libonnxruntime.so
COPY ${MODEL} /app/model
USER nobody
WORKDIR /tmp
# Cloud Run and Kubernetes set PORT and send SIGTERM: gptpipe serve reads the one and
# drains on the other (--grace seconds; Cloud Run allows 10).
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/app/bin/gptpipe", "serve", "--host", "0.0.0.0", "--model", "/app/model", "--backend", "onnx", "--device", "cpu"]
