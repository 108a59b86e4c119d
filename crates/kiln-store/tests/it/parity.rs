//! The two migration folders produce the same tables and columns.
