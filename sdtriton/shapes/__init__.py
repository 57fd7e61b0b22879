"""The embedded default model ``shapes``: a small SD-architecture model trained here on a synthetic world."""
