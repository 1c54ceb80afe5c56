//! Integration tests of `drove-balancer`: every algorithm, stickiness, backups, passive
//! ejection (on paused time), state across reconfiguration, active probes against real
//! sockets, drain waits. One binary (`tests/it/`), one module per concern.

mod active_health;
mod backups;
mod bench;
mod hashing;
mod least_conn;
mod passive;
mod round_robin;
mod state;
mod sticky;
mod support;
mod two_choices;
mod wait_idle;
