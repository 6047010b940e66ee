"""vaelab: variational autoencoders on MNIST, driven by DVC and tracked in MLflow."""
