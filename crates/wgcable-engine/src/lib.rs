//! wgcable-engine (being written).
