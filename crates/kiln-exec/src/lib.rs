//! kiln-exec (being written).
