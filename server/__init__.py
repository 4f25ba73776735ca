"""The fraud-scoring server: onnxruntime behind a small Starlette app. Never imports TensorFlow."""
