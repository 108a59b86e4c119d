//! `strategy.matrix` expansion with GitHub's include/exclude rules.
