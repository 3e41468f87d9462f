"""Networks: GAN generator/discriminator (``gan``)."""
