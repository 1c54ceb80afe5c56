//! drove-test-support (placeholder)
