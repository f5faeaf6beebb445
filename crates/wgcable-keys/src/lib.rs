//! wgcable-keys (being written).
