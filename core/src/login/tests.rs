//! One named test per rule of the login machine (reference §2.8 login side, §8).

use super::*;

fn ms(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// Drives one login process: status writes succeed, `ReadFullState` is answered from `full`.
struct Harness {
    login: Login,
    now: Instant,
    /// What the notify fd says.
    full: bool,
    next_id: u64,
}

impl Harness {
    fn new(config: LoginConfig) -> Harness {
        let mut h = Harness {
            login: Login::new(config, Instant::ZERO),
            now: Instant::ZERO,
            full: false,
            next_id: 1,
        };
        h.input(Input::InitDone);
        h
    }

    fn input(&mut self, input: Input) -> Vec<Output> {
        let mut queue = VecDeque::from([input]);
        let mut out = Vec::new();
        while let Some(input) = queue.pop_front() {
            self.login.handle(input, self.now);
            self.login.check_invariants().expect("invariants hold");
            while let Some(o) = self.login.poll_output() {
                match o {
                    Output::WriteStatus { .. } => queue.push_back(Input::StatusWritten),
                    Output::ReadFullState => queue.push_back(Input::FullState { full: self.full }),
                    _ => out.push(o),
                }
            }
        }
        out
    }

    fn at(&mut self, at: u64) {
        self.now = ms(at);
    }

    fn accept(&mut self) -> ClientId {
        let id = ClientId(self.next_id);
        self.next_id += 1;
        let out = self.input(Input::Accepted { client: id });
        assert!(!out.contains(&Output::Refuse), "{id} refused: {out:?}");
        id
    }

    /// The master publishes "full" and signals.
    fn publish_full(&mut self, full: bool) -> Vec<Output> {
        self.full = full;
        self.input(Input::Signal(Signal::Usr1))
    }

    /// The driver reports a client's progress.
    fn set_state(&mut self, client: ClientId, state: ClientState) -> Vec<Output> {
        self.input(Input::ClientState { client, state })
    }

    fn timeout(&mut self) -> Vec<Output> {
        let at = self.login.poll_timeout().expect("a timer is armed");
        self.now = self.now.max(at);
        self.input(Input::Timeout)
    }
}

fn disconnects(out: &[Output]) -> Vec<(ClientId, DisconnectReason)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Disconnect { client, reason } => Some((*client, *reason)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_overflow_delay_is_100_ms_minus_age_plus_jitter_section_2_8() {
    let p = ORIGINAL_OVERFLOW_POLICY;
    assert_eq!(p.delay(Duration::ZERO, 0), Duration::from_millis(100));
    assert_eq!(
        p.delay(Duration::from_secs(5), 0),
        Duration::from_millis(50)
    );
    assert_eq!(
        p.delay(Duration::from_secs(10), 9),
        Duration::from_millis(9)
    );
    assert_eq!(
        p.delay(Duration::from_secs(60), 13),
        Duration::from_millis(3)
    );
    assert_eq!(
        p.delay(Duration::from_millis(2_500), 109),
        Duration::from_millis(84)
    );
}

#[test]
fn performance_mode_kills_the_oldest_pre_login_client_at_once_section_2_8() {
    let mut h = Harness::new(LoginConfig::new(3, 0));
    let a = h.accept();
    h.at(10);
    let b = h.accept();
    h.at(20);
    let c = h.accept();
    h.input(Input::ClientState {
        client: a,
        state: ClientState::InAuth,
    });
    h.input(Input::ClientState {
        client: c,
        state: ClientState::LoggedIn,
    });
    assert_eq!(h.login.listen_mode(), ListenMode::Off, "no slot, not full");
    let out = h.publish_full(true);
    assert_eq!(
        out,
        vec![Output::SetListening {
            mode: ListenMode::Overflow
        }]
    );
    let out = h.input(Input::ListenerReadable { jitter: 0 });
    assert_eq!(
        disconnects(&out),
        vec![(b, DisconnectReason::QueueFull)],
        "a is mid-auth"
    );
    assert_eq!(
        h.login.listen_mode(),
        ListenMode::Off,
        "one kill per overflow event"
    );
    let out = h.input(Input::ClientClosed { client: b });
    assert_eq!(
        out,
        vec![Output::SetListening {
            mode: ListenMode::Accept
        }]
    );
    h.at(30);
    h.accept();
    assert_eq!(h.login.listen_mode(), ListenMode::Overflow, "full again");
}

#[test]
fn if_no_client_qualifies_the_oldest_dies_anyway_section_2_8() {
    let mut h = Harness::new(LoginConfig::new(2, 0));
    let a = h.accept();
    let b = h.accept();
    h.input(Input::ClientState {
        client: a,
        state: ClientState::HandingOff,
    });
    h.input(Input::ClientState {
        client: b,
        state: ClientState::InAuth,
    });
    h.publish_full(true);
    let out = h.input(Input::ListenerReadable { jitter: 0 });
    assert_eq!(disconnects(&out), vec![(a, DisconnectReason::QueueFull)]);
    assert_eq!(
        DisconnectReason::QueueFull.to_string(),
        "Connection queue full"
    );
}

#[test]
fn the_oldest_killable_only_policy_spares_clients_mid_lookup() {
    let mut config = LoginConfig::new(2, 0);
    config.overflow.kill_policy = KillPolicy::OldestKillableOnly;
    let mut h = Harness::new(config);
    let a = h.accept();
    let b = h.accept();
    h.input(Input::ClientState {
        client: a,
        state: ClientState::InAuth,
    });
    h.input(Input::ClientState {
        client: b,
        state: ClientState::InAuth,
    });
    h.publish_full(true);
    let out = h.input(Input::ListenerReadable { jitter: 0 });
    assert_eq!(disconnects(&out), vec![]);
    assert_eq!(
        h.login.listen_mode(),
        ListenMode::Off,
        "blocked until something changes"
    );
    let out = h.input(Input::ClientState {
        client: b,
        state: ClientState::PreLogin,
    });
    assert_eq!(
        out,
        vec![Output::SetListening {
            mode: ListenMode::Overflow
        }],
        "b is killable now"
    );
    let out = h.input(Input::ListenerReadable { jitter: 0 });
    assert_eq!(disconnects(&out), vec![(b, DisconnectReason::QueueFull)]);
}

#[test]
fn logged_in_clients_are_never_killed_and_nothing_dies_without_pre_login_clients_section_2_8() {
    let mut h = Harness::new(LoginConfig::new(2, 0));
    for _ in 0..2 {
        let id = h.accept();
        h.input(Input::ClientState {
            client: id,
            state: ClientState::LoggedIn,
        });
    }
    h.publish_full(true);
    let out = h.input(Input::ListenerReadable { jitter: 0 });
    assert_eq!(disconnects(&out), vec![]);
    assert_eq!(
        out,
        vec![Output::SetListening {
            mode: ListenMode::Off
        }]
    );
    // A new SIGUSR1 saying full watches again (the original re-adds its listeners).
    let out = h.publish_full(true);
    assert_eq!(
        out,
        vec![Output::SetListening {
            mode: ListenMode::Overflow
        }]
    );
}

#[test]
fn security_mode_kills_after_the_age_delay_and_rechecks_full_section_2_8() {
    let mut config = LoginConfig::new(1, 1);
    config.overflow = ORIGINAL_OVERFLOW_POLICY;
    let mut h = Harness::new(config);
    let a = h.accept();
    h.at(2_500);
    h.publish_full(true);
    assert_eq!(
        h.login.listen_mode(),
        ListenMode::Overflow,
        "keeps listeners on its last slot"
    );
    let out = h.input(Input::ListenerReadable { jitter: 7 });
    assert_eq!(disconnects(&out), vec![]);
    // age 2.5 s: 100 - 25 = 75 ms, + 7 ms jitter.
    assert_eq!(h.login.poll_timeout(), Some(ms(2_582)));
    let out = h.timeout();
    assert_eq!(disconnects(&out), vec![(a, DisconnectReason::QueueFull)]);
    let out = h.input(Input::ClientClosed { client: a });
    assert_eq!(
        out.last(),
        Some(&Output::Exit(0)),
        "its one connection is used: it exits"
    );
}

#[test]
fn roost_keeps_the_age_scaled_delay_and_rechecks_fast_after_a_flip_issue_6() {
    let mut h = Harness::new(LoginConfig::new(1, 1));
    h.accept();
    h.at(2_500);
    h.publish_full(true);
    h.input(Input::ListenerReadable { jitter: 7 });
    assert_eq!(
        h.login.poll_timeout(),
        Some(ms(2_582)),
        "100 ms scaled down by the client's age (2.5 s of 10 s: 75 ms), plus the jitter"
    );
    // Another process's kill flipped the state; the master's SIGUSR1 is held back.
    h.full = false;
    let out = h.timeout();
    assert_eq!(disconnects(&out), vec![], "re-read at expiry says not full");
    assert_eq!(
        h.login.poll_timeout(),
        Some(ms(2_602)),
        "a process with someone to kill re-reads after 20 ms"
    );
    h.full = true;
    let out = h.timeout();
    assert!(out.contains(&Output::SetListening {
        mode: ListenMode::Overflow
    }));
}

#[test]
fn roost_rechecks_every_second_outside_a_flip_issue_6() {
    let mut h = Harness::new(LoginConfig::new(1, 0));
    h.at(100);
    h.accept();
    assert_eq!(h.login.poll_timeout(), Some(ms(1_100)));
}

#[test]
fn a_delayed_kill_is_dropped_when_the_service_is_no_longer_full_section_2_8() {
    let mut h = Harness::new(LoginConfig::new(1, 1));
    h.accept();
    h.publish_full(true);
    h.input(Input::ListenerReadable { jitter: 0 });
    h.full = false; // published, but the SIGUSR1 is still rate-limited by the master
    let out = h.timeout();
    assert_eq!(disconnects(&out), vec![], "re-read at expiry says not full");
}

#[test]
fn not_full_with_no_free_slot_rechecks_every_second_section_2_8() {
    let mut h = Harness::new(LoginConfig::new(1, 0));
    h.at(100);
    h.accept();
    assert_eq!(h.login.poll_timeout(), Some(ms(1_100)));
    h.full = true; // the SIGUSR1 was lost
    let out = h.timeout();
    assert_eq!(
        out,
        vec![Output::SetListening {
            mode: ListenMode::Overflow
        }]
    );
    assert!(h.login.is_full());
}

#[test]
fn the_pre_auth_timeout_disconnects_with_the_state_s_text_section_8() {
    let mut h = Harness::new(LoginConfig::new(10, 0));
    let a = h.accept();
    let b = h.accept();
    let c = h.accept();
    let d = h.accept();
    h.input(Input::ClientState {
        client: b,
        state: ClientState::InAuth,
    });
    h.input(Input::ClientState {
        client: c,
        state: ClientState::HandingOff,
    });
    h.input(Input::ClientState {
        client: d,
        state: ClientState::LoggedIn,
    });
    h.at(179_999);
    assert_eq!(disconnects(&h.input(Input::Timeout)), vec![]);
    assert_eq!(h.login.poll_timeout(), Some(ms(180_000)));
    let out = h.timeout();
    assert_eq!(
        disconnects(&out),
        vec![
            (a, DisconnectReason::Inactivity),
            (b, DisconnectReason::InactivityDuringAuth),
            (c, DisconnectReason::FinishingLogin)
        ]
    );
    assert_eq!(
        DisconnectReason::Inactivity.to_string(),
        "Disconnected for inactivity."
    );
    assert_eq!(
        h.login.client(d),
        Some((ClientState::LoggedIn, false)),
        "proxies stay"
    );
    assert_eq!(
        h.login.client_count(),
        4,
        "slots come back with ClientClosed"
    );
}

fn auth_timed_out(out: &[Output]) -> Vec<ClientId> {
    out.iter()
        .filter_map(|o| match o {
            Output::AuthTimedOut { client } => Some(*client),
            _ => None,
        })
        .collect()
}

#[test]
fn a_lookup_out_for_the_auth_timeout_is_reported_once_and_a_returned_one_never() {
    let mut h = Harness::new(LoginConfig::new(10, 0));
    let late = h.accept();
    let answered = h.accept();
    let again = h.accept();
    for client in [late, answered, again] {
        h.set_state(client, ClientState::InAuth);
    }
    h.at(10_000);
    h.set_state(answered, ClientState::PreLogin);
    // A second lookup starts its own 30 s.
    h.at(20_000);
    h.set_state(again, ClientState::PreLogin);
    h.set_state(again, ClientState::InAuth);
    let reported = |h: &mut Harness, at: u64| {
        h.at(at);
        auth_timed_out(&h.input(Input::Timeout))
    };
    assert_eq!(reported(&mut h, 29_999), vec![]);
    assert_eq!(reported(&mut h, 30_000), vec![late]);
    assert_eq!(
        h.login.client(late),
        Some((ClientState::InAuth, false)),
        "the driver ends the lookup: the client is neither moved nor closed"
    );
    assert_eq!(reported(&mut h, 49_999), vec![]);
    assert_eq!(reported(&mut h, 50_000), vec![again]);
    // Once: no second report before the pre-auth timeout.
    assert_eq!(reported(&mut h, 179_999), vec![]);
}

#[test]
fn a_killed_client_mid_lookup_frees_its_slot_only_when_closed_section_2_8() {
    let mut h = Harness::new(LoginConfig::new(1, 0));
    let a = h.accept();
    h.input(Input::ClientState {
        client: a,
        state: ClientState::InAuth,
    });
    h.publish_full(true);
    h.input(Input::ListenerReadable { jitter: 0 });
    let out = h.timeout();
    assert_eq!(disconnects(&out), vec![(a, DisconnectReason::QueueFull)]);
    // The auth lookup has not returned: the client is closing, its slot still taken.
    assert_eq!(h.login.listen_mode(), ListenMode::Off);
    assert_eq!(
        h.input(Input::ClientState {
            client: a,
            state: ClientState::PreLogin
        }),
        vec![]
    );
    let out = h.input(Input::ClientClosed { client: a });
    assert_eq!(
        out,
        vec![Output::SetListening {
            mode: ListenMode::Accept
        }]
    );
}

#[test]
fn an_accept_out_of_turn_or_with_a_live_id_is_refused() {
    let mut h = Harness::new(LoginConfig::new(1, 0));
    let a = h.accept();
    assert_eq!(
        h.input(Input::Accepted {
            client: ClientId(99)
        }),
        vec![Output::Refuse]
    );
    let mut h = Harness::new(LoginConfig::new(2, 0));
    h.input(Input::Accepted { client: a });
    assert_eq!(h.input(Input::Accepted { client: a }), vec![Output::Refuse]);
    assert_eq!(h.login.client_count(), 1);
}

#[test]
fn master_death_stops_listening_and_cancels_a_pending_kill_section_4_4() {
    let mut config = LoginConfig::new(1, 1);
    config.die_with_master = false;
    let mut h = Harness::new(config);
    let a = h.accept();
    h.publish_full(true);
    h.input(Input::ListenerReadable { jitter: 0 });
    let out = h.input(Input::MasterDead);
    assert!(out.contains(&Output::CloseListeners));
    assert_eq!(h.login.listen_mode(), ListenMode::Off);
    assert_eq!(
        h.login.poll_timeout(),
        Some(ms(180_000)),
        "only the pre-auth timer is left"
    );
    assert_eq!(
        h.input(Input::ClientClosed { client: a }),
        vec![Output::Exit(0)]
    );
}
