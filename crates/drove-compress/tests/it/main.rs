//! Integration tests of drove-compress through its public API: negotiation, the
//! decision and its header edits, the encoders (decoded with the same crates).

mod decide;
mod encoder;
mod negotiate;
