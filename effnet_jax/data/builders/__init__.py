"""TFDS builders (array_record output; TensorFlow not needed: images go in as encoded bytes)."""
