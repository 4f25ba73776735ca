"""Feature definitions shared by training and the server (no TensorFlow, no server code)."""
