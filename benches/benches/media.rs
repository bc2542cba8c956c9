//! Benchmarks of the media core, with webrtc-rs side by side where a comparison is asked for.
//!
//! ```text
//! cargo bench -p consult-benches                     # everything
//! cargo bench -p consult-benches -- file_transfer    # one group
//! ```
//!
//! * `srtp`: SRTP protect + unprotect of 1200-byte packets with str0m's crypto provider
//!   (aws-lc-rs), per profile — compare with the AES-GCM ceiling in STACK-NOTES.
//! * `connect`: ICE + DTLS connect time between two native peers on loopback UDP; the median is
//!   criterion's, the p95 is printed.
//! * `h264_720p30`: CPU time of one 720p frame through the whole call path — encode, packetize and
//!   send, receive and depacketize, decode — on one thread; × 30 is the share of a core.
//! * `file_transfer`: 16 MiB native → native with the file-transfer protocol, and webrtc-rs →
//!   webrtc-rs over a data channel (on a runtime of two threads), both with at most 64 KiB
//!   queued, in the same run. The native peers run each on a thread of its own (as two native
//!   clients do) with the client's batched socket I/O; then both on one thread, with that I/O
//!   and with one system call a datagram.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consult_benches::{channels_open, negotiated_pair, run_apart, run_until, SocketIo, UdpPeer};
use consult_codec::pattern::TestPattern;
use consult_codec::{video_decoder, video_encoder};
use consult_peer::file_transfer::FileEvent;
use consult_peer::{PeerConfig, PeerEvent, VideoCodec};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn srtp(c: &mut Criterion) {
    let provider = str0m::crypto::from_feature_flags();
    let srtp = provider.srtp_provider;
    let header = [
        0x80u8, 0x60, 0x12, 0x34, 0, 0, 0x10, 0, 0xde, 0xad, 0xbe, 0xef,
    ];
    let payload = vec![0x5au8; 1200 - header.len()];
    let mut group = c.benchmark_group("srtp");
    group.throughput(Throughput::Elements(1));

    let mut encrypt = srtp.aes_128_cm_sha1_80().create_cipher([7; 16], true);
    let mut decrypt = srtp.aes_128_cm_sha1_80().create_cipher([7; 16], false);
    let auth_key = [9u8; 20];
    let hmac = provider.sha1_hmac_provider;
    group.bench_function("protect+unprotect/AES_CM_128_HMAC_SHA1_80", |b| {
        let (mut sealed, mut opened) = (vec![0u8; payload.len()], vec![0u8; payload.len()]);
        b.iter(|| {
            encrypt
                .encrypt(&[1; 16], &payload, &mut sealed)
                .expect("encrypt");
            let tag = hmac.sha1_hmac(&auth_key, &[&header, &sealed, &[0, 0, 0, 1]]);
            let check = hmac.sha1_hmac(&auth_key, &[&header, &sealed, &[0, 0, 0, 1]]);
            assert_eq!(tag[..10], check[..10]);
            decrypt
                .decrypt(&[1; 16], &sealed, &mut opened)
                .expect("decrypt");
        })
    });
    let mut encrypt = srtp.aead_aes_128_gcm().create_cipher([7; 16], true);
    let mut decrypt = srtp.aead_aes_128_gcm().create_cipher([7; 16], false);
    group.bench_function("protect+unprotect/AEAD_AES_128_GCM", |b| {
        let (mut sealed, mut opened) =
            (vec![0u8; payload.len() + 16], vec![0u8; payload.len() + 16]);
        b.iter(|| {
            encrypt
                .encrypt(&[1; 12], &header, &payload, &mut sealed)
                .expect("encrypt");
            decrypt
                .decrypt(&[1; 12], &[&header], &sealed, &mut opened)
                .expect("decrypt");
        })
    });
    let mut encrypt = srtp.aead_aes_256_gcm().create_cipher([7; 32], true);
    let mut decrypt = srtp.aead_aes_256_gcm().create_cipher([7; 32], false);
    group.bench_function("protect+unprotect/AEAD_AES_256_GCM", |b| {
        let (mut sealed, mut opened) =
            (vec![0u8; payload.len() + 16], vec![0u8; payload.len() + 16]);
        b.iter(|| {
            encrypt
                .encrypt(&[1; 12], &header, &payload, &mut sealed)
                .expect("encrypt");
            decrypt
                .decrypt(&[1; 12], &[&header], &sealed, &mut opened)
                .expect("decrypt");
        })
    });
    group.finish();
}

fn connect(c: &mut Criterion) {
    let mut samples = Vec::new();
    let mut group = c.benchmark_group("connect");
    group.sample_size(30);
    group.bench_function("ice+dtls/native-native", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let (mut a, mut b) = negotiated_pair(PeerConfig::default(), SocketIo::Batched);
                let started = Instant::now();
                run_until(&mut a, &mut b, Duration::from_secs(10), |a, b| {
                    a.peer.is_connected() && b.peer.is_connected()
                });
                let took = started.elapsed();
                samples.push(took);
                total += took;
            }
            total
        })
    });
    group.finish();
    samples.sort();
    if !samples.is_empty() {
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!(
            "connect ice+dtls native-native: median {:?}, p95 {:?} over {} connections",
            at(0.5),
            at(0.95),
            samples.len()
        );
    }
}

fn h264_720p30(c: &mut Criterion) {
    let config = PeerConfig {
        audio: false,
        video_codecs: vec![VideoCodec::H264],
        ..PeerConfig::default()
    };
    let (mut a, mut b) = negotiated_pair(config, SocketIo::Batched);
    run_until(&mut a, &mut b, Duration::from_secs(10), |a, b| {
        a.peer.is_connected() && b.peer.is_connected()
    });
    let mut pattern = TestPattern::new(1280, 720);
    let frames: Vec<_> = (0..30).map(|_| pattern.next_frame()).collect();
    let mut encoder = video_encoder(VideoCodec::H264, 1280, 720, 2_500_000, 30.0).expect("encoder");
    let mut decoder = video_decoder(VideoCodec::H264).expect("decoder");
    let mut index = 0u64;
    let mut group = c.benchmark_group("h264_720p30");
    group.sample_size(20);
    group.bench_function(
        "encode+send+receive+decode (thread CPU per frame)",
        |bench| {
            bench.iter_custom(|iterations| {
                let start = cpu_time::ThreadTime::now();
                for _ in 0..iterations {
                    let frame = &frames[(index % 30) as usize];
                    if let Some(encoded) = encoder
                        .encode(frame, index.is_multiple_of(300))
                        .expect("encode")
                    {
                        a.peer
                            .write_video(
                                Instant::now(),
                                index * 3000,
                                VideoCodec::H264,
                                &encoded.data,
                            )
                            .expect("write");
                        let before = b.events.len();
                        run_until(&mut a, &mut b, Duration::from_secs(5), |_, b| {
                            b.events[before..]
                                .iter()
                                .any(|e| matches!(e, PeerEvent::Frame(_)))
                        });
                        for event in b.events.drain(before..) {
                            if let PeerEvent::Frame(frame) = event {
                                decoder.decode(&frame.data).expect("decode");
                            }
                        }
                    }
                    index += 1;
                }
                start.elapsed()
            })
        },
    );
    group.finish();
}

fn file_transfer(c: &mut Criterion) {
    const SIZE: usize = 16 * 1024 * 1024;
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    let mut group = c.benchmark_group("file_transfer");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(SIZE as u64));

    let config = PeerConfig {
        audio: false,
        video: false,
        ..PeerConfig::default()
    };
    let offered = |b: &UdpPeer, id| {
        b.events
            .iter()
            .any(|e| matches!(e, PeerEvent::File(FileEvent::Offered { offer }) if offer.id == id))
    };
    let sent = |a: &UdpPeer, id| {
        a.events
            .iter()
            .any(|e| matches!(e, PeerEvent::File(FileEvent::Sent { id: sent }) if *sent == id))
    };

    // Each peer on a thread of its own, as two native clients run (and as webrtc-rs runs below,
    // on a runtime of two threads).
    let (mut a, mut b) = negotiated_pair(config.clone(), SocketIo::Batched);
    run_until(&mut a, &mut b, Duration::from_secs(10), channels_open);
    group.bench_function("16MiB/native-native (consult-file protocol)", |bench| {
        bench.iter(|| {
            let id = a
                .peer
                .offer_file("bench.bin", "application/octet-stream", data.clone())
                .expect("offer");
            let mut accepted = false;
            run_apart(
                &mut a,
                &mut b,
                Duration::from_secs(60),
                |a| sent(a, id),
                |b| {
                    if !accepted && offered(b, id) {
                        b.peer.accept_file(id).expect("accept");
                        accepted = true;
                    }
                },
            );
            a.events.clear();
            b.events.clear();
        })
    });

    // Both peers on one thread: with batched socket I/O, and with a system call a datagram.
    for (io, name) in [
        (
            SocketIo::Batched,
            "16MiB/native-native (one thread for both)",
        ),
        (
            SocketIo::PerDatagram,
            "16MiB/native-native (one thread, a system call a datagram)",
        ),
    ] {
        let (mut a, mut b) = negotiated_pair(config.clone(), io);
        run_until(&mut a, &mut b, Duration::from_secs(10), channels_open);
        group.bench_function(name, |bench| {
            bench.iter(|| {
                let id = a
                    .peer
                    .offer_file("bench.bin", "application/octet-stream", data.clone())
                    .expect("offer");
                run_until(&mut a, &mut b, Duration::from_secs(10), |_, b| {
                    offered(b, id)
                });
                b.peer.accept_file(id).expect("accept");
                run_until(&mut a, &mut b, Duration::from_secs(60), |a, _| sent(a, id));
                a.events.clear();
                b.events.clear();
            })
        });
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (sender, received) = runtime.block_on(webrtc_rs::pair());
    group.bench_function("16MiB/webrtc-rs-webrtc-rs (data channel)", |bench| {
        bench.iter(|| runtime.block_on(webrtc_rs::send(&sender, &received, SIZE)))
    });
    group.finish();
}

/// Two webrtc-rs peers in one process, connected over loopback, with one data channel.
mod webrtc_rs {
    use super::*;
    use bytes::Bytes;
    use webrtc::api::setting_engine::SettingEngine;
    use webrtc::api::APIBuilder;
    use webrtc::data_channel::RTCDataChannel;
    use webrtc::ice::mdns::MulticastDnsMode;
    use webrtc::ice::network_type::NetworkType;
    use webrtc::peer_connection::configuration::RTCConfiguration;
    use webrtc::peer_connection::RTCPeerConnection;

    const MAX_BUFFERED: usize = 64 * 1024;

    async fn peer() -> Arc<RTCPeerConnection> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut settings = SettingEngine::default();
        settings.set_include_loopback_candidate(true);
        settings.set_network_types(vec![NetworkType::Udp4]);
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        let api = APIBuilder::new().with_setting_engine(settings).build();
        Arc::new(
            api.new_peer_connection(RTCConfiguration::default())
                .await
                .expect("pc"),
        )
    }

    pub async fn pair() -> (Arc<RTCDataChannel>, Arc<AtomicUsize>) {
        let (a, b) = (peer().await, peer().await);
        let channel = a.create_data_channel("bench", None).await.expect("channel");
        let received = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&received);
        b.on_data_channel(Box::new(move |remote| {
            let counter = Arc::clone(&counter);
            Box::pin(async move {
                remote.on_message(Box::new(move |message| {
                    counter.fetch_add(message.data.len(), Ordering::Relaxed);
                    Box::pin(async {})
                }));
            })
        }));
        let (opened_tx, mut opened) = tokio::sync::mpsc::channel(1);
        channel.on_open(Box::new(move || {
            Box::pin(async move {
                let _ = opened_tx.send(()).await;
            })
        }));
        let offer = a.create_offer(None).await.expect("offer");
        let mut gathered = a.gathering_complete_promise().await;
        a.set_local_description(offer).await.expect("local");
        let _ = gathered.recv().await;
        b.set_remote_description(a.local_description().await.expect("offer"))
            .await
            .expect("remote");
        let answer = b.create_answer(None).await.expect("answer");
        let mut gathered = b.gathering_complete_promise().await;
        b.set_local_description(answer).await.expect("local");
        let _ = gathered.recv().await;
        a.set_remote_description(b.local_description().await.expect("answer"))
            .await
            .expect("remote");
        opened.recv().await.expect("open");
        // Keep both connections alive for the benchmark's lifetime.
        std::mem::forget((a, b));
        (channel, received)
    }

    pub async fn send(channel: &Arc<RTCDataChannel>, received: &Arc<AtomicUsize>, size: usize) {
        let start = received.load(Ordering::Relaxed);
        let chunk = Bytes::from(vec![0x42u8; 16 * 1024]);
        let mut sent = 0;
        while sent < size {
            while channel.buffered_amount().await > MAX_BUFFERED - chunk.len() {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            channel.send(&chunk).await.expect("send");
            sent += chunk.len();
        }
        while received.load(Ordering::Relaxed) - start < size {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
}

criterion_group!(benches, srtp, connect, h264_720p30, file_transfer);
criterion_main!(benches);
