//! wgcable-api (being written).
