//! kiln-store (being written).
