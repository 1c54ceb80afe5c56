//! The demo web app that `drove demo` runs and that drove's default instances serve: a
//! small HTTP/1 server (hyper, no framework) whose endpoints exercise what a load
//! balancer and a supervisor must get right — identity (`/whoami`, `X-Demo-Instance` on
//! every response), the health endpoints of the users' own apps (`/health` detailed,
//! `/health/ready` after a delay and not while stopping, `/health/live` always), shared
//! sessions (`/session`, in memory or in Redis), slow, failing, CPU-hungry and leaking
//! requests (`/slow`, `/status/{code}`, `/work`, `/leak`), streaming (`/echo`), header
//! inspection (`/echo/headers`), POST replay detection (`/count`, `/stats`) and
//! WebSockets (`/ws`). It owns its endpoints and its graceful shutdown; it knows nothing
//! of drove's configuration, supervisor or balancer, only the environment variables the
//! supervisor sets. Main items: [`DemoOptions`], [`run`] (tests pass a listener bound to
//! port 0) and [`main_from_env`] (the `drove demo` entry point).
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /` | HTML: `drove demo — instance web.2 (pid N, port P)` |
//! | `GET /health` | detailed health: 200 `{"status":"ok","instance","instance_id","pid","port","uptime_ms","requests","in_flight","connections","sessions"}` when ready, 503 with `"status":"starting"`/`"stopping"` otherwise |
//! | `GET /health/ready`, `GET /ready` | readiness: 503 until `ready_delay` has passed and again once shutdown starts, else 200 |
//! | `GET /health/live` | liveness: 200 `{"status":"alive","uptime_ms"}` whenever the process answers, starting and stopping included |
//! | `GET /metrics` | the instance's own metrics, Prometheus text format (`demo_requests_total`, `demo_requests_in_flight`, `demo_connections`, `demo_leaked_bytes`, `demo_uptime_seconds`, ...) |
//! | `GET /whoami` | `{"instance","pid","port","uptime_ms"}` |
//! | `GET /session` | cookie `demo_session`; `{"session","count","instance","store"}`; 503 if Redis is unreachable (within ~1 s) |
//! | `GET /slow?ms=N` | sleeps N ms (at most 60 000), `{"slept_ms":N}` |
//! | `GET /status/{code}` | that status (200..=599), 400 otherwise |
//! | `GET /work?cpu_ms=N` | burns N ms of CPU (at most 10 000) on a blocking thread |
//! | `GET /leak?mb=N` | keeps N more MiB resident (at most 1024 per call), `{"leaked_mb":total}` |
//! | `GET /ws` | WebSocket echo (text and binary) |
//! | `POST /echo` | streams the body back with its content-type |
//! | `GET /echo/headers` | the request headers as a JSON object |
//! | `POST /count` | `{"bytes":n,"instance"}`, counted in `/stats` |
//! | `GET /stats` | `{"requests":total,"post_count":n}` |
//! | anything else | 404 JSON |

mod app;
mod options;
mod server;
mod session;
mod ws;

pub use options::DemoOptions;
pub use server::{main_from_env, run};
