"""Torch building blocks shared by several methods. Import the submodule you need; this package imports nothing.

- ``fc``: fully connected encoders, decoders, discriminators (the GAN family).
- ``frontend``: batched log-mel front end (F_LM of STgram-MFN / TASTgram / FGASpecNet).
- ``stgram``: TgramNet (STgram-MFN) and TAgram (TASTgram).
- ``specnet``: SpecNet, FourierConv2d, SpectralBatchNorm2d (FGASpecNet).
- ``fga``: frequency-gated attention (FGASpecNet).
- ``mobilefacenet``: MobileFaceNet and MFNSE.
- ``margins``: ArcFace, Noisy-ArcMix, SoftTriple.
- ``classifiers``: the STgram-MFN / TASTgram / FGASpecNet family as one network with switches.
- ``ecapa``: ECAPA-TDNN (SpeechBrain); ``cnn6``: PANNs' Cnn6; ``backbones``: the four AITHU backbones by name.

docs/nn.md describes each block, its paper and its shapes.
"""
