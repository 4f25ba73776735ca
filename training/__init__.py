"""Train the hybrid LSTM-CNN fraud model on synthetic or credit-card data."""
