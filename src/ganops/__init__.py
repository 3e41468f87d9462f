"""ganops: train GANs on your own pictures, run style transfer, serve the best generator — reproducibly."""

__version__ = "0.1.0"
