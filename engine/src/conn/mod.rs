//! One connection, sans-IO.
pub mod range_set;
pub mod recovery;
pub mod streams;
