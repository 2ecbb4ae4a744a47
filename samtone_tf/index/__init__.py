"""Nearest-neighbour search over corpus embeddings: exact and ScaNN indexes and their files (`search`), ScaNN tuned
to a recall target (`tuning`) and partitioned search in pure TensorFlow ops (`partitioned`). Imports only ground
modules. `python -m samtone_tf.index` (`__main__`) builds and checks indexes."""
