"""Torch building blocks shared by several methods (``fc``: fully connected encoders, decoders, discriminators)."""
