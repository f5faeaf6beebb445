//! wgcable-netlink (being written).
