"""Data: embedded corpora, user files and hub datasets, tokenization and packing."""
