//! Interoperability with an independent WebRTC stack: a webrtc-rs peer (whose DTLS is
//! webrtc-dtls) connects directly to our sans-IO peer over loopback UDP, once for each SRTP
//! profile we offer. The webrtc-rs side is restricted to one profile, so a working call proves
//! that profile was negotiated. Media (VP8) flows both ways and chat messages cross the data
//! channel in both directions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use consult_client::peer::{
    Output, Peer, PeerConfig, PeerEvent, RemoteDescriptionOutcome, TrackKind, VideoCodec,
};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::{MediaEngine, MIME_TYPE_VP8};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::dtls::extension::extension_use_srtp::SrtpProtectionProfile;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::interceptor::registry::Registry;
use webrtc::media::Sample;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtp_transceiver::rtp_codec::RTCRtpCodecCapability;
use webrtc::track::track_local::track_local_static_sample::TrackLocalStaticSample;
use webrtc::track::track_local::TrackLocal;

/// A webrtc-rs peer that only speaks `profile`, echoes chat messages, sends VP8 frames and
/// counts the RTP packets it receives.
struct WebrtcRsPeer {
    pc: Arc<RTCPeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    chats: mpsc::UnboundedReceiver<String>,
    rtp_received: mpsc::UnboundedReceiver<usize>,
}

async fn webrtc_rs_peer(profile: SrtpProtectionProfile) -> WebrtcRsPeer {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    let registry =
        register_default_interceptors(Registry::new(), &mut media).expect("interceptors");
    let mut settings = SettingEngine::default();
    settings.set_srtp_protection_profiles(vec![profile]);
    settings.set_include_loopback_candidate(true);
    settings.set_network_types(vec![NetworkType::Udp4]);
    settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
    let api = APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .with_setting_engine(settings)
        .build();
    let pc = Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .expect("peer connection"),
    );

    let track = Arc::new(TrackLocalStaticSample::new(
        RTCRtpCodecCapability {
            mime_type: MIME_TYPE_VP8.to_owned(),
            ..Default::default()
        },
        "video".to_owned(),
        "webrtc-rs".to_owned(),
    ));
    let sender = pc
        .add_track(Arc::clone(&track) as Arc<dyn TrackLocal + Send + Sync>)
        .await
        .expect("track");
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 1500];
        while sender.read(&mut buffer).await.is_ok() {}
    });

    let (rtp_tx, rtp_received) = mpsc::unbounded_channel();
    pc.on_track(Box::new(move |track, _, _| {
        let rtp_tx = rtp_tx.clone();
        Box::pin(async move {
            while let Ok((packet, _)) = track.read_rtp().await {
                let _ = rtp_tx.send(packet.payload.len());
            }
        })
    }));

    // Our peer creates the channels in its offer; echo whatever arrives on the chat channel.
    let (chat_tx, chats) = mpsc::unbounded_channel();
    pc.on_data_channel(Box::new(move |channel| {
        let chat_tx = chat_tx.clone();
        Box::pin(async move {
            if channel.label() != "consult-chat" {
                return;
            }
            let echo = Arc::clone(&channel);
            channel.on_message(Box::new(move |message: DataChannelMessage| {
                let echo = Arc::clone(&echo);
                let chat_tx = chat_tx.clone();
                Box::pin(async move {
                    let text = String::from_utf8_lossy(&message.data).into_owned();
                    let _ = chat_tx.send(text.clone());
                    let _ = echo.send_text(format!("webrtc-rs heard: {text}")).await;
                })
            }));
        })
    }));
    WebrtcRsPeer {
        pc,
        track,
        chats,
        rtp_received,
    }
}

/// Drive our sans-IO peer on a real UDP socket until `until` holds or `limit` passes.
async fn drive(
    peer: &mut Peer,
    socket: &UdpSocket,
    events: &mut Vec<PeerEvent>,
    limit: Duration,
    until: impl Fn(&[PeerEvent]) -> bool,
) {
    let deadline = Instant::now() + limit;
    let local = socket.local_addr().expect("local address");
    let mut buffer = vec![0u8; 2048];
    loop {
        let timeout = loop {
            match peer.poll_output().expect("poll") {
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination).await;
                }
                Output::Event(event) => events.push(event),
                Output::Timeout(at) => break at,
            }
        };
        if until(events) || Instant::now() >= deadline {
            return;
        }
        let wake = timeout.min(deadline).max(Instant::now());
        tokio::select! {
            received = socket.recv_from(&mut buffer) => {
                if let Ok((n, source)) = received {
                    let _ = peer.handle_receive(Instant::now(), source, local, &buffer[..n]);
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {
                peer.handle_timeout(Instant::now()).expect("timeout");
            }
        }
    }
}

async fn call_with_profile(profile: SrtpProtectionProfile) {
    // webrtc-dtls takes rustls's process-wide provider; more than one backend is linked here.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
    let local: SocketAddr = socket.local_addr().expect("address");
    let mut peer = Peer::new(
        PeerConfig {
            video_codecs: vec![VideoCodec::Vp8],
            ..PeerConfig::default()
        },
        Instant::now(),
    );
    peer.add_host_candidate(local).expect("candidate");
    let offer = peer
        .create_offer()
        .expect("offer")
        .expect("something to offer");

    let mut other = webrtc_rs_peer(profile).await;
    other
        .pc
        .set_remote_description(RTCSessionDescription::offer(offer).expect("offer sdp"))
        .await
        .expect("remote offer");
    let answer = other.pc.create_answer(None).await.expect("answer");
    let mut gathered = other.pc.gathering_complete_promise().await;
    other
        .pc
        .set_local_description(answer)
        .await
        .expect("local answer");
    let _ = gathered.recv().await;
    let answer = other.pc.local_description().await.expect("answer").sdp;
    assert_eq!(
        peer.handle_remote_answer(&answer).expect("answer applies"),
        RemoteDescriptionOutcome::Applied
    );
    // webrtc-rs put its candidates in the SDP; add them explicitly as trickled ones too.
    for line in answer
        .lines()
        .filter_map(|l| l.strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
    {
        let _ = peer.add_remote_candidate(line);
    }

    let mut events = Vec::new();
    let is_open = |events: &[PeerEvent]| {
        events
            .iter()
            .any(|e| matches!(e, PeerEvent::ChannelOpen { label } if label == "consult-chat"))
    };
    drive(
        &mut peer,
        &socket,
        &mut events,
        Duration::from_secs(15),
        is_open,
    )
    .await;
    assert!(
        events.iter().any(|e| matches!(e, PeerEvent::Connected)),
        "{profile:?}: no DTLS-SRTP connection"
    );
    assert!(
        is_open(&events),
        "{profile:?}: the data channel did not open"
    );

    // Media both ways for a second, and a chat message each way.
    peer.send_chat("hello from consult").expect("chat");
    let track = Arc::clone(&other.track);
    let sender = tokio::spawn(async move {
        for i in 0..30u8 {
            let mut frame = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, i];
            frame.extend(std::iter::repeat_n(i, 800));
            let sample = Sample {
                data: Bytes::from(frame),
                duration: Duration::from_millis(33),
                ..Default::default()
            };
            let _ = track.write_sample(&sample).await;
            tokio::time::sleep(Duration::from_millis(33)).await;
        }
    });
    let started = Instant::now();
    for i in 0..30u64 {
        let mut frame = vec![0u8; 900];
        frame[0] = if i == 0 { 0x10 } else { 0x11 };
        peer.write_video(Instant::now(), i * 3000, VideoCodec::Vp8, &frame)
            .expect("write video");
        drive(
            &mut peer,
            &socket,
            &mut events,
            Duration::from_millis(33),
            |_| false,
        )
        .await;
    }
    drive(
        &mut peer,
        &socket,
        &mut events,
        Duration::from_millis(500),
        |events| {
            events
                .iter()
                .any(|e| matches!(e, PeerEvent::Chat(t) if t.starts_with("webrtc-rs heard")))
        },
    )
    .await;
    sender.await.expect("sender");
    let frames_from_webrtc_rs = events
        .iter()
        .filter(|e| matches!(e, PeerEvent::Frame(f) if f.kind == TrackKind::Video(VideoCodec::Vp8)))
        .count();
    let mut packets_at_webrtc_rs = 0;
    while other.rtp_received.try_recv().is_ok() {
        packets_at_webrtc_rs += 1;
    }
    let heard = other.chats.try_recv().ok();
    println!(
        "{profile:?}: {frames_from_webrtc_rs} VP8 frames in, {packets_at_webrtc_rs} RTP packets out, chat {heard:?} ({:?})",
        started.elapsed()
    );
    assert!(
        frames_from_webrtc_rs >= 20,
        "{profile:?}: media from webrtc-rs"
    );
    assert!(
        packets_at_webrtc_rs >= 20,
        "{profile:?}: media to webrtc-rs"
    );
    assert_eq!(
        heard.as_deref(),
        Some("hello from consult"),
        "{profile:?}: chat to webrtc-rs"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PeerEvent::Chat(t) if t == "webrtc-rs heard: hello from consult")),
        "{profile:?}: chat back"
    );
    other.pc.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_connects_with_aes_cm_128_hmac_sha1_80() {
    call_with_profile(SrtpProtectionProfile::Srtp_Aes128_Cm_Hmac_Sha1_80).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_connects_with_aead_aes_128_gcm() {
    call_with_profile(SrtpProtectionProfile::Srtp_Aead_Aes_128_Gcm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_connects_with_aead_aes_256_gcm() {
    call_with_profile(SrtpProtectionProfile::Srtp_Aead_Aes_256_Gcm).await;
}
