//! PostgreSQL's outbox horizon: an event whose transaction commits late must not be
//! overtaken by one with a larger id that committed first.
