//! Metrics, dashboard and status end to end (owned by the observability work).
