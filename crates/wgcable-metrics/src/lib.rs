//! wgcable-metrics (being written).
