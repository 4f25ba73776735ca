"""Package a binary classifier converted to ONNX by another toolkit under the model contract."""
