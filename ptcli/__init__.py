"""ptcli: pre-train neural networks on unlabeled data, fine-tune them on few labels."""

__version__ = "0.1.0"
