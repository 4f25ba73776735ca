"""Convert a trained run to a self-contained ONNX artifact that takes raw features."""
