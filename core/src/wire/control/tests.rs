//! The control protocol: one test per rule of the module header, and proptests that random
//! bytes never panic a decoder and that every message survives encode then decode.

use super::*;
use proptest::prelude::*;

fn greeted_requests(bytes: &[u8]) -> Vec<Result<Request, ControlError>> {
    let mut decoder = RequestDecoder::new();
    decoder.feed(HANDSHAKE);
    decoder.feed(bytes);
    core::iter::from_fn(|| decoder.next_request()).collect()
}

fn greeted_replies(bytes: &[u8]) -> Vec<Result<Reply, ControlError>> {
    let mut decoder = ReplyDecoder::new();
    decoder.feed(HANDSHAKE);
    decoder.feed(bytes);
    core::iter::from_fn(|| decoder.next_reply()).collect()
}

#[test]
fn requests_are_words_and_tab_separated_service_names() {
    let got =
        greeted_requests(b"STOP\nRELOAD\nLOG-REOPEN\nSTATUS\nPROCESS-STATUS\tpop3\timap-login\n");
    assert_eq!(
        got,
        vec![
            Ok(Request::Stop),
            Ok(Request::Reload),
            Ok(Request::LogReopen),
            Ok(Request::Status),
            Ok(Request::ProcessStatus {
                services: vec!["pop3".into(), "imap-login".into()]
            }),
        ]
    );
}

#[test]
fn the_handshake_must_come_first_and_match_the_major_version() {
    let mut decoder = RequestDecoder::new();
    decoder.feed(b"STOP\n");
    assert!(matches!(
        decoder.next_request(),
        Some(Err(ControlError::BadHandshake { .. }))
    ));
    assert!(decoder.is_failed());
    assert_eq!(decoder.next_request(), None);

    let mut decoder = RequestDecoder::new();
    decoder.feed(b"VERSION\troost-control\t2\t0\nSTOP\n");
    assert_eq!(
        decoder.next_request(),
        Some(Err(ControlError::VersionMismatch { major: 2, minor: 0 }))
    );

    // A newer minor version is understood.
    let mut decoder = RequestDecoder::new();
    decoder.feed(b"VERSION\troost-control\t1\t7\nSTOP\n");
    assert_eq!(decoder.next_request(), Some(Ok(Request::Stop)));
}

#[test]
fn a_bad_request_is_answered_not_fatal() {
    let got = greeted_requests(b"FROB\nSTOP\textra\n\nPROCESS-STATUS\t\nSTATUS\n");
    assert_eq!(got[0], Err(ControlError::UnknownCommand("FROB".into())));
    assert_eq!(got[1], Err(ControlError::BadArguments { command: "STOP" }));
    assert_eq!(got[2], Err(ControlError::EmptyRequest));
    assert_eq!(
        got[3],
        Err(ControlError::BadArguments {
            command: "PROCESS-STATUS"
        })
    );
    assert_eq!(got[4], Ok(Request::Status));
    assert!(got
        .iter()
        .all(|r| r.as_ref().map_or_else(|e| !e.is_fatal(), |_| true)));
}

#[test]
fn bytes_may_arrive_one_at_a_time() {
    let mut decoder = RequestDecoder::new();
    let mut got = Vec::new();
    for byte in HANDSHAKE.iter().chain(b"PROCESS-STATUS\tlog\n") {
        decoder.feed(core::slice::from_ref(byte));
        got.extend(core::iter::from_fn(|| decoder.next_request()));
    }
    assert_eq!(
        got,
        vec![Ok(Request::ProcessStatus {
            services: vec!["log".into()]
        })]
    );
}

#[test]
fn a_line_over_64_kib_is_fatal_and_never_buffered() {
    let mut decoder = RequestDecoder::new();
    decoder.feed(HANDSHAKE);
    decoder.feed(b"STATUS\n");
    let chunk = vec![b'A'; 4096];
    for _ in 0..=(MAX_LINE / chunk.len()) {
        decoder.feed(&chunk);
    }
    assert!(
        decoder.lines.buffer.len() <= MAX_LINE + HANDSHAKE.len() + b"STATUS\n".len(),
        "buffer grew to {}",
        decoder.lines.buffer.len()
    );
    assert_eq!(decoder.next_request(), Some(Ok(Request::Status)));
    assert_eq!(
        decoder.next_request(),
        Some(Err(ControlError::LineTooLong { max: MAX_LINE }))
    );
    decoder.feed(b"STOP\n");
    assert_eq!(decoder.next_request(), None);
}

#[test]
fn a_line_of_exactly_64_kib_is_accepted() {
    let mut line = b"-".to_vec();
    line.extend(vec![b'x'; MAX_LINE - 1]);
    line.push(b'\n');
    let got = greeted_replies(&line);
    assert_eq!(got, vec![Ok(Reply::Error("x".repeat(MAX_LINE - 1)))]);
}

#[test]
fn errors_keep_tabs_newlines_and_file_line_in_one_line() {
    let text = "/etc/roost.conf:12: Unknown setting: proces_limit\n\tand\x01more\r\0";
    let mut out = Vec::new();
    Reply::Error(text.into()).encode(&mut out);
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    assert!(!out[..out.len() - 1].contains(&b'\t'));
    assert_eq!(greeted_replies(&out), vec![Ok(Reply::Error(text.into()))]);
}

#[test]
fn ok_replies_may_be_bare() {
    assert_eq!(
        greeted_replies(b"+\n+reloaded\n"),
        vec![
            Ok(Reply::Ok(String::new())),
            Ok(Reply::Ok("reloaded".into()))
        ]
    );
}

#[test]
fn status_is_a_table_of_section_1_5_fields_ended_by_an_empty_line() {
    let row = ServiceRow {
        name: "pop3-login".into(),
        process_count: 3,
        process_avail: 1,
        process_limit: 100,
        client_limit: 1,
        throttle_secs: 0,
        exit_failure_last: 0,
        exit_failures_in_sec: 0,
        last_drop_warning: 1_700_000_000,
        listen_pending: false,
        listening: true,
        stopped: false,
        total_created: 42,
        generation: 1,
    };
    let mut out = Vec::new();
    Reply::Table(vec![Row::Service(row.clone())]).encode(&mut out);
    assert_eq!(
        out,
        b"SERVICE\tpop3-login\t3\t1\t100\t1\t0\t0\t0\t1700000000\tn\ty\tn\t42\t1\n\n".to_vec()
    );
    assert_eq!(
        greeted_replies(&out),
        vec![Ok(Reply::Table(vec![Row::Service(row)]))]
    );
    assert_eq!(greeted_replies(b"\n"), vec![Ok(Reply::Table(Vec::new()))]);
}

#[test]
fn a_service_named_like_a_reply_is_still_a_row() {
    let row = Row::Process(ProcessRow {
        service: "-odd+".into(),
        pid: Pid(12),
        available_count: 0,
        total_count: 1,
        idle_start: 0,
        last_status_update: 5,
        last_kill_sent: 0,
    });
    let mut out = Vec::new();
    Reply::Table(vec![row.clone()]).encode(&mut out);
    assert_eq!(greeted_replies(&out), vec![Ok(Reply::Table(vec![row]))]);
}

#[test]
fn malformed_replies_are_fatal() {
    let got = greeted_replies(b"PROCESS\tx\t1\n+\n");
    assert!(matches!(got[0], Err(ControlError::RowFieldCount { .. })));
    assert_eq!(got.len(), 1);
    let got = greeted_replies(b"PROCESS\tpop3\t1\t0\t0\t0\t0\t0\n+\n");
    assert_eq!(got, vec![Err(ControlError::UnterminatedTable)]);
    let got = greeted_replies(b"PROCESS\tpop3\t+1\t0\t0\t0\t0\t0\n\n");
    assert!(matches!(
        got[0],
        Err(ControlError::BadField { field: "pid", .. })
    ));
    let got = greeted_replies(b"hello\n");
    assert!(matches!(got[0], Err(ControlError::UnknownReply(_))));
    let got = greeted_replies(b"+a\x01zb\n");
    assert_eq!(got, vec![Err(ControlError::InvalidEscape)]);
}

fn name() -> impl Strategy<Value = String> {
    // Any text, control bytes included: the escaping must carry them.
    proptest::collection::vec(any::<char>(), 0..12).prop_map(|c| c.into_iter().collect())
}

fn nonempty_name() -> impl Strategy<Value = String> {
    name().prop_filter("service names are not empty", |n| !n.is_empty())
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Stop),
        Just(Request::Reload),
        Just(Request::LogReopen),
        Just(Request::Status),
        proptest::collection::vec(nonempty_name(), 0..4)
            .prop_map(|services| Request::ProcessStatus { services }),
    ]
}

fn row() -> impl Strategy<Value = Row> {
    let service = (
        name(),
        any::<[u32; 4]>(),
        any::<[u64; 3]>(),
        any::<u32>(),
        any::<[bool; 3]>(),
        any::<u64>(),
        any::<u32>(),
    )
        .prop_map(|(name, c, t, f, b, total, generation)| {
            Row::Service(ServiceRow {
                name,
                process_count: c[0],
                process_avail: c[1],
                process_limit: c[2],
                client_limit: c[3],
                throttle_secs: t[0],
                exit_failure_last: t[1],
                exit_failures_in_sec: f,
                last_drop_warning: t[2],
                listen_pending: b[0],
                listening: b[1],
                stopped: b[2],
                total_created: total,
                generation,
            })
        });
    let process = (name(), any::<i32>(), any::<u32>(), any::<[u64; 4]>()).prop_map(
        |(service, pid, available_count, t)| {
            Row::Process(ProcessRow {
                service,
                pid: Pid(pid),
                available_count,
                total_count: t[0],
                idle_start: t[1],
                last_status_update: t[2],
                last_kill_sent: t[3],
            })
        },
    );
    prop_oneof![service, process]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        name().prop_map(Reply::Ok),
        name().prop_map(Reply::Error),
        proptest::collection::vec(row(), 0..5).prop_map(Reply::Table),
    ]
}

/// Feeds `bytes` in pieces whose sizes come from `cuts`, draining after each.
fn feed_in_pieces<T>(
    bytes: &[u8],
    cuts: &[usize],
    mut feed: impl FnMut(&[u8]) -> Vec<T>,
) -> Vec<T> {
    let mut out = Vec::new();
    let mut rest = bytes;
    for &cut in cuts {
        let at = cut.min(rest.len());
        out.extend(feed(&rest[..at]));
        rest = &rest[at..];
    }
    out.extend(feed(rest));
    out
}

proptest! {
    #[test]
    fn requests_round_trip(requests in proptest::collection::vec(request(), 0..8), cuts in proptest::collection::vec(0usize..40, 0..10)) {
        let mut bytes = HANDSHAKE.to_vec();
        for r in &requests {
            r.encode(&mut bytes);
        }
        let mut decoder = RequestDecoder::new();
        let got = feed_in_pieces(&bytes, &cuts, |piece| {
            decoder.feed(piece);
            core::iter::from_fn(|| decoder.next_request()).collect()
        });
        let want: Vec<Result<Request, ControlError>> = requests.into_iter().map(Ok).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn replies_round_trip(replies in proptest::collection::vec(reply(), 0..6), cuts in proptest::collection::vec(0usize..80, 0..10)) {
        let mut bytes = HANDSHAKE.to_vec();
        for r in &replies {
            r.encode(&mut bytes);
        }
        let mut decoder = ReplyDecoder::new();
        let got = feed_in_pieces(&bytes, &cuts, |piece| {
            decoder.feed(piece);
            core::iter::from_fn(|| decoder.next_reply()).collect()
        });
        let want: Vec<Result<Reply, ControlError>> = replies.into_iter().map(Ok).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn escaping_round_trips_any_text(text in name()) {
        let mut out = Vec::new();
        escape_into(&text, &mut out);
        prop_assert!(!out.contains(&b'\t') && !out.contains(&b'\n'));
        prop_assert_eq!(unescape(&out), Ok(text));
    }

    #[test]
    fn random_bytes_never_panic_either_decoder(
        greet in any::<bool>(),
        chunks in proptest::collection::vec(proptest::collection::vec(
            prop_oneof![any::<u8>(), Just(b'\t'), Just(b'\n'), Just(1u8), Just(b'+'), Just(b'-')], 0..64), 0..8),
    ) {
        let mut requests = RequestDecoder::new();
        let mut replies = ReplyDecoder::new();
        if greet {
            requests.feed(HANDSHAKE);
            replies.feed(HANDSHAKE);
        }
        for chunk in &chunks {
            requests.feed(chunk);
            replies.feed(chunk);
            while requests.next_request().is_some() {}
            while replies.next_reply().is_some() {}
        }
    }

    #[test]
    fn random_rows_never_panic(fields in proptest::collection::vec(prop_oneof![
        Just("SERVICE".to_owned()), Just("PROCESS".to_owned()), Just("WHO".to_owned()),
        "[0-9]{0,21}", "-?[0-9]{1,12}", "[yn]", "[0-9a-f:.,]{0,20}", ".{0,5}"], 0..16)) {
        let mut line = Vec::new();
        write_line(fields.iter().map(String::as_str), &mut line);
        line.push(b'\n');
        let _ = greeted_replies(&line);
    }
}
