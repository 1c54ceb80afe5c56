//! drove-runtime (placeholder)
