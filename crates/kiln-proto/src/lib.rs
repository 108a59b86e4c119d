//! kiln-proto (being written).
