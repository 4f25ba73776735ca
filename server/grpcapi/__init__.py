"""The Open Inference Protocol over gRPC: a thin layer over the same service as HTTP."""
