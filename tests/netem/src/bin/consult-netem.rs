//! Run a command in an emulated network, for tests written in other languages (the browser
//! tests): `consult-netem run --peers patient,doctor [--max-seconds 900] -- node --test x.mjs`.
//!
//! It makes the lab, runs the command inside the router's namespace (where the test starts the
//! service and the relay), and removes the lab when the command ends, or kills the command after
//! `--max-seconds`, or when it is itself told to stop (SIGINT, SIGTERM, SIGHUP: the command's
//! process group gets SIGTERM, and SIGKILL 5 s later). The command finds the lab in `CONSULT_LAB` (JSON: the router's namespace and
//! address, each peer's namespace and address, and a control socket) and changes it by writing one
//! JSON request per line to the control socket, reading one JSON answer per line:
//!
//! ```text
//! {"op":"impair","peer":"patient","loss_percent":3,"rate_kbit":300,"delay_ms":75,"jitter_ms":15}
//! {"op":"down","peer":"patient","down":true}
//! {"op":"block_udp","peer":"patient","blocked":true}
//! {"op":"move","peer":"patient"}            → {"ok":true,"address":"10.77.9.2"}
//! ```

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use consult_netem::{Impairment, Lab, LabError};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Impair {
        peer: String,
        #[serde(default)]
        loss_percent: f64,
        #[serde(default)]
        rate_kbit: Option<u32>,
        #[serde(default)]
        delay_ms: u64,
        #[serde(default)]
        jitter_ms: u64,
    },
    Down {
        peer: String,
        down: bool,
    },
    BlockUdp {
        peer: String,
        blocked: bool,
    },
    Move {
        peer: String,
    },
}

fn answer(lab: &Lab, line: &str) -> serde_json::Value {
    let request: Request = match serde_json::from_str(line) {
        Ok(request) => request,
        Err(e) => return json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    let done: Result<serde_json::Value, LabError> = match request {
        Request::Impair {
            peer,
            loss_percent,
            rate_kbit,
            delay_ms,
            jitter_ms,
        } => lab
            .impair(
                &peer,
                &Impairment {
                    loss_percent,
                    rate_kbit,
                    delay: Duration::from_millis(delay_ms),
                    jitter: Duration::from_millis(jitter_ms),
                },
            )
            .map(|()| json!({"ok": true})),
        Request::Down { peer, down } => lab.set_down(&peer, down).map(|()| json!({"ok": true})),
        Request::BlockUdp { peer, blocked } => {
            lab.block_udp(&peer, blocked).map(|()| json!({"ok": true}))
        }
        Request::Move { peer } => lab
            .move_peer(&peer)
            .map(|address| json!({"ok": true, "address": address.to_string()})),
    };
    done.unwrap_or_else(|e| json!({"ok": false, "error": e.to_string()}))
}

/// Answer the requests on one control connection (the lab is only borrowed: when the command
/// ends, the lab goes even while a connection is open).
fn serve(lab: &Weak<Lab>, stream: UnixStream) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut writer = writer;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let Some(lab) = lab.upgrade() else { return };
        let reply = answer(&lab, &line);
        if writeln!(writer, "{reply}").is_err() {
            return;
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("usage: consult-netem run --peers a,b[,…] [--max-seconds N] -- command [args…]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(split) = args.iter().position(|a| a == "--") else {
        return usage();
    };
    let (options, command) = args.split_at(split);
    let command = &command[1..];
    if options.first().map(String::as_str) != Some("run") || command.is_empty() {
        return usage();
    }
    let mut peers = Vec::new();
    let mut max = Duration::from_secs(900);
    let mut rest = options[1..].iter();
    while let Some(option) = rest.next() {
        match (option.as_str(), rest.next()) {
            ("--peers", Some(list)) => peers = list.split(',').map(str::to_owned).collect(),
            ("--max-seconds", Some(n)) => match n.parse() {
                Ok(n) => max = Duration::from_secs(n),
                Err(_) => return usage(),
            },
            _ => return usage(),
        }
    }
    // Told to stop, the lab still goes (and what the command started): the signal's number, which
    // the loop below watches, set before the lab exists.
    let stop = Arc::new(AtomicUsize::new(0));
    for signal in [
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ] {
        let number = usize::try_from(signal).unwrap_or(1);
        if let Err(e) = signal_hook::flag::register_usize(signal, stop.clone(), number) {
            eprintln!("consult-netem: cannot watch signal {signal}: {e}");
            return ExitCode::from(1);
        }
    }
    let names: Vec<&str> = peers.iter().map(String::as_str).collect();
    let lab = match Lab::new(&names) {
        Ok(lab) => Arc::new(lab),
        Err(e) => {
            eprintln!("consult-netem: cannot make the lab (root, ip, nft and tc are needed): {e}");
            return ExitCode::from(1);
        }
    };
    // A directory of our own (created here, so nobody prepared it for us).
    let dir = std::env::temp_dir().join(format!(
        "consult-netem-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    if let Err(e) = std::fs::create_dir(&dir) {
        eprintln!("consult-netem: {}: {e}", dir.display());
        return ExitCode::from(1);
    }
    let control = dir.join("control.sock");
    let _ = std::fs::remove_file(&control);
    let listener = match UnixListener::bind(&control) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("consult-netem: control socket {}: {e}", control.display());
            return ExitCode::from(1);
        }
    };
    {
        let lab = Arc::downgrade(&lab);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let lab = lab.clone();
                std::thread::spawn(move || serve(&lab, stream));
            }
        });
    }
    let mut description = json!({
        "router": lab.router().name(),
        "service_ip": lab.service_ip().to_string(),
        "control": control.display().to_string(),
        "peers": {},
    });
    for name in &names {
        if let (Ok(namespace), Ok(address)) = (lab.namespace(name), lab.address(name)) {
            description["peers"][*name] =
                json!({"namespace": namespace.name(), "address": address.to_string()});
        }
    }
    // Told to stop while the lab was being made: nothing is started.
    if stop.load(Ordering::Relaxed) != 0 {
        let _ = std::fs::remove_dir_all(&dir);
        remove(lab);
        return exit_for(stop.load(Ordering::Relaxed));
    }
    // In a process group of its own, so that whatever it starts (browsers, servers) is stopped
    // with it on a timeout.
    let mut child = match lab
        .router()
        .command(&command[0])
        .args(&command[1..])
        .env("CONSULT_LAB", description.to_string())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("consult-netem: cannot run {}: {e}", command[0]);
            return ExitCode::from(1);
        }
    };
    let deadline = Instant::now() + max;
    let mut terminated: Option<Instant> = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                eprintln!("consult-netem: {} ran past {max:?}: stopped", command[0]);
                kill_group(&mut child);
                break None;
            }
            Ok(None) if terminated.is_some_and(|at| at.elapsed() >= Duration::from_secs(5)) => {
                kill_group(&mut child);
                break None;
            }
            Ok(None) if terminated.is_none() && stop.load(Ordering::Relaxed) != 0 => {
                eprintln!("consult-netem: told to stop: stopping {}", command[0]);
                signal_group(&child, "TERM");
                terminated = Some(Instant::now());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => break None,
        }
    };
    // Whatever the command started and left behind goes too (it would hold the lab's namespaces).
    signal_group(&child, "KILL");
    let _ = std::fs::remove_dir_all(&dir);
    remove(lab);
    if terminated.is_some() {
        return exit_for(stop.load(Ordering::Relaxed));
    }
    match status.and_then(|s| s.code()) {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(1),
    }
}

/// Send `signal` (a name `kill` knows) to the command's process group.
fn signal_group(child: &std::process::Child, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{}", child.id())])
        .status();
}

/// Kill the command's process group, and reap the command.
fn kill_group(child: &mut std::process::Child) {
    signal_group(child, "KILL");
    let _ = child.kill();
    let _ = child.wait();
}

/// Remove the lab once no control request holds it (each holds it for one request).
fn remove(lab: Arc<Lab>) {
    let waited = Instant::now();
    while Arc::strong_count(&lab) > 1 && waited.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(lab);
}

/// The exit status after a signal: 128 + its number, as a shell reports it.
fn exit_for(signal: usize) -> ExitCode {
    ExitCode::from(u8::try_from(128 + signal).unwrap_or(1))
}
