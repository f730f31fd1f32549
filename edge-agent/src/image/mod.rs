//! Images: pull, verify, unpack, cache (to be written).
