//! SIP hot paths: parsing an INVITE with SDP (rsipstack + our validation), writing a response,
//! and writing a request. Compare the figures side by side in one run.

use criterion::{criterion_group, criterion_main, Criterion};
use riptide::sip::msg::{self, Extra, RequestSpec, Transport};
use rsipstack::sip::SipMessage;
use std::hint::black_box;

const HEAD: &str = "INVITE sip:+12155551213@127.0.0.1:5070 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-524287-1---f1b1d1e5b1c1;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:alice@127.0.0.1:5061>\r\n\
To: <sip:+12155551213@127.0.0.1:5070>\r\n\
From: \"Alice\" <sip:+12155551212@127.0.0.1:5061>;tag=4fa3\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, UPDATE, INFO\r\n\
Supported: replaces, timer\r\n\
User-Agent: bench\r\n\
Content-Type: application/sdp\r\n";

const SDP: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 49170 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n";

fn bench(c: &mut Criterion) {
    let invite = format!("{HEAD}Content-Length: {}\r\n\r\n{SDP}", SDP.len());
    let invite = invite.as_str();
    if let Err(e) = msg::parse(invite.as_bytes()) {
        panic!("the bench INVITE must be valid: {e:?}");
    }
    c.bench_function("sip/parse_invite_with_sdp", |b| {
        b.iter(|| msg::parse(black_box(invite.as_bytes())))
    });
    let (m, _) = msg::parse(invite.as_bytes()).expect("valid");
    let SipMessage::Request(req) = m else {
        unreachable!("an INVITE is a request")
    };
    let src = "127.0.0.1:5061".parse().expect("addr");
    c.bench_function("sip/write_180_response", |b| {
        b.iter(|| {
            msg::response(
                black_box(&req),
                src,
                180,
                "Ringing",
                Some("abc123"),
                &Extra::none().header("Contact", "<sip:riptide@127.0.0.1:5070>"),
            )
        })
    });
    let sdp = SDP.as_bytes();
    c.bench_function("sip/write_invite_with_sdp", |b| {
        b.iter(|| {
            let spec = RequestSpec {
                method: "INVITE",
                uri: "sip:+12155551213@127.0.0.1:5080",
                via_host: "127.0.0.1:5072",
                transport: Transport::Udp,
                branch: "z9hG4bKbench",
                from: "<sip:+12155551212@127.0.0.1:5072>;tag=x1",
                to: "<sip:+12155551213@127.0.0.1:5080>",
                call_id: "bench@b",
                cseq: 1,
                contact: Some("<sip:riptide@127.0.0.1:5072>"),
                routes: &[],
                max_forwards: 70,
            };
            msg::request(black_box(&spec), &Extra::none().sdp(sdp))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
