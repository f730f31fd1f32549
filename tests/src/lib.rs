//! End-to-end harness for the fleet binaries.
