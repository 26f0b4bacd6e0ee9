//! Tests of `Streams` as a whole.
