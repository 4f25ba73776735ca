"""The servers a user would otherwise pick, on the shipped ONNX model: `python -m benchmarks.peers`.

Each `<peer>_app` module runs inside that peer's own venv (.venv-peers/<peer>/) and imports only
the peer, numpy and onnxruntime; the runner (`__main__`) and everything it imports run in .venv.
"""
