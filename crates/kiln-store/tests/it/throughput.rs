//! A sanity run of the engine's benchmark load through `commit` on SQLite.
