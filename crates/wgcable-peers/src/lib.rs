//! wgcable-peers (being written).
