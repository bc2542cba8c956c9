//! The emulated networks do what they say, measured with UDP and TCP between two peers' namespaces
//! (and the router's own address): reachability, loss, delay with jitter, rate caps, a flap, a
//! UDP firewall, and a move to a new address. Bounds are wide: these check that an impairment is
//! applied and in the right measure, not how fast this machine is.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use consult_netem::{Impairment, Lab};

const PORT: u16 = 4000;

/// An echo server in `peer`'s namespace for `seconds`: UDP and TCP on [`PORT`].
fn echo(lab: &Lab, peer: &str, seconds: u64) -> std::thread::JoinHandle<()> {
    let namespace = lab.namespace(peer).expect("peer");
    let handle = namespace.spawn(move || {
        let udp = UdpSocket::bind(("0.0.0.0", PORT)).expect("bind udp");
        let tcp = TcpListener::bind(("0.0.0.0", PORT)).expect("bind tcp");
        tcp.set_nonblocking(true).expect("nonblocking");
        udp.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut buffer = [0u8; 2048];
        while Instant::now() < end {
            if let Ok((n, from)) = udp.recv_from(&mut buffer) {
                let _ = udp.send_to(&buffer[..n], from);
            }
            if let Ok((mut stream, _)) = tcp.accept() {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = [0u8; 5];
                if stream.read_exact(&mut line).is_ok() {
                    let _ = stream.write_all(&line);
                }
            }
        }
    });
    // Bound before the caller sends.
    std::thread::sleep(Duration::from_millis(100));
    std::thread::spawn(move || {
        let _ = handle.join();
    })
}

/// From `peer`, send `count` numbered UDP packets to `to`, `interval` apart; the round-trip
/// time of each answered one, by number.
fn probe(
    lab: &Lab,
    peer: &str,
    to: SocketAddr,
    count: u32,
    interval: Duration,
) -> Vec<Option<Duration>> {
    lab.namespace(peer)
        .expect("peer")
        .spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
            socket.set_nonblocking(true).expect("nonblocking");
            let mut sent = Vec::with_capacity(count as usize);
            let mut answered = vec![None; count as usize];
            let mut buffer = [0u8; 64];
            let mut drain = |answered: &mut Vec<Option<Duration>>, sent: &Vec<Instant>| {
                while let Ok(n) = socket.recv(&mut buffer) {
                    if n >= 4 {
                        let i = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]);
                        if let Some(at) = sent.get(i as usize) {
                            answered[i as usize] = Some(at.elapsed());
                        }
                    }
                }
            };
            for i in 0..count {
                sent.push(Instant::now());
                let _ = socket.send_to(&i.to_be_bytes(), to);
                let next = Instant::now() + interval;
                while Instant::now() < next {
                    drain(&mut answered, &sent);
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            let end = Instant::now() + Duration::from_secs(2);
            while Instant::now() < end {
                drain(&mut answered, &sent);
                std::thread::sleep(Duration::from_micros(200));
            }
            answered
        })
        .join()
        .expect("thread")
        .expect("namespace")
}

fn tcp_echo_works(lab: &Lab, peer: &str, to: SocketAddr) -> bool {
    lab.namespace(peer)
        .expect("peer")
        .spawn(move || {
            let Ok(mut stream) = TcpStream::connect_timeout(&to, Duration::from_secs(2)) else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut back = [0u8; 5];
            stream.write_all(b"hello").is_ok()
                && stream.read_exact(&mut back).is_ok()
                && &back == b"hello"
        })
        .join()
        .expect("thread")
        .expect("namespace")
}

fn at(ip: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((ip, PORT))
}

fn answered(results: &[Option<Duration>]) -> usize {
    results.iter().filter(|r| r.is_some()).count()
}

#[test]
fn peers_reach_each_other_and_the_router_and_nothing_is_left_behind() {
    let names: Vec<String>;
    {
        let lab = Lab::new(&["patient", "doctor"]).expect("lab");
        let _echo = echo(&lab, "doctor", 3);
        let doctor = lab.address("doctor").expect("address");
        assert_ne!(doctor, lab.address("patient").expect("address"));
        let results = probe(&lab, "patient", at(doctor), 50, Duration::from_millis(2));
        assert_eq!(answered(&results), 50, "no loss unimpaired");
        assert!(tcp_echo_works(&lab, "patient", at(doctor)));
        // The router's own address (where the service listens) from a peer.
        let router = lab.router().clone();
        let service = lab.service_ip();
        let listener = router
            .spawn(move || TcpListener::bind((service, PORT)))
            .join()
            .expect("thread")
            .expect("namespace")
            .expect("bind on the router");
        listener.set_nonblocking(true).expect("nonblocking");
        let accepting = std::thread::spawn(move || {
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                if listener.accept().is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        });
        let reached = lab
            .namespace("patient")
            .expect("peer")
            .spawn(move || TcpStream::connect_timeout(&at(service), Duration::from_secs(2)).is_ok())
            .join()
            .expect("thread")
            .expect("namespace");
        let accepted = accepting.join().expect("accept");
        assert!(
            reached && accepted,
            "connected {reached}, accepted {accepted}"
        );
        assert!(lab.address("nobody").is_err());
        names = vec![
            lab.router().name().to_owned(),
            lab.namespace("patient").expect("peer").name().to_owned(),
        ];
    }
    for name in names {
        assert!(
            !std::path::Path::new(&format!("/run/netns/{name}")).exists(),
            "{name} was removed"
        );
    }
}

#[test]
fn loss_drops_about_that_share_each_way() {
    let lab = Lab::new(&["patient", "doctor"]).expect("lab");
    let _echo = echo(&lab, "doctor", 10);
    lab.impair(
        "patient",
        &Impairment {
            loss_percent: 10.0,
            ..Impairment::default()
        },
    )
    .expect("impair");
    let doctor = lab.address("doctor").expect("address");
    let results = probe(
        &lab,
        "patient",
        at(doctor),
        2000,
        Duration::from_micros(500),
    );
    // A round trip crosses the lossy link twice: 0.9 × 0.9 = 81% come back.
    let share = answered(&results) as f64 / results.len() as f64;
    println!(
        "10% loss each way: {:.1}% of round trips answered",
        share * 100.0
    );
    assert!((0.74..=0.88).contains(&share), "{share}");
    assert!(lab
        .impair(
            "patient",
            &Impairment {
                loss_percent: 101.0,
                ..Impairment::default()
            }
        )
        .is_err());
}

#[test]
fn delay_with_jitter_makes_the_round_trip_and_varies_it() {
    let lab = Lab::new(&["patient", "doctor"]).expect("lab");
    let _echo = echo(&lab, "doctor", 10);
    lab.impair(
        "patient",
        &Impairment {
            delay: Duration::from_millis(75),
            jitter: Duration::from_millis(15),
            ..Impairment::default()
        },
    )
    .expect("impair");
    let doctor = lab.address("doctor").expect("address");
    let results = probe(&lab, "patient", at(doctor), 100, Duration::from_millis(10));
    let mut rtts: Vec<Duration> = results.into_iter().flatten().collect();
    assert_eq!(rtts.len(), 100, "delay loses nothing");
    rtts.sort();
    let (min, median, max) = (rtts[0], rtts[50], rtts[99]);
    println!("150 ms RTT ± 30 ms: min {min:?}, median {median:?}, max {max:?}");
    // Never shorter than the delay allows; jitter spreads it.
    assert!(min >= Duration::from_millis(120), "{min:?}");
    assert!(median >= Duration::from_millis(140), "{median:?}");
    assert!(max - min >= Duration::from_millis(15), "{min:?}..{max:?}");
    // And back to no delay.
    lab.impair("patient", &Impairment::default())
        .expect("impair");
    let results = probe(&lab, "patient", at(doctor), 20, Duration::from_millis(5));
    let fastest = results.into_iter().flatten().min().expect("answers");
    assert!(fastest < Duration::from_millis(50), "{fastest:?}");
}

#[test]
fn a_rate_cap_holds_throughput_near_it() {
    let lab = Lab::new(&["patient", "doctor"]).expect("lab");
    lab.impair(
        "patient",
        &Impairment {
            rate_kbit: Some(300),
            ..Impairment::default()
        },
    )
    .expect("impair");
    let doctor = lab.address("doctor").expect("address");
    // The doctor counts what arrives in 3 s; the patient sends 2 Mbit/s of 1000-byte datagrams.
    let counter = lab.namespace("doctor").expect("peer").spawn(move || {
        let socket = UdpSocket::bind(("0.0.0.0", PORT)).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut buffer = [0u8; 2048];
        let (mut bytes, mut first, mut last) = (0usize, None, None);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(n) = socket.recv(&mut buffer) {
                bytes += n;
                first.get_or_insert_with(Instant::now);
                last = Some(Instant::now());
            }
        }
        (bytes, first.zip(last).map(|(a, b)| b - a))
    });
    std::thread::sleep(Duration::from_millis(100));
    lab.namespace("patient")
        .expect("peer")
        .spawn(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("bind");
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end {
                let _ = socket.send_to(&[0u8; 1000], at(doctor));
                std::thread::sleep(Duration::from_micros(4000));
            }
        })
        .join()
        .expect("thread")
        .expect("namespace");
    let (bytes, span) = counter.join().expect("thread").expect("namespace");
    let span = span.expect("something arrived");
    let kbit = bytes as f64 * 8.0 / span.as_secs_f64() / 1000.0;
    println!("300 kbit/s cap: {kbit:.0} kbit/s arrived of 2000 sent");
    assert!((200.0..=360.0).contains(&kbit), "{kbit}");
}

#[test]
fn a_flap_drops_everything_and_then_nothing() {
    let lab = Lab::new(&["patient", "doctor"]).expect("lab");
    let _echo = echo(&lab, "doctor", 10);
    let doctor = lab.address("doctor").expect("address");
    lab.set_down("patient", true).expect("down");
    let results = probe(&lab, "patient", at(doctor), 20, Duration::from_millis(2));
    assert_eq!(answered(&results), 0);
    assert!(!tcp_echo_works(&lab, "patient", at(doctor)));
    lab.set_down("patient", false).expect("up");
    let results = probe(&lab, "patient", at(doctor), 20, Duration::from_millis(2));
    assert_eq!(answered(&results), 20);
}

#[test]
fn a_udp_firewall_lets_only_tcp_through() {
    let lab = Lab::new(&["patient", "doctor"]).expect("lab");
    let _echo = echo(&lab, "doctor", 10);
    let doctor = lab.address("doctor").expect("address");
    lab.block_udp("patient", true).expect("block");
    let results = probe(&lab, "patient", at(doctor), 20, Duration::from_millis(2));
    assert_eq!(answered(&results), 0, "no UDP");
    assert!(tcp_echo_works(&lab, "patient", at(doctor)), "TCP still");
    // UDP within the peer's own machine (loopback) is not the firewall's business.
    let local = lab
        .namespace("patient")
        .expect("peer")
        .spawn(|| {
            let a = UdpSocket::bind("127.0.0.1:0").expect("bind");
            let b = UdpSocket::bind("127.0.0.1:0").expect("bind");
            b.set_read_timeout(Some(Duration::from_secs(1)))
                .expect("timeout");
            a.send_to(b"x", b.local_addr().expect("addr"))
                .expect("send");
            b.recv(&mut [0u8; 4]).is_ok()
        })
        .join()
        .expect("thread")
        .expect("namespace");
    assert!(local);
    lab.block_udp("patient", false).expect("unblock");
    assert_eq!(
        answered(&probe(
            &lab,
            "patient",
            at(doctor),
            20,
            Duration::from_millis(2)
        )),
        20
    );
}

#[test]
fn a_peer_that_moves_gets_a_new_address_and_loses_the_old_one() {
    let lab = Lab::new(&["patient", "doctor"]).expect("lab");
    let _echo = echo(&lab, "doctor", 10);
    let doctor = lab.address("doctor").expect("address");
    let before = lab.address("patient").expect("address");
    lab.impair(
        "patient",
        &Impairment {
            delay: Duration::from_millis(30),
            ..Impairment::default()
        },
    )
    .expect("impair");
    // A socket bound to the old address.
    let old_socket = lab
        .namespace("patient")
        .expect("peer")
        .spawn(move || UdpSocket::bind((before, 0)))
        .join()
        .expect("thread")
        .expect("namespace")
        .expect("bind");
    let after = lab.move_peer("patient").expect("move");
    assert_ne!(before, after);
    assert_eq!(lab.address("patient").expect("address"), after);
    // Reachable from the new address, with the impairment carried over.
    let results = probe(&lab, "patient", at(doctor), 20, Duration::from_millis(2));
    let rtts: Vec<Duration> = results.into_iter().flatten().collect();
    assert_eq!(rtts.len(), 20);
    assert!(
        rtts.iter().all(|r| *r >= Duration::from_millis(55)),
        "{rtts:?}"
    );
    // The old address is gone: its socket reaches nobody.
    old_socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let sent = old_socket.send_to(b"\0\0\0\0", at(doctor));
    assert!(sent.is_err() || old_socket.recv(&mut [0u8; 8]).is_err());
    let addresses = lab
        .namespace("patient")
        .expect("peer")
        .command("ip")
        .args(["-4", "-o", "addr"])
        .output()
        .expect("ip addr");
    let addresses = String::from_utf8_lossy(&addresses.stdout);
    assert!(addresses.contains(&after.to_string()) && !addresses.contains(&before.to_string()));
}

#[test]
fn the_runner_told_to_stop_stops_its_command_and_removes_the_lab() {
    let dir = std::env::temp_dir().join(format!("consult-netem-stop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let told = dir.join("lab.json");
    // The command starts a helper that ignores SIGTERM (a browser that does not stop), says
    // where it runs and both pids, then waits far longer than the test.
    let script = format!(
        "sh -c 'trap \"\" TERM; exec sleep 120' & echo \"$$ $! $CONSULT_LAB\" > {}.tmp && mv {0}.tmp {0} && exec sleep 120",
        told.display()
    );
    let mut runner = std::process::Command::new(env!("CARGO_BIN_EXE_consult-netem"))
        .args(["run", "--peers", "patient", "--", "sh", "-c", &script])
        .spawn()
        .expect("consult-netem");
    let started = Instant::now();
    while !told.exists() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let line = std::fs::read_to_string(&told).expect("the command ran in the lab");
    let (pid, rest) = line.trim().split_once(' ').expect("pid");
    let (stubborn, lab) = rest.split_once(' ').expect("the helper's pid and the lab");
    let lab: serde_json::Value = serde_json::from_str(lab).expect("CONSULT_LAB");
    let namespaces = [
        lab["router"].as_str().expect("router").to_owned(),
        lab["peers"]["patient"]["namespace"]
            .as_str()
            .expect("peer")
            .to_owned(),
    ];
    for name in &namespaces {
        assert!(std::path::Path::new(&format!("/run/netns/{name}")).exists());
    }

    let signalled = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &runner.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut exited = None;
    while signalled.elapsed() < Duration::from_secs(15) {
        if let Some(status) = runner.try_wait().expect("wait") {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let Some(exited) = exited else {
        let _ = runner.kill();
        let _ = runner.wait();
        panic!("consult-netem did not stop within 15 s of SIGTERM");
    };
    println!("stopped after {:?}: {exited}", signalled.elapsed());
    assert_eq!(
        exited.code(),
        Some(128 + 15),
        "a run stopped by SIGTERM says so"
    );
    // The command is gone, and so is the helper that ignored SIGTERM (the group is killed once
    // the command ended, or 5 s after SIGTERM; init reaps the helper a moment after at worst)…
    for process in [pid, stubborn] {
        let gone = Instant::now();
        let alive = || {
            std::fs::read_to_string(format!("/proc/{process}/stat"))
                .is_ok_and(|stat| !stat.contains(") Z "))
        };
        while alive() && gone.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!alive(), "process {process} was stopped");
    }
    // …and so is the lab.
    for name in &namespaces {
        assert!(
            !std::path::Path::new(&format!("/run/netns/{name}")).exists(),
            "{name} was removed"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
