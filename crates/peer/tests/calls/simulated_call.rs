//! Whole calls between two sans-IO peers over a simulated link on a virtual clock.

use std::time::Duration;

use consult_peer::file_transfer::FileEvent;
use consult_peer::simulated::{Link, SimulatedCall};
use consult_peer::{PeerConfig, PeerEvent, TrackKind, VideoCodec};
use rand::{RngCore, SeedableRng};

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; n];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn vp8_only() -> PeerConfig {
    PeerConfig {
        video_codecs: vec![VideoCodec::Vp8],
        ..PeerConfig::default()
    }
}

fn channels_open(call: &SimulatedCall) -> bool {
    [&call.a, &call.b].iter().all(|side| {
        side.events
            .iter()
            .filter(|(_, e)| matches!(e, PeerEvent::ChannelOpen { .. }))
            .count()
            == 2
    })
}

/// The VP8 frames side B received, in order.
fn vp8_frames_received(call: &SimulatedCall) -> Vec<&Vec<u8>> {
    call.b
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            PeerEvent::Frame(f) if f.kind == TrackKind::Video(VideoCodec::Vp8) => Some(&f.data),
            _ => None,
        })
        .collect()
}

/// A synthetic VP8 frame: the first byte's low bit clear marks a keyframe; the rest is random.
fn vp8_frame(index: u64, keyframe: bool) -> Vec<u8> {
    let mut frame = random_bytes(3000 + (index as usize % 7) * 500, index);
    frame[0] = if keyframe {
        frame[0] & !1
    } else {
        frame[0] | 1
    };
    frame
}

#[test]
fn a_call_over_a_lossy_link_connects_and_keeps_media_and_files_intact() {
    let lossy = Link {
        loss: 0.10,
        delay: Duration::from_millis(50),
    }; // 100 ms round trip
    let mut call = SimulatedCall::new(vp8_only(), vp8_only(), lossy, 42);
    call.negotiate().unwrap();
    assert!(
        call.run_until(Duration::from_secs(20), |c| c.a.connected
            && c.b.connected
            && channels_open(c))
            .unwrap(),
        "did not connect within 20 virtual seconds"
    );
    let connected_at = call.elapsed();

    // 10 seconds of 30 fps video from a to b, and a file alongside. (SCTP recovers slowly from
    // 10% random loss — a few KB/s — so the file is modest; clean-link throughput is benchmarked.)
    let file = random_bytes(300_000, 9);
    let id = call
        .a
        .peer
        .offer_file("scan.png", "image/png", file.clone())
        .unwrap();
    let mut sent_frames = Vec::new();
    let frame_interval = Duration::from_millis(33);
    let mut next_frame = call.now();
    let mut index = 0u64;
    while call.elapsed() < connected_at + Duration::from_secs(10) {
        if call.now() >= next_frame {
            let frame = vp8_frame(index, index.is_multiple_of(90));
            call.a
                .peer
                .write_video(call.now(), index * 3000, VideoCodec::Vp8, &frame)
                .unwrap();
            sent_frames.push(frame);
            index += 1;
            next_frame += frame_interval;
        }
        // Accept the file as soon as it is offered.
        let offered = call
            .b
            .events
            .iter()
            .any(|(_, e)| matches!(e, PeerEvent::File(FileEvent::Offered { .. })));
        if offered {
            let _ = call.b.peer.accept_file(id);
        }
        call.step().unwrap();
    }
    let file_done = call
        .run_until(Duration::from_secs(180), |c| {
            c.b.events
                .iter()
                .any(|(_, e)| matches!(e, PeerEvent::File(FileEvent::Received { .. })))
        })
        .unwrap();
    if !file_done {
        for (t, e) in call.a.events.iter().chain(call.b.events.iter()) {
            if matches!(
                e,
                PeerEvent::File(_) | PeerEvent::ChannelOpen { .. } | PeerEvent::Connected
            ) {
                eprintln!("{t:?} {e:?}");
            }
        }
    }
    assert!(file_done, "the file did not arrive");
    call.run_until(Duration::from_secs(2), |_| false).unwrap();

    let received = vp8_frames_received(&call);
    let intact = sent_frames.iter().filter(|f| received.contains(f)).count();
    println!(
        "connected after {:?}; a sent {} datagrams ({} dropped); {intact}/{} frames intact",
        connected_at,
        call.a.sent,
        call.a.dropped,
        sent_frames.len()
    );
    assert!(
        call.a.dropped as f64 / call.a.sent as f64 > 0.07,
        "the link really lost packets"
    );
    // NACK/RTX recover the losses: (nearly) every frame arrives whole.
    assert!(
        intact as f64 >= sent_frames.len() as f64 * 0.97,
        "{intact} of {} frames intact",
        sent_frames.len()
    );
    let got = call
        .b
        .events
        .iter()
        .find_map(|(_, e)| match e {
            PeerEvent::File(FileEvent::Received { data, offer }) => Some((data, offer)),
            _ => None,
        })
        .unwrap();
    assert_eq!(got.0, &file);
    assert_eq!(got.1.name, "scan.png");
    assert!(call
        .a
        .events
        .iter()
        .any(|(_, e)| matches!(e, PeerEvent::File(FileEvent::Sent { .. }))));
    let nacks = call
        .a
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            PeerEvent::Stats(s) => Some(s.nacks_received),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    assert!(nacks > 0, "the receiver asked for retransmissions");
}

#[test]
fn chat_flows_both_ways_and_an_oversized_message_is_refused() {
    let mut call = SimulatedCall::new(
        PeerConfig::default(),
        PeerConfig {
            chat_max_bytes: 16,
            ..PeerConfig::default()
        },
        Link::perfect(),
        1,
    );
    call.negotiate().unwrap();
    assert!(call
        .run_until(Duration::from_secs(10), channels_open)
        .unwrap());
    call.a.peer.send_chat("hello doctor").unwrap();
    call.b.peer.send_chat("hello patient").unwrap();
    // Too long for b's limit: a may send it (its limit is larger), b refuses it on arrival.
    call.a
        .peer
        .send_chat("this message is far too long for b")
        .unwrap();
    assert!(call
        .b
        .peer
        .send_chat("this message is far too long for b")
        .is_err());
    call.run_until(Duration::from_secs(2), |_| false).unwrap();
    let chats = |events: &Vec<(Duration, PeerEvent)>| -> Vec<String> {
        events
            .iter()
            .filter_map(|(_, e)| match e {
                PeerEvent::Chat(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(chats(&call.b.events), vec!["hello doctor".to_string()]);
    assert_eq!(chats(&call.a.events), vec!["hello patient".to_string()]);
    assert!(call
        .b
        .events
        .iter()
        .any(|(_, e)| matches!(e, PeerEvent::ChatRejected(_))));
    // The call goes on after the refusal.
    call.a.peer.send_chat("still here").unwrap();
    call.run_until(Duration::from_secs(1), |_| false).unwrap();
    assert_eq!(
        chats(&call.b.events).last().map(String::as_str),
        Some("still here")
    );
}

/// The link to the service's recorder: media only, and the recorder estimates nothing of a path
/// out it never uses. Frames arrive whole, no channel is ever offered or opened (and no offer
/// is asked for again because of them), and the receiver's transport-wide feedback still gives
/// the sender its estimate.
#[test]
fn a_media_only_link_to_a_receiver_that_estimates_nothing_carries_frames_and_feedback() {
    let sender = PeerConfig {
        data_channels: false,
        ..vp8_only()
    };
    let recorder = PeerConfig {
        data_channels: false,
        estimate_bandwidth: false,
        polite: true,
        ..vp8_only()
    };
    let mut call = SimulatedCall::new(sender, recorder, Link::perfect(), 11);
    call.negotiate().unwrap();
    assert!(call
        .run_until(Duration::from_secs(10), |c| c.a.connected && c.b.connected)
        .unwrap());
    assert!(!call.a.peer.needs_negotiation() && !call.b.peer.needs_negotiation());

    let mut sent = Vec::new();
    let mut next_frame = call.now();
    let until = call.elapsed() + Duration::from_secs(5);
    while call.elapsed() < until {
        if call.now() >= next_frame {
            let index = sent.len() as u64;
            let frame = vp8_frame(index, index.is_multiple_of(60));
            call.a
                .peer
                .write_video(call.now(), index * 3000, VideoCodec::Vp8, &frame)
                .unwrap();
            sent.push(frame);
            next_frame += Duration::from_millis(33);
        }
        call.step().unwrap();
    }
    call.run_until(Duration::from_secs(1), |_| false).unwrap();

    let received = vp8_frames_received(&call);
    assert!(
        received.len() >= sent.len() - 2,
        "{} of {} frames",
        received.len(),
        sent.len()
    );
    for frame in &received {
        assert!(sent.contains(frame), "a frame arrived that was never sent");
    }
    for side in [&call.a, &call.b] {
        assert!(
            !side
                .events
                .iter()
                .any(|(_, e)| matches!(e, PeerEvent::ChannelOpen { .. })),
            "a channel opened on a media-only link"
        );
    }
    assert!(matches!(
        call.a.peer.send_chat("anyone?"),
        Err(consult_peer::PeerError::ChannelNotOpen("chat"))
    ));
    assert!(
        call.a
            .peer
            .stats()
            .estimated_send_bps
            .is_some_and(|bps| bps > 0),
        "the sender has an estimate from the receiver's feedback: {:?}",
        call.a.peer.stats()
    );
    assert_eq!(
        call.b.peer.stats().estimated_send_bps,
        None,
        "the receiver estimates nothing"
    );
}

#[test]
fn garbage_datagrams_do_not_break_the_call() {
    let mut call = SimulatedCall::new(
        PeerConfig::default(),
        PeerConfig::default(),
        Link::perfect(),
        3,
    );
    call.negotiate().unwrap();
    assert!(call
        .run_until(Duration::from_secs(10), channels_open)
        .unwrap());
    for n in [0usize, 1, 3, 12, 100, 1500] {
        call.inject_to_b(random_bytes(n, n as u64));
    }
    // Truncated DTLS/RTP-looking datagrams.
    call.inject_to_b(vec![0x16, 0xfe, 0xfd]);
    call.inject_to_b(vec![0x80, 0x60, 0x00]);
    call.run_until(Duration::from_secs(1), |_| false).unwrap();
    call.a.peer.send_chat("after the garbage").unwrap();
    call.run_until(Duration::from_secs(1), |_| false).unwrap();
    assert!(call
        .b
        .events
        .iter()
        .any(|(_, e)| matches!(e, PeerEvent::Chat(t) if t == "after the garbage")));
}

#[test]
fn real_h264_keeps_decoding_over_a_lossy_link_with_nack_rtx_and_pli() {
    use consult_codec::{pattern::TestPattern, video_decoder, video_encoder};
    let lossy = Link {
        loss: 0.10,
        delay: Duration::from_millis(50),
    };
    let h264 = || PeerConfig {
        video_codecs: vec![VideoCodec::H264],
        ..PeerConfig::default()
    };
    let mut call = SimulatedCall::new(h264(), h264(), lossy, 7);
    call.negotiate().unwrap();
    assert!(call
        .run_until(Duration::from_secs(20), |c| c.a.connected && c.b.connected)
        .unwrap());
    assert_eq!(call.a.peer.video_codec(), Some(VideoCodec::H264));
    let mut pattern = TestPattern::new(320, 240);
    let mut encoder = video_encoder(VideoCodec::H264, 320, 240, 400_000, 30.0).unwrap();
    let mut decoder = video_decoder(VideoCodec::H264).unwrap();
    let start = call.elapsed();
    let mut next_frame = call.now();
    let (mut sent, mut decoded, mut errors, mut keyframes_sent) = (0u64, 0u64, 0u64, 0u64);
    let (mut seen_a, mut seen_b) = (0, 0);
    let mut force_keyframe = true;
    let mut waiting_for_keyframe = false;
    let mut last_request = call.now();
    while call.elapsed() < start + Duration::from_secs(10) {
        if call.now() >= next_frame {
            if let Some(encoded) = encoder
                .encode(&pattern.next_frame(), force_keyframe)
                .unwrap()
            {
                keyframes_sent += u64::from(encoded.keyframe);
                call.a
                    .peer
                    .write_video(call.now(), sent * 3000, VideoCodec::H264, &encoded.data)
                    .unwrap();
            }
            force_keyframe = false;
            sent += 1;
            next_frame += Duration::from_millis(33);
        }
        call.step().unwrap();
        // The sender answers keyframe requests.
        force_keyframe |= call.a.events[seen_a..]
            .iter()
            .any(|(_, e)| matches!(e, PeerEvent::KeyframeRequested));
        seen_a = call.a.events.len();
        // The receiver decodes as frames arrive, and asks for a keyframe when decoding breaks.
        let frames: Vec<_> = call.b.events[seen_b..]
            .iter()
            .filter_map(|(_, e)| match e {
                PeerEvent::Frame(f) => Some(f.clone()),
                _ => None,
            })
            .collect();
        seen_b = call.b.events.len();
        for frame in frames {
            if !frame.contiguous && !frame.keyframe {
                waiting_for_keyframe = true;
            }
            if waiting_for_keyframe && !frame.keyframe {
                // A lost request is repeated, as browsers do.
                if call.now() - last_request > Duration::from_millis(250) {
                    call.b.peer.request_keyframe().unwrap();
                    last_request = call.now();
                }
                continue;
            }
            match decoder.decode(&frame.data) {
                Ok(Some(picture)) => {
                    assert_eq!((picture.width, picture.height), (320, 240));
                    decoded += 1;
                    waiting_for_keyframe = false;
                }
                Ok(None) => {}
                Err(_) => {
                    errors += 1;
                    waiting_for_keyframe = true;
                    call.b.peer.request_keyframe().unwrap();
                    last_request = call.now();
                }
            }
        }
    }
    println!(
        "h264 over 10% loss: {decoded}/{sent} frames decoded, {errors} decode errors, {keyframes_sent} keyframes sent, {} of {} datagrams dropped",
        call.a.dropped, call.a.sent
    );
    assert!(call.a.dropped > 50, "the link really lost packets");
    // NACK/RTX repair most losses; a frame lost for good costs a keyframe round trip. Over 25
    // runs: 80-99% decoded, mean 94%. No frame that decodes is corrupt.
    assert!(
        decoded as f64 >= sent as f64 * 0.75,
        "{decoded} of {sent} decoded"
    );
    assert_eq!(errors, 0, "a corrupt frame reached the decoder");
}

#[test]
fn bad_or_incompatible_sdp_gets_an_error_and_the_peer_stays_usable() {
    use consult_peer::{Peer, PeerError, RemoteDescriptionOutcome};
    let now = std::time::Instant::now();
    let mut peer = Peer::new(PeerConfig::default(), now);
    assert!(matches!(
        peer.handle_remote_offer("this is not sdp"),
        Err(PeerError::Sdp(_))
    ));
    assert!(peer.handle_remote_answer("v=0").is_err());
    assert!(matches!(
        peer.add_remote_candidate("candidate:garbage"),
        Err(PeerError::Candidate(_))
    ));
    assert!(
        peer.add_remote_candidate("").is_ok(),
        "end-of-candidates is fine"
    );

    // A VP8-only offer to an H.264-only peer: answered, but no video codec in common.
    let mut vp8 = Peer::new(
        PeerConfig {
            video_codecs: vec![VideoCodec::Vp8],
            ..PeerConfig::default()
        },
        now,
    );
    let mut h264 = Peer::new(
        PeerConfig {
            video_codecs: vec![VideoCodec::H264],
            ..PeerConfig::default()
        },
        now,
    );
    let offer = vp8.create_offer().unwrap().unwrap();
    let RemoteDescriptionOutcome::Answer(answer) = h264.handle_remote_offer(&offer).unwrap() else {
        panic!()
    };
    vp8.handle_remote_answer(&answer).unwrap();
    assert_eq!(vp8.video_codec(), None, "nothing to send video with");
    assert!(matches!(
        vp8.write_video(now, 0, VideoCodec::Vp8, b"frame"),
        Err(PeerError::NotNegotiated(_))
    ));

    // Conflicting codecs: one payload type claimed by two codecs.
    let mut offerer = Peer::new(PeerConfig::default(), now);
    let offer = offerer.create_offer().unwrap().unwrap();
    let conflicting = offer.replacen(
        "a=rtpmap:96 VP8/90000",
        "a=rtpmap:96 VP8/90000\r\na=rtpmap:96 H264/90000",
        1,
    );
    assert_ne!(conflicting, offer, "the offer maps VP8 to payload type 96");
    let mut answerer = Peer::new(PeerConfig::default(), now);
    // Refused, or answered without the conflicting entry — never a panic.
    if let Ok(RemoteDescriptionOutcome::Answer(answer)) = answerer.handle_remote_offer(&conflicting)
    {
        assert!(
            !answer.contains("a=rtpmap:96 H264"),
            "the conflicting mapping is not echoed"
        );
    }
    // An answer with no pending offer.
    assert!(matches!(
        Peer::new(PeerConfig::default(), now).handle_remote_answer(&answer),
        Err(PeerError::UnexpectedAnswer)
    ));
}

#[test]
fn the_call_comes_back_after_the_link_dies_and_ice_restarts() {
    let mut call = SimulatedCall::new(
        PeerConfig::default(),
        PeerConfig::default(),
        Link::perfect(),
        5,
    );
    call.negotiate().unwrap();
    assert!(call
        .run_until(Duration::from_secs(10), channels_open)
        .unwrap());
    // The network goes away entirely.
    call.a_to_b.loss = 1.0;
    call.b_to_a.loss = 1.0;
    let down = call.run_until(Duration::from_secs(30), |c| {
        c.a.events
            .iter()
            .any(|(_, e)| matches!(e, PeerEvent::Disconnected))
    });
    assert!(down.unwrap(), "the loss is noticed");
    // It comes back; the side that noticed restarts ICE (its driver does this after a while).
    call.a_to_b.loss = 0.0;
    call.b_to_a.loss = 0.0;
    let offer = call
        .a
        .peer
        .restart_ice()
        .unwrap()
        .expect("an ICE restart offer");
    let consult_peer::RemoteDescriptionOutcome::Answer(answer) =
        call.b.peer.handle_remote_offer(&offer).unwrap()
    else {
        panic!("no answer")
    };
    call.a.peer.handle_remote_answer(&answer).unwrap();
    let reconnected = call.run_until(Duration::from_secs(20), |c| {
        c.a.events.iter().rev().take_while(|(_, e)| !matches!(e, PeerEvent::Disconnected)).any(|(_, e)| {
            matches!(e, PeerEvent::IceState(s) if matches!(s, str0m::IceConnectionState::Connected | str0m::IceConnectionState::Completed))
        })
    });
    assert!(reconnected.unwrap(), "ICE reconnects after the restart");
    call.a.peer.send_chat("back again").unwrap();
    call.run_until(Duration::from_secs(5), |c| {
        c.b.events
            .iter()
            .any(|(_, e)| matches!(e, PeerEvent::Chat(t) if t == "back again"))
    })
    .unwrap();
    assert!(call
        .b
        .events
        .iter()
        .any(|(_, e)| matches!(e, PeerEvent::Chat(t) if t == "back again")));
}

#[test]
fn a_remote_that_vanishes_mid_transfer_never_yields_a_partial_file() {
    let mut call = SimulatedCall::new(
        PeerConfig::default(),
        PeerConfig::default(),
        Link::perfect(),
        11,
    );
    call.negotiate().unwrap();
    assert!(call
        .run_until(Duration::from_secs(10), channels_open)
        .unwrap());
    let id = call
        .a
        .peer
        .offer_file(
            "big.bin",
            "application/octet-stream",
            random_bytes(5_000_000, 4),
        )
        .unwrap();
    call.run_until(Duration::from_secs(5), |c| {
        c.b.events
            .iter()
            .any(|(_, e)| matches!(e, PeerEvent::File(FileEvent::Offered { .. })))
    })
    .unwrap();
    call.b.peer.accept_file(id).unwrap();
    call.run_until(Duration::from_secs(10), |c| {
        c.b.events.iter().any(|(_, e)| matches!(e, PeerEvent::File(FileEvent::Progress { bytes, .. }) if *bytes >= 262_144))
    })
    .unwrap();
    // The sender vanishes: packets stop, and signaling reports it gone.
    call.a_to_b.loss = 1.0;
    call.b_to_a.loss = 1.0;
    call.run_until(Duration::from_secs(2), |_| false).unwrap();
    call.b.peer.remote_gone();
    call.run_until(Duration::from_secs(1), |_| false).unwrap();
    let events: Vec<&FileEvent> = call
        .b
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            PeerEvent::File(f) => Some(f),
            _ => None,
        })
        .collect();
    assert!(events
        .iter()
        .any(|e| matches!(e, FileEvent::Interrupted { id: i, .. } if *i == id)));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, FileEvent::Received { .. })),
        "a partial file was presented"
    );
}

#[test]
fn a_transfer_resumes_on_the_next_connection_from_the_receivers_offset() {
    let mut first = SimulatedCall::new(
        PeerConfig::default(),
        PeerConfig::default(),
        Link::perfect(),
        21,
    );
    first.negotiate().unwrap();
    assert!(first
        .run_until(Duration::from_secs(10), channels_open)
        .unwrap());
    let data = random_bytes(3_000_000, 8);
    let id = first
        .a
        .peer
        .offer_file("mri.zip", "application/zip", data.clone())
        .unwrap();
    first
        .run_until(Duration::from_secs(5), |c| {
            c.b.events
                .iter()
                .any(|(_, e)| matches!(e, PeerEvent::File(FileEvent::Offered { .. })))
        })
        .unwrap();
    first.b.peer.accept_file(id).unwrap();
    first
        .run_until(Duration::from_secs(10), |c| {
            c.b.events.iter().any(|(_, e)| matches!(e, PeerEvent::File(FileEvent::Progress { bytes, .. }) if *bytes >= 524_288))
        })
        .unwrap();
    // The connection is lost; each side keeps its transfers for the next one.
    let (files_a, files_b) = (
        first.a.peer.take_file_transfers(),
        first.b.peer.take_file_transfers(),
    );
    let mut second = SimulatedCall::new(
        PeerConfig::default(),
        PeerConfig::default(),
        Link::perfect(),
        22,
    );
    second.a.peer.adopt_file_transfers(files_a);
    second.b.peer.adopt_file_transfers(files_b);
    second.negotiate().unwrap();
    let done = second.run_until(Duration::from_secs(30), |c| {
        c.b.events
            .iter()
            .any(|(_, e)| matches!(e, PeerEvent::File(FileEvent::Received { .. })))
    });
    assert!(done.unwrap(), "the transfer finished on the new connection");
    let resumed_at = second.b.events.iter().find_map(|(_, e)| match e {
        PeerEvent::File(FileEvent::Resumed { bytes, .. }) => Some(*bytes),
        _ => None,
    });
    assert!(
        resumed_at.is_some_and(|b| b >= 524_288),
        "resumed from the receiver's offset: {resumed_at:?}"
    );
    assert!(
        !second
            .b
            .events
            .iter()
            .any(|(_, e)| matches!(e, PeerEvent::File(FileEvent::Offered { .. }))),
        "not asked again"
    );
    let received = second.b.events.iter().find_map(|(_, e)| match e {
        PeerEvent::File(FileEvent::Received { data, .. }) => Some(data.clone()),
        _ => None,
    });
    assert_eq!(received.as_deref(), Some(&data[..]));
}

/// A screen shared beside the camera: its own send-only section, negotiated by a second offer
/// (from either side), its frames marked as the screen on the far side and the camera's still
/// as the camera; stopping sets the section inactive and no screen frame follows.
#[test]
fn a_shared_screen_goes_in_a_section_of_its_own_and_stops() {
    use consult_peer::{RemoteDescriptionOutcome, VideoSource};
    let mut call = SimulatedCall::new(vp8_only(), vp8_only(), Link::perfect(), 7);
    call.negotiate().unwrap();
    assert!(call
        .run_until(Duration::from_secs(10), |c| c.a.connected && c.b.connected)
        .unwrap());
    // (The answerer adds its own sections after answering, as the native core does.)
    if let Some(offer) = call.b.peer.create_offer().unwrap() {
        let RemoteDescriptionOutcome::Answer(answer) =
            call.a.peer.handle_remote_offer(&offer).unwrap()
        else {
            panic!("no answer");
        };
        call.b.peer.handle_remote_answer(&answer).unwrap();
    }
    assert!(!call.b.peer.needs_negotiation());
    // b shares: it needs an offer of its own, and the screen is not ready before the answer.
    call.b.peer.share_screen(true);
    assert!(call.b.peer.needs_negotiation() && !call.b.peer.screen_ready());
    assert!(call
        .b
        .peer
        .write_screen(call.now(), 0, VideoCodec::Vp8, &vp8_frame(0, true))
        .is_err());
    let offer = call.b.peer.create_offer().unwrap().expect("an offer");
    let videos = offer.matches("m=video").count();
    assert!(offer.contains("a=sendonly"), "{offer}");
    let RemoteDescriptionOutcome::Answer(answer) = call.a.peer.handle_remote_offer(&offer).unwrap()
    else {
        panic!("no answer");
    };
    call.b.peer.handle_remote_answer(&answer).unwrap();
    assert!(call.b.peer.screen_ready() && !call.b.peer.needs_negotiation());
    let mut index = 0u64;
    let mut next = call.now();
    let until = call.elapsed() + Duration::from_secs(2);
    while call.elapsed() < until {
        if call.now() >= next {
            let keyframe = index.is_multiple_of(30);
            let now = call.now();
            call.b
                .peer
                .write_video(
                    now,
                    index * 3000,
                    VideoCodec::Vp8,
                    &vp8_frame(index, keyframe),
                )
                .unwrap();
            call.b
                .peer
                .write_screen(
                    now,
                    index * 3000,
                    VideoCodec::Vp8,
                    &vp8_frame(1000 + index, keyframe),
                )
                .unwrap();
            index += 1;
            next += Duration::from_millis(33);
        }
        call.step().unwrap();
    }
    let count = |call: &SimulatedCall, source: VideoSource| {
        call.a
            .events
            .iter()
            .filter(|(_, e)| matches!(e, PeerEvent::Frame(f) if matches!(f.kind, TrackKind::Video(_)) && f.source == source))
            .count()
    };
    let (camera, screen) = (
        count(&call, VideoSource::Camera),
        count(&call, VideoSource::Screen),
    );
    assert!(
        camera > 20 && screen > 20,
        "camera {camera}, screen {screen}"
    );
    // Each arrives whole under its own source.
    let screens: Vec<Vec<u8>> = call
        .a
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            PeerEvent::Frame(f) if f.source == VideoSource::Screen => Some(f.data.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(screens[0], vp8_frame(1000, true));

    // Stop: the section goes inactive through another offer; no screen frame is written.
    call.b.peer.share_screen(false);
    assert!(call.b.peer.needs_negotiation() && !call.b.peer.screen_ready());
    let offer = call.b.peer.create_offer().unwrap().expect("an offer");
    assert!(offer.contains("a=inactive"), "{offer}");
    let RemoteDescriptionOutcome::Answer(answer) = call.a.peer.handle_remote_offer(&offer).unwrap()
    else {
        panic!("no answer");
    };
    call.b.peer.handle_remote_answer(&answer).unwrap();
    assert!(!call.b.peer.needs_negotiation());
    assert!(call
        .b
        .peer
        .write_screen(call.now(), 0, VideoCodec::Vp8, &vp8_frame(0, true))
        .is_err());
    // Stopped and shared again within one round trip: the answer to the stop does not count as
    // the share; another offer follows, and then frames flow again in the same section.
    call.b.peer.share_screen(true);
    let offer = call.b.peer.create_offer().unwrap().expect("an offer");
    assert_eq!(
        offer.matches("m=video").count(),
        videos,
        "the section is reused: {offer}"
    );
    call.b.peer.share_screen(false);
    let RemoteDescriptionOutcome::Answer(answer) = call.a.peer.handle_remote_offer(&offer).unwrap()
    else {
        panic!("no answer");
    };
    call.b.peer.handle_remote_answer(&answer).unwrap();
    let stop = call
        .b
        .peer
        .create_offer()
        .unwrap()
        .expect("the stop's offer");
    call.b.peer.share_screen(true);
    let RemoteDescriptionOutcome::Answer(answer) = call.a.peer.handle_remote_offer(&stop).unwrap()
    else {
        panic!("no answer");
    };
    call.b.peer.handle_remote_answer(&answer).unwrap();
    assert!(
        !call.b.peer.screen_ready() && call.b.peer.needs_negotiation(),
        "the answered offer stopped it; sharing again needs another"
    );
    let offer = call.b.peer.create_offer().unwrap().expect("an offer");
    let RemoteDescriptionOutcome::Answer(answer) = call.a.peer.handle_remote_offer(&offer).unwrap()
    else {
        panic!("no answer");
    };
    call.b.peer.handle_remote_answer(&answer).unwrap();
    assert!(call.b.peer.screen_ready());
    let before = count(&call, VideoSource::Screen);
    for n in 0..30u64 {
        let now = call.now();
        call.b
            .peer
            .write_screen(
                now,
                (100 + n) * 3000,
                VideoCodec::Vp8,
                &vp8_frame(2000 + n, n == 0),
            )
            .unwrap();
        call.run_until(Duration::from_millis(33), |_| false)
            .unwrap();
    }
    assert!(
        count(&call, VideoSource::Screen) > before + 10,
        "the screen flows again"
    );
}

/// Seconds (virtual) a 512 KiB file takes from a to b over 10 % loss each way and a 100 ms round
/// trip, with video from a to b so that b's receiver reports tell a about the loss.
fn file_over_ten_percent_loss(data_redundancy: bool) -> (Option<Duration>, f64) {
    let lossy = Link {
        loss: 0.10,
        delay: Duration::from_millis(50),
    };
    let config = PeerConfig {
        data_redundancy,
        ..vp8_only()
    };
    let mut call = SimulatedCall::new(config.clone(), config, lossy, 11);
    call.negotiate().unwrap();
    assert!(
        call.run_until(Duration::from_secs(30), |c| c.a.connected
            && c.b.connected
            && channels_open(c))
            .unwrap(),
        "connects"
    );
    let file = random_bytes(512 * 1024, 5);
    let mut index = 0u64;
    let mut next_frame = call.now();
    let mut offered_at = None;
    let mut received = None;
    let limit = call.elapsed() + Duration::from_secs(60);
    while call.elapsed() < limit && received.is_none() {
        if call.now() >= next_frame {
            let frame = vp8_frame(index, index.is_multiple_of(90));
            call.a
                .peer
                .write_video(call.now(), index * 3000, VideoCodec::Vp8, &frame)
                .unwrap();
            index += 1;
            next_frame += Duration::from_millis(33);
        }
        // Offer once the loss is known (after the first receiver reports), then accept.
        if offered_at.is_none() && call.elapsed() > Duration::from_secs(3) {
            call.a
                .peer
                .offer_file("scan.bin", "application/octet-stream", file.clone())
                .unwrap();
            offered_at = Some(call.elapsed());
        }
        let offer = call.b.events.iter().find_map(|(_, e)| match e {
            PeerEvent::File(FileEvent::Offered { offer }) => Some(offer.id),
            _ => None,
        });
        if let Some(id) = offer {
            let _ = call.b.peer.accept_file(id);
        }
        received = call.b.events.iter().find_map(|(t, e)| match e {
            PeerEvent::File(FileEvent::Received { data, .. }) => {
                assert_eq!(*data, file, "the file arrives whole");
                Some(*t)
            }
            _ => None,
        });
        call.step().unwrap();
    }
    let loss = call.a.dropped as f64 / call.a.sent as f64;
    (received.zip(offered_at).map(|(r, o)| r - o), loss)
}

#[test]
fn a_file_keeps_moving_over_ten_percent_loss_because_sctp_datagrams_go_three_times() {
    let (with, loss) = file_over_ten_percent_loss(true);
    let (without, _) = file_over_ten_percent_loss(false);
    println!("512 KiB over 10 % loss, 100 ms RTT: {with:?} with copies, {without:?} without");
    // The datagrams a sent, copies included, really were lost at about 10 %.
    assert!((0.08..0.12).contains(&loss), "loss {loss}");
    let with = with.expect("the file arrives with copies");
    assert!(with < Duration::from_secs(10), "{with:?}");
    // Without copies it crawls: at least three times as long, if it arrives at all.
    assert!(
        without.is_none_or(|without| without > with * 3),
        "{without:?}"
    );
}

/// Pictures of audio only sent with their datagrams twice: on a link losing a quarter of its
/// packets each arrives at most once (the receiver's SRTP replay check drops the copies it does
/// not need), and nearly all whole.
#[test]
fn a_pictures_datagrams_go_twice_and_it_arrives_once_whole() {
    let mut results = Vec::new();
    for copies in [1u8, 2] {
        let lossy = Link {
            loss: 0.25,
            delay: Duration::from_millis(40),
        };
        let mut call = SimulatedCall::new(vp8_only(), vp8_only(), lossy, 7);
        call.negotiate().unwrap();
        assert!(
            call.run_until(Duration::from_secs(30), |c| c.a.connected && c.b.connected)
                .unwrap(),
            "did not connect"
        );
        let mut pictures = Vec::new();
        for index in 0..12u64 {
            // As audio only sends it: the picture, then small frames of it for 800 ms.
            let picture = vp8_frame(index, true);
            let start = index * 360_000;
            call.a.peer.copy_next_video_frame(copies);
            call.a
                .peer
                .write_video(call.now(), start, VideoCodec::Vp8, &picture)
                .unwrap();
            pictures.push(picture);
            for repeat in 1..=24u64 {
                call.run_until(Duration::from_millis(33), |_| false)
                    .unwrap();
                let mut small = vp8_frame(1000 + index * 100 + repeat, false);
                small.truncate(120);
                call.a
                    .peer
                    .write_video(call.now(), start + repeat * 3000, VideoCodec::Vp8, &small)
                    .unwrap();
            }
            call.run_until(Duration::from_millis(3200), |_| false)
                .unwrap();
        }
        let received: Vec<&Vec<u8>> = call
            .b
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                PeerEvent::Frame(f) if f.keyframe => Some(&f.data),
                _ => None,
            })
            .collect();
        for picture in &pictures {
            assert!(
                received.iter().filter(|r| **r == picture).count() <= 1,
                "a picture was delivered twice"
            );
        }
        let whole = pictures.iter().filter(|p| received.contains(p)).count();
        results.push((copies, call.a.sent, whole));
    }
    println!("(copies, datagrams sent, pictures whole of 12): {results:?}");
    let [_, (_, _, whole_twice)] = results[..] else {
        unreachable!()
    };
    // Loss is random and so are the retransmissions that rescue a picture: sent once, 9 to 12
    // arrive whole (40 runs); sent twice, 11 or 12 (12 in 38 of 40). A picture is lost only when
    // both copies of one of its datagrams and every retransmission of it are.
    assert!(whole_twice >= 11, "{results:?}");
}
