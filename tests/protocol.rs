//! The wire protocol as a client in another language meets it: bytes that
//! are not a message, messages over the size limit, streams used out of
//! order, reflection for older tools, and connections that never speak.

use std::time::Duration;

use bytes::BufMut;
use liaison::proto as pb;
use liaison_testkit::*;
use prost::Message;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// A codec that sends raw bytes as each request message, as a client with
/// a broken encoder would, and decodes the answers with prost.
struct Raw;

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

struct AnswerDecoder;

impl Decoder for AnswerDecoder {
    type Item = pb::PublishStreamResponse;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        pb::PublishStreamResponse::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = pb::PublishStreamResponse;
    type Encoder = RawEncoder;
    type Decoder = AnswerDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> AnswerDecoder {
        AnswerDecoder
    }
}

/// Sends `messages` (raw bytes each) over one PublishStream; returns the
/// answers and how the stream ended.
async fn raw_publish_stream(
    broker: &TestBroker,
    messages: Vec<Vec<u8>>,
) -> (Vec<pb::PublishStreamResponse>, Result<(), Status>) {
    let channel = liaison::client::endpoint(&broker.url(), Some(&broker.pki.node(TJ_POST)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static("/liaison.v1.Broker/PublishStream");
    let mut answers = grpc
        .streaming(tonic::Request::new(tokio_stream::iter(messages)), path, Raw)
        .await
        .expect("stream opens")
        .into_inner();
    let mut got = Vec::new();
    loop {
        match answers.message().await {
            Ok(Some(a)) => got.push(a),
            Ok(None) => return (got, Ok(())),
            Err(status) => return (got, Err(status)),
        }
    }
}

fn encoded(alert: pb::Alert) -> Vec<u8> {
    pb::PublishRequest { alert: Some(alert) }.encode_to_vec()
}

fn error_of(a: &pb::PublishStreamResponse) -> &pb::PublishError {
    match &a.result {
        Some(pb::publish_stream_response::Result::Error(e)) => e,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

fn is_ack(a: &pb::PublishStreamResponse) -> bool {
    matches!(a.result, Some(pb::publish_stream_response::Result::Ack(_)))
}

#[tokio::test]
async fn every_request_of_a_publish_stream_is_answered_even_one_that_does_not_decode() {
    let broker = TestBroker::start().await;
    let first = alert(pb::Category::Drugs, "first");
    let last = alert(pb::Category::Drugs, "last");
    let mut not_utf8 = encoded(alert(pb::Category::Drugs, "XXXX"));
    let at = not_utf8
        .windows(4)
        .position(|w| w == b"XXXX")
        .expect("headline bytes");
    not_utf8[at..at + 4].copy_from_slice(&[0xff, 0xfe, 0xfd, 0xfc]);
    let messages = vec![
        encoded(first.clone()),
        vec![0xff; 32],
        not_utf8,
        encoded(last.clone()),
    ];
    let (answers, end) = raw_publish_stream(&broker, messages).await;
    end.expect("the stream ends with OK once every request is answered");
    assert_eq!(answers.len(), 4, "one answer per request: {answers:?}");
    let indexes: Vec<u64> = answers.iter().map(|a| a.index).collect();
    assert_eq!(indexes, [0, 1, 2, 3]);
    assert!(is_ack(&answers[0]) && is_ack(&answers[3]), "{answers:?}");
    for bad in &answers[1..3] {
        let e = error_of(bad);
        assert_eq!(e.code, Code::InvalidArgument as i32);
        assert!(
            e.message.starts_with(&format!(
                "request {} is not a valid PublishRequest",
                bad.index
            )),
            "{e:?}"
        );
    }
    assert!(
        error_of(&answers[2]).message.contains("headline"),
        "{answers:?}"
    );
    let mut officer = broker.client(AF_OFFICE).await;
    let stored = broker_alerts(&mut officer).await;
    assert_eq!(headlines(&stored), ["first", "last"]);
}

/// An alert with an attachment of `bytes` bytes.
fn with_attachment(bytes: usize) -> pb::Alert {
    let content = vec![7u8; bytes];
    let mut a = alert(pb::Category::Cbrn, "large");
    a.attachments = vec![pb::Attachment {
        filename: "scan.bin".into(),
        mime_type: "application/octet-stream".into(),
        sha256: <sha2::Sha256 as sha2::Digest>::digest(&content).to_vec(),
        content: content.into(),
        description: String::new(),
    }];
    a
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_resource_exhausted_naming_the_limit() {
    let broker = TestBroker::start().await;
    let mut post = broker.client(TJ_POST).await;
    // The default alert limit is 256 KiB, the message limit twice that
    // plus 64 KiB.
    let refused = post
        .publish(pb::PublishRequest {
            alert: Some(with_attachment(700 * 1024)),
        })
        .await
        .expect_err("too large");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("at most 589824 bytes") && refused.message().contains("262144"),
        "{refused:?}"
    );
    // An alert over the alert limit but inside the message limit is
    // refused by validation, naming the field.
    let invalid = post
        .publish(pb::PublishRequest {
            alert: Some(with_attachment(300 * 1024)),
        })
        .await
        .expect_err("alert too large");
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");

    // In a stream: what came before is answered, then the stream ends with
    // the status, naming the first request that was not processed.
    let messages = vec![
        encoded(alert(pb::Category::Drugs, "before")),
        encoded(with_attachment(700 * 1024)),
        encoded(alert(pb::Category::Drugs, "after")),
    ];
    let (answers, end) = raw_publish_stream(&broker, messages).await;
    assert_eq!(answers.len(), 1, "{answers:?} {end:?}");
    assert!(is_ack(&answers[0]));
    let status = end.expect_err("the stream ends with an error");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("request message 1 is")
            && status
                .message()
                .contains("from index 1 on were not processed"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_second_open_on_a_subscribe_stream_is_refused() {
    let broker = TestBroker::start().await;
    let mut officer = broker.client(AF_OFFICE).await;
    let (tx, rx) = mpsc::channel(4);
    let open = |feed: &str| pb::SubscribeRequest {
        request: Some(pb::subscribe_request::Request::Open(liaison_testkit::open(
            feed,
            pb::Filter::default(),
        ))),
    };
    tx.send(open("main")).await.expect("send");
    let mut stream = officer
        .subscribe(ReceiverStream::new(rx))
        .await
        .expect("subscribe")
        .into_inner();
    let first = stream.message().await.expect("opened").expect("event");
    assert!(matches!(
        first.event,
        Some(pb::subscribe_response::Event::Opened(_))
    ));
    tx.send(open("other")).await.expect("send");
    let refused = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("answered")
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("only the first"), "{refused:?}");
}

#[tokio::test]
async fn reflection_answers_both_v1_and_v1alpha_clients() {
    use tonic_reflection::pb::{v1, v1alpha};
    let broker = TestBroker::start().await;
    let channel = liaison::client::endpoint(&broker.url(), Some(&broker.pki.node(TJ_POST)))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");

    let mut old = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = old
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha is served")
        .into_inner();
    let answer = answers.message().await.expect("answer").expect("one");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("unexpected answer {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"liaison.v1.Broker".to_owned()), "{names:?}");

    let mut new = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = new
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1 is served")
        .into_inner();
    assert!(answers.message().await.expect("answer").is_some());
}

/// A TLS client with a valid node certificate that completes the handshake
/// and then sends nothing.
async fn silent_tls_client(
    broker: &TestBroker,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let files = broker.pki.node(TJ_POST);
    let mut roots = rustls::RootCertStore::empty();
    for ca in liaison::tls::load_certs(&files.ca).expect("ca") {
        roots.add(ca).expect("root");
    }
    let certs = liaison::tls::load_certs(&files.cert).expect("cert");
    let key_pem = std::fs::read(&files.key).expect("key");
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .expect("pem")
        .expect("a key");
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls 1.3")
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .expect("client auth");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(broker.addr)
        .await
        .expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    connector.connect(name, tcp).await.expect("handshake")
}

#[tokio::test]
async fn a_client_that_completes_tls_but_never_speaks_is_closed() {
    let broker = TestBroker::start_with(|c| {
        c.connection_timeouts.preface = Duration::from_millis(300);
    })
    .await;
    let mut silent = silent_tls_client(&broker).await;
    let mut buf = [0u8; 64];
    // The broker closes it: the read ends (EOF or a reset) instead of
    // hanging until the patience bound.
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .expect("the broker closed the idle connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Clients that speak keep working.
    let mut post = broker.client(TJ_POST).await;
    publish(&mut post, alert(pb::Category::Drugs, "still served")).await;
}

/// Software decides on a refusal by its fields, never by its wording.
#[tokio::test]
async fn a_streamed_refusal_names_its_field_and_says_whether_a_retry_can_succeed() {
    let broker = TestBroker::start().await;
    let mut post = broker.client(TJ_POST).await;
    let mut ahead = alert(pb::Category::Drugs, "from a post whose clock runs fast");
    ahead.sent = Some(liaison::alert::timestamp(
        std::time::SystemTime::now() + Duration::from_secs(3600),
    ));
    let mut broken = alert(pb::Category::Drugs, "x");
    broken.headline.clear();
    let answers = post
        .publish_stream(tokio_stream::iter(
            [ahead, broken].map(|a| pb::PublishRequest { alert: Some(a) }),
        ))
        .await
        .expect("stream")
        .into_inner();
    let answers: Vec<_> = tokio_stream::StreamExt::collect::<Vec<_>>(answers).await;
    let errors: Vec<pb::PublishError> = answers
        .into_iter()
        .map(|a| error_of(&a.expect("answer")).clone())
        .collect();
    assert_eq!(errors[0].field, "alert.sent");
    assert!(errors[0].retry_later, "{:?}", errors[0]);
    assert_eq!(errors[1].field, "alert.headline");
    assert!(!errors[1].retry_later, "{:?}", errors[1]);
}
