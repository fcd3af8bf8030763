"""The content-addressed store: digests, the hasher, blob stores, snapshots, the stat cache."""
