//! `drove verify` end to end (owned by the verify work).
