//! Config → supervisor specs.

use drove_config::{self as config, Config};
use drove_supervisor::{self as sup, ServiceSpec};

fn probe(p: &config::ProbeConfig) -> sup::Probe {
    sup::Probe {
        kind: match &p.kind {
            config::ProbeKind::Http { path } => sup::ProbeKind::Http {
                path: path.clone(),
                expect_status: p.expect_status,
            },
            config::ProbeKind::Tcp { addr } => sup::ProbeKind::Tcp { addr: *addr },
            config::ProbeKind::Command { cmd } => sup::ProbeKind::Command(cmd.clone()),
        },
        interval: p.interval,
        timeout: p.timeout,
        rise: p.rise,
        fall: p.fall,
        start_timeout: p.start_timeout,
    }
}

fn signal(s: config::Signal) -> sup::Signal {
    match s {
        config::Signal::Term => sup::Signal::SIGTERM,
        config::Signal::Int => sup::Signal::SIGINT,
        config::Signal::Quit => sup::Signal::SIGQUIT,
        config::Signal::Hup => sup::Signal::SIGHUP,
        config::Signal::Kill => sup::Signal::SIGKILL,
        config::Signal::Usr1 => sup::Signal::SIGUSR1,
        config::Signal::Usr2 => sup::Signal::SIGUSR2,
    }
}

/// Fills in `{drove}` with the running executable (shell-quoted in shell commands); the
/// rest stays a template (escapes included) for the supervisor to render per instance.
fn with_drove_exe(c: &config::CommandSpec) -> sup::CommandSpec {
    let exe = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "drove".into());
    match c {
        config::CommandSpec::Shell(s) => {
            let quoted = format!("'{}'", exe.replace('\'', "'\\''"));
            sup::CommandSpec::Shell(drove_template::fill(s, &[("drove", &quoted)]))
        }
        config::CommandSpec::Argv(v) => sup::CommandSpec::Argv(
            v.iter()
                .map(|a| drove_template::fill(a, &[("drove", &exe)]))
                .collect(),
        ),
    }
}

/// The supervisor's specs for every `[services.NAME]`.
pub fn specs(config: &Config, balanced: Option<&str>) -> Vec<ServiceSpec> {
    config
        .services
        .iter()
        .map(|s| ServiceSpec {
            name: s.name.clone(),
            command: with_drove_exe(&s.command),
            instances: s.instances,
            port: match s.port {
                config::PortSpec::Base(b) => sup::PortSpec::Base(b),
                config::PortSpec::Auto => sup::PortSpec::Auto,
                config::PortSpec::None => sup::PortSpec::None,
            },
            env: s.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cwd: s.cwd.clone(),
            ready: s.ready.as_ref().map(probe),
            health: s.health.as_ref().map(probe),
            stop_signal: signal(s.stop.signal),
            stop_grace: s.stop.grace,
            restart: sup::RestartPolicy {
                policy: match s.restart.policy {
                    config::RestartPolicy::Always => sup::Policy::Always,
                    config::RestartPolicy::OnFailure => sup::Policy::OnFailure,
                    config::RestartPolicy::Never => sup::Policy::Never,
                },
                initial_delay: s.restart.initial_delay,
                max_delay: s.restart.max_delay,
                reset_after: s.restart.reset_after,
                crashloop_after: s.restart.crashloop_after,
            },
            max_memory: s.max_memory,
            depends_on: s.depends_on.clone(),
            logs: sup::LogSpec {
                dir: s.logs.dir.clone(),
                max_size: s.logs.max_size,
                keep: s.logs.keep,
            },
            balanced: balanced == Some(s.name.as_str()),
        })
        .collect()
}
