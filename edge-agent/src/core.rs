//! (agent-core: to be written)
