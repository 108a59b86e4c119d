//! Integration tests of kiln-engine through its public API, on a real store (SQLite in a
//! temporary data folder) and real processes.

mod packages;
