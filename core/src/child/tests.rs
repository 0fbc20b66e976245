//! One named test per rule of the child machine, citing its section of the reference.

use super::*;

fn config(client_limit: u32, service_count: u32) -> ChildConfig {
    ChildConfig {
        client_limit,
        service_count,
        never_idle_die: false,
        die_with_master: true,
        has_die_callback: false,
        is_login: false,
        starts_with_client: false,
    }
}

fn ms(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

/// Drives one child, answering every status write with `StatusWritten` unless told otherwise.
struct Harness {
    child: Child,
    now: Instant,
    seen: Vec<Output>,
}

impl Harness {
    fn new(config: ChildConfig) -> Harness {
        let mut h = Harness {
            child: Child::new(config, Instant::ZERO),
            now: Instant::ZERO,
            seen: Vec::new(),
        };
        h.input(Input::InitDone);
        h
    }

    /// Feeds one input and drains, answering writes as written.
    fn input(&mut self, input: Input) -> Vec<Output> {
        self.input_answering(input, Input::StatusWritten)
    }

    fn input_answering(&mut self, input: Input, answer: Input) -> Vec<Output> {
        self.child.handle(input, self.now);
        let mut out = Vec::new();
        while let Some(o) = self.child.poll_output() {
            out.push(o);
            if let Output::WriteStatus { .. } = o {
                self.child.handle(answer, self.now);
            }
        }
        self.child.check_invariants().expect("invariants hold");
        self.seen.extend(out.iter().copied());
        out
    }

    fn at(&mut self, at: u64) -> &mut Harness {
        self.now = ms(at);
        self
    }

    fn writes(out: &[Output]) -> Vec<u32> {
        out.iter()
            .filter_map(|o| match o {
                Output::WriteStatus { available_count } => Some(*available_count),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn the_initial_status_is_sent_at_init_end_section_1_4() {
    let mut child = Child::new(config(1000, 0), Instant::ZERO);
    assert_eq!(child.poll_output(), None, "nothing before InitDone");
    child.handle(Input::InitDone, Instant::ZERO);
    assert_eq!(
        child.poll_output(),
        Some(Output::WriteStatus {
            available_count: 1000
        })
    );
    assert_eq!(child.poll_output(), Some(Output::SetAccepting { on: true }));
}

#[test]
fn client_limit_is_capped_by_service_count_and_std_client_starts_one_lower_section_1_4() {
    let h = Harness::new(config(1000, 5));
    assert_eq!(Harness::writes(&h.seen), vec![5]);
    let mut std_client = config(10, 0);
    std_client.starts_with_client = true;
    let h = Harness::new(std_client);
    assert_eq!(Harness::writes(&h.seen), vec![9]);
    assert_eq!(h.child.clients(), 1);
}

#[test]
fn each_accept_takes_a_slot_and_a_full_process_stops_accepting_section_2_5() {
    let mut h = Harness::new(config(2, 0));
    let out = h.input(Input::Accepted);
    assert_eq!(
        Harness::writes(&out),
        Vec::<u32>::new(),
        "2→1 in the same second waits"
    );
    let out = h.input(Input::Accepted);
    assert_eq!(
        out,
        vec![
            Output::WriteStatus { available_count: 0 },
            Output::SetAccepting { on: false }
        ]
    );
    let out = h.input(Input::ClientClosed);
    assert_eq!(
        out,
        vec![
            Output::WriteStatus { available_count: 1 },
            Output::SetAccepting { on: true }
        ],
        "leaving 0 is important: written at once"
    );
}

#[test]
fn the_budget_retires_slots_once_it_no_longer_exceeds_them_section_2_5() {
    // client_limit 3, service_count 4: total 3, left 4.
    let mut h = Harness::new(config(3, 4));
    for _ in 0..3 {
        h.input(Input::Accepted);
    }
    h.input(Input::ClientClosed); // left 4 > total 3: the slot is freed.
    assert_eq!(
        (
            h.child.available_count(),
            h.child.total_available(),
            h.child.service_count_left()
        ),
        (1, 3, Some(3))
    );
    h.input(Input::Accepted); // 3 clients, left 3 == total 3: budget used up.
    assert!(h.child.budget_used_up());
    assert!(
        h.child.listeners_closed(),
        "last permitted connections in progress"
    );
    h.input(Input::ClientClosed); // left == total: retired, not freed.
    assert_eq!(
        (
            h.child.available_count(),
            h.child.total_available(),
            h.child.service_count_left()
        ),
        (0, 2, Some(2))
    );
    h.input(Input::ClientClosed);
    let out = h.input(Input::ClientClosed);
    assert_eq!(
        out.last(),
        Some(&Output::Exit(0)),
        "service_count_left reached 0"
    );
}

#[test]
fn service_count_1_closes_listeners_on_its_only_connection_unless_login_section_2_5() {
    let mut h = Harness::new(config(1, 1));
    let out = h.input(Input::Accepted);
    assert!(out.contains(&Output::CloseListeners));
    let out = h.input(Input::ClientClosed);
    assert_eq!(out, vec![Output::Exit(0)]);

    let mut login = config(1, 1);
    login.is_login = true;
    let mut h = Harness::new(login);
    let out = h.input(Input::Accepted);
    assert!(
        !out.contains(&Output::CloseListeners),
        "a login process keeps them for overflow"
    );
}

#[test]
fn unimportant_updates_are_written_at_most_once_a_second_section_1_4() {
    let mut h = Harness::new(config(10, 0));
    h.at(100);
    assert_eq!(
        Harness::writes(&h.input(Input::Accepted)),
        Vec::<u32>::new()
    );
    assert_eq!(h.child.poll_timeout(), Some(ms(1100)));
    h.at(600);
    h.input(Input::Accepted);
    assert_eq!(h.child.poll_timeout(), Some(ms(1600)), "the timer is reset");
    h.at(1600);
    assert_eq!(Harness::writes(&h.input(Input::Timeout)), vec![8]);
    assert_eq!(h.child.poll_timeout(), None);
    // In a new second, the first unimportant update goes out at once.
    h.at(2500);
    assert_eq!(Harness::writes(&h.input(Input::ClientClosed)), vec![9]);
}

#[test]
fn an_update_back_to_the_last_written_value_writes_nothing_section_1_4() {
    let mut h = Harness::new(config(10, 0));
    h.input(Input::Accepted);
    assert!(h.child.poll_timeout().is_some());
    let out = h.input(Input::ClientClosed);
    assert_eq!(Harness::writes(&out), Vec::<u32>::new());
    assert_eq!(h.child.poll_timeout(), None, "nothing left to say");
}

#[test]
fn an_important_update_blocked_by_a_full_pipe_waits_for_it_section_1_4() {
    let mut h = Harness::new(config(1, 0));
    let out = h.input_answering(Input::Accepted, Input::StatusWouldBlock);
    assert!(out.contains(&Output::AwaitStatusWritable));
    let out = h.input(Input::StatusWritable);
    assert_eq!(Harness::writes(&out), vec![0]);
    assert_eq!(h.child.last_written(), Some(0));
}

#[test]
fn an_unimportant_update_blocked_by_a_full_pipe_is_dropped_section_1_4() {
    let mut h = Harness::new(config(10, 0));
    h.at(1500);
    let out = h.input_answering(Input::Accepted, Input::StatusWouldBlock);
    assert_eq!(Harness::writes(&out), vec![9]);
    assert!(!out.contains(&Output::AwaitStatusWritable));
    assert_eq!(h.child.last_written(), Some(10));
    assert_eq!(h.child.poll_timeout(), None);
}

#[test]
fn epipe_disables_status_writes_forever_section_1_4() {
    let mut h = Harness::new(config(10, 0));
    h.at(1500);
    h.input_answering(Input::Accepted, Input::StatusWriteFailed);
    assert!(h.child.status_disabled());
    h.at(5000);
    for input in [
        Input::Accepted,
        Input::ClientClosed,
        Input::Signal(Signal::Int),
    ] {
        assert_eq!(Harness::writes(&h.input(input)), Vec::<u32>::new());
    }
}

#[test]
fn idle_kill_with_clients_is_refused_and_the_status_resent_section_2_6() {
    let mut h = Harness::new(config(10, 0));
    h.at(1500);
    h.input(Input::Accepted);
    let out = h.input(Input::Signal(Signal::Int));
    assert_eq!(
        out,
        vec![Output::WriteStatus { available_count: 9 }],
        "re-sent though unchanged"
    );
}

#[test]
fn idle_kill_of_an_idle_process_exits_0_section_2_6() {
    let mut h = Harness::new(config(10, 0));
    let out = h.input(Input::Signal(Signal::Int));
    assert_eq!(
        out,
        vec![Output::SetAccepting { on: false }, Output::Exit(0)]
    );
    assert!(h.child.has_exited());
    assert_eq!(h.input(Input::Accepted), Vec::new(), "nothing after exit");
}

#[test]
fn never_idle_die_ignores_idle_kill_and_a_veto_refuses_it_section_2_6() {
    let mut never = config(10, 0);
    never.never_idle_die = true;
    let mut h = Harness::new(never);
    assert_eq!(h.input(Input::Signal(Signal::Int)), Vec::new());

    let mut h = Harness::new(config(10, 0));
    h.input(Input::IdleDieVeto(true));
    let out = h.input(Input::Signal(Signal::Int));
    assert_eq!(
        out,
        vec![Output::WriteStatus {
            available_count: 10
        }]
    );
    h.input(Input::IdleDieVeto(false));
    assert_eq!(
        h.input(Input::Signal(Signal::Int)).last(),
        Some(&Output::Exit(0))
    );
}

#[test]
fn sigterm_exits_and_sigquit_closes_listeners_section_4_4() {
    let mut h = Harness::new(config(10, 0));
    let out = h.input(Input::Signal(Signal::Quit));
    assert_eq!(
        out,
        vec![Output::SetAccepting { on: false }, Output::CloseListeners]
    );
    assert_eq!(h.input(Input::Signal(Signal::Term)), vec![Output::Exit(0)]);
}

#[test]
fn master_death_without_clients_exits_at_once_section_4_4() {
    let mut h = Harness::new(config(10, 0));
    let out = h.input(Input::MasterDead);
    assert_eq!(
        out,
        vec![
            Output::SetAccepting { on: false },
            Output::CloseListeners,
            Output::WriteStatus { available_count: 0 },
            Output::Exit(0)
        ]
    );
}

#[test]
fn master_death_with_a_die_callback_forces_exit_after_30_s_section_4_4() {
    let mut c = config(10, 0);
    c.has_die_callback = true;
    let mut h = Harness::new(c);
    h.input(Input::Accepted);
    h.at(1000);
    let out = h.input(Input::MasterDead);
    assert!(out.contains(&Output::DieCallback));
    assert_eq!(h.child.poll_timeout(), Some(ms(31_000)));
    h.at(30_999);
    assert_eq!(h.input(Input::Timeout), Vec::new());
    h.at(31_000);
    assert_eq!(h.input(Input::Timeout), vec![Output::Exit(0)]);
}

#[test]
fn master_death_without_callback_exits_even_with_clients_section_4_4() {
    let mut h = Harness::new(config(10, 0));
    h.input(Input::Accepted);
    assert_eq!(h.input(Input::MasterDead).last(), Some(&Output::Exit(0)));
}

#[test]
fn master_death_without_die_with_master_serves_the_last_clients_section_4_4() {
    let mut c = config(10, 0);
    c.die_with_master = false;
    let mut h = Harness::new(c);
    h.input(Input::Accepted);
    h.input(Input::Accepted);
    let out = h.input(Input::MasterDead);
    assert!(!out.iter().any(|o| matches!(o, Output::Exit(_))));
    assert_eq!(
        (h.child.available_count(), h.child.service_count_left()),
        (0, Some(2)),
        "the budget is frozen to the clients"
    );
    assert_eq!(
        h.input(Input::ClientClosed),
        Vec::new(),
        "a retired slot reports nothing new"
    );
    assert_eq!(h.input(Input::ClientClosed), vec![Output::Exit(0)]);
}

#[test]
fn an_accept_while_not_accepting_is_refused() {
    // The story: a driver races a connection in after it was told to stop. The machine must not
    // count a client it has no slot for (available_count would underflow); it answers Refuse.
    let mut h = Harness::new(config(1, 0));
    h.input(Input::Accepted);
    assert_eq!(h.input(Input::Accepted), vec![Output::Refuse]);
    assert_eq!(h.child.clients(), 1);
}

fn any_input() -> impl proptest::strategy::Strategy<Value = Input> {
    use proptest::prelude::*;
    prop_oneof![
        Just(Input::InitDone),
        Just(Input::Accepted),
        Just(Input::ClientClosed),
        Just(Input::Timeout),
        prop_oneof![
            Just(Signal::Int),
            Just(Signal::Term),
            Just(Signal::Quit),
            Just(Signal::Usr1)
        ]
        .prop_map(Input::Signal),
        Just(Input::MasterDead),
        Just(Input::StatusWritable),
        any::<bool>().prop_map(Input::IdleDieVeto),
    ]
}

fn any_answer() -> impl proptest::strategy::Strategy<Value = Input> {
    use proptest::prelude::*;
    prop_oneof![
        6 => Just(Input::StatusWritten),
        2 => Just(Input::StatusWouldBlock),
        1 => Just(Input::StatusWriteFailed),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

    /// The inetd adapter runs the machine where it must not allocate (it shares the spawner's
    /// memory): whatever happens, a driver that drains after each event, answering each status
    /// write as it drains, finds every output kept inline.
    #[test]
    fn a_draining_driver_never_makes_the_machine_allocate(
        client_limit in 1u32..4,
        service_count in 0u32..4,
        die_with_master: bool,
        has_die_callback: bool,
        is_login: bool,
        steps in proptest::collection::vec(
            (any_input(), proptest::collection::vec(any_answer(), 4), 0u64..1500),
            1..60,
        ),
    ) {
        let mut c = config(client_limit, service_count);
        c.die_with_master = die_with_master;
        c.has_die_callback = has_die_callback;
        c.is_login = is_login;
        let mut child = Child::new(c, Instant::ZERO);
        let mut now = Instant::ZERO;
        for (input, answers, after) in steps {
            now = now + Duration::from_millis(after);
            child.handle(input, now);
            let mut answers = answers.into_iter().cycle();
            let mut emitted = 0;
            while let Some(output) = child.poll_output() {
                emitted += 1;
                proptest::prop_assert!(!child.outputs.spilled(), "{:?}", child.outputs);
                if let Output::WriteStatus { .. } = output {
                    child.handle(answers.next().unwrap_or(Input::StatusWritten), now);
                }
                proptest::prop_assert!(emitted < 100, "the outputs never end");
            }
            proptest::prop_assert!(!child.outputs.spilled());
        }
    }
}
