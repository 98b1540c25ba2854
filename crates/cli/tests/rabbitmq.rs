//! Trunkline's STOMP client against RabbitMQ's STOMP plugin: proof that it speaks
//! standard STOMP, not just Trunkline's. `scripts/test.sh` starts a private RabbitMQ
//! (`scripts/rabbitmq.sh`) and sets `TRUNKLINE_TEST_RABBITMQ_STOMP`; CI requires it.

use std::time::Duration;

use trunkline_client::stomp::{StompClient, StompOptions};

fn rabbitmq() -> Option<String> {
    trunkline_testkit::rabbitmq_env("TRUNKLINE_TEST_RABBITMQ_STOMP")
}

#[tokio::test]
async fn the_client_works_against_rabbitmq() {
    let Some(addr) = rabbitmq() else { return };
    let c = StompClient::connect(StompOptions::new(addr, "guest", "guest"))
        .await
        .expect("connect to RabbitMQ");
    let queue = format!("/queue/trunkline-test-{}", std::process::id());
    let mut sub = c
        .subscribe(&queue, "client-individual", Some(10))
        .await
        .expect("subscribe");
    // RabbitMQ declares the queue on SUBSCRIBE; give it a moment before publishing.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut confs = Vec::new();
    for i in 0..50 {
        confs.push(
            c.send(
                &queue,
                &[("persistent", "true"), ("content-type", "text/plain")],
                format!("m{i}"),
            )
            .await
            .expect("send"),
        );
    }
    for conf in confs {
        tokio::time::timeout(Duration::from_secs(10), conf)
            .await
            .expect("receipt in time")
            .expect("receipt");
    }
    let mut got = Vec::new();
    while got.len() < 50 {
        let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("message in time")
            .expect("open");
        got.push(String::from_utf8_lossy(&m.body).into_owned());
        c.ack(&m).await.expect("ack");
    }
    assert_eq!(got, (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>());

    // NACK: RabbitMQ requeues and redelivers.
    c.send(&queue, &[], "again")
        .await
        .expect("send")
        .await
        .expect("receipt");
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("in time")
        .expect("open");
    c.nack(&m).await.expect("nack");
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!((&m.body[..], m.redelivered), (&b"again"[..], true));
    c.ack(&m).await.expect("ack");

    // Topic wildcards through amq.topic.
    let mut live = c
        .subscribe("/topic/tl.*.status", "auto", None)
        .await
        .expect("subscribe topic");
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.send("/topic/tl.a.status", &[], "t1")
        .await
        .expect("send")
        .await
        .expect("receipt");
    c.send("/topic/tl.a.alarm", &[], "t2")
        .await
        .expect("send")
        .await
        .expect("receipt");
    let m = tokio::time::timeout(Duration::from_secs(10), live.recv())
        .await
        .expect("in time")
        .expect("open");
    assert_eq!(&m.body[..], b"t1");
    c.disconnect().await.expect("disconnect");
}
