"""The trainer's parts below its loop (macosnet_jax/train.py): optimizer, metric logging, work dir."""
