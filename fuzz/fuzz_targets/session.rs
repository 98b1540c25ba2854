//! Drives the STOMP server session with whatever frames the input decodes to, answering
//! its events with outcomes chosen by the input, and advancing time. The session must
//! never panic, must keep receipts in request order, and must stop after closing: nothing
//! goes out after its `ERROR` or last receipt.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use trunkline_proto::{Command, Decoder, Limits};
use trunkline_stomp::{Delivered, Event, Outgoing, ServerConfig, ServerSession, StompError};

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else { return };
    let config = ServerConfig { buffer: 4, max_prefetch: 3, heartbeat_send_ms: 50, heartbeat_recv_ms: 50, ..Default::default() };
    let mut s = ServerSession::new(config, 0);
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(input);
    let mut now = 0u64;
    let mut open_ops: Vec<u64> = Vec::new();
    let mut step = 0u64;
    // Fetches answered with messages; later ones stay pending, as the driver leaves a fetch
    // on an empty queue. Without a bound an auto-ack subscription (its window never fills)
    // fetches and is delivered to forever, within one step, until memory runs out.
    let mut fetches = 0u32;
    loop {
        step += 1;
        if step > 10_000 {
            break;
        }
        let item = if s.wants_read() {
            match decoder.decode(&mut buf) {
                Ok(Some(item)) => Some(item),
                Ok(None) => None,
                Err(e) => {
                    s.decode_failed(e.code(), e.to_string());
                    None
                }
            }
        } else {
            None
        };
        let progressed = item.is_some();
        if let Some(item) = item {
            now += u64::from(control & 7);
            s.handle_item(now, item);
        }
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::Authenticate { .. } => {
                    let r = if control & 0x80 == 0 { Ok("c".to_owned()) } else { Err(StompError::new("invalid_credentials", "no")) };
                    s.authenticated(now, r);
                }
                Event::Publish { op, .. }
                | Event::PublishBatch { op, .. }
                | Event::Settle { op, .. }
                | Event::Subscribe { op, .. } => open_ops.push(op),
                Event::Fetch { .. } if fetches >= 100 => {}
                Event::Fetch { id, max } => {
                    fetches += 1;
                    let msgs = (0..max.min(2) as u64)
                        .map(|n| Delivered {
                            message_id: n,
                            destination: "/queue/c-inbox".into(),
                            body: Bytes::from_static(b"{}"),
                            content_type: None,
                            headers: vec![],
                            redelivered: false,
                            receipt: Some(format!("c-inbox/{step}{n}/1")),
                        })
                        .collect();
                    s.deliver(&id, msgs);
                }
                Event::Unsubscribe { .. } | Event::Close { .. } => {}
            }
        }
        // Confirm operations in an order the input picks (out of order too).
        if !open_ops.is_empty() && (control & 0x40 == 0 || !progressed) {
            let i = (step as usize) % open_ops.len();
            let op = open_ops.swap_remove(i);
            let r = if control & 0x20 != 0 && step % 7 == 0 { Err(StompError::new("queue_full", "full")) } else { Ok(()) };
            s.complete(op, r);
        }
        let mut receipts = Vec::new();
        while let Some(out) = s.poll_transmit(now) {
            if let Outgoing::Frame(f) = out {
                if f.command == Command::Receipt {
                    receipts.push(f.get("receipt-id").map(str::to_owned));
                }
            }
        }
        if let Some(t) = s.poll_timeout() {
            if !progressed && open_ops.is_empty() {
                now = now.max(t);
                s.handle_timeout(now);
            }
        }
        if s.is_closing() || (!progressed && open_ops.is_empty() && buf.is_empty()) {
            break;
        }
    }
    if s.is_closing() {
        // Nothing goes out after the ERROR or the last receipt, whatever the driver still
        // reports (operations finishing, deliveries arriving).
        while s.poll_transmit(now).is_some() {}
        for op in open_ops {
            s.complete(op, Ok(()));
        }
        for id in ["0", "1", "sub-0"] {
            s.deliver(id, vec![Delivered {
                message_id: 1,
                destination: "/queue/c-inbox".into(),
                body: Bytes::from_static(b"{}"),
                content_type: None,
                headers: vec![],
                redelivered: false,
                receipt: Some("c-inbox/late/1".into()),
            }]);
        }
        assert!(s.poll_transmit(now).is_none(), "output after the session closed");
    }
});
