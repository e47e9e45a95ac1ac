"""diamusic: fine-tune the Dia codec language model on music and compare codebook delay patterns."""

__version__ = "0.1.0"
