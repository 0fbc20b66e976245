//! Property tests: random event sequences into the child machine and the login table, checked
//! after every step against what must always hold.

use std::collections::BTreeSet;

use proptest::prelude::*;
use roost_core::child::{Child, ChildConfig, ChildInput, ChildOutput};
use roost_core::login::{ClientState, Disconnect, LoginInput, LoginOutput, LoginTable};
use roost_core::time::{Duration, Instant};

fn child_input() -> impl Strategy<Value = ChildInput> {
    prop_oneof![
        3 => Just(ChildInput::Accepted),
        3 => Just(ChildInput::ClientClosed),
        1 => Just(ChildInput::IdleKillRequest),
        1 => Just(ChildInput::Quit),
        1 => Just(ChildInput::MasterDead),
        1 => Just(ChildInput::StatusWouldBlock),
        1 => Just(ChildInput::StatusWritable),
        1 => Just(ChildInput::StatusBroken),
        2 => Just(ChildInput::Timeout),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_child_keeps_its_books_whatever_happens(
        client_limit in 1u32..5,
        service_count in 0u32..6,
        die_with_master in any::<bool>(),
        steps in proptest::collection::vec((child_input(), 0u64..1500), 1..80),
    ) {
        let mut child = Child::new(ChildConfig { client_limit, service_count, die_with_master, is_login: false, never_idle_die: false });
        let mut now = Instant::from_millis(1);
        child.handle(ChildInput::InitDone, now);
        while let Some(output) = child.poll_output() {
            if let ChildOutput::WriteStatus(_) = output {
                child.handle(ChildInput::StatusWritten, now);
            }
        }
        let mut clients = 0u32;
        let mut exited = false;
        let mut broken = false;
        for (input, delay) in steps {
            now = now + Duration::from_millis(delay);
            // The driver only accepts while told to, and only closes clients it has.
            let input = match input {
                ChildInput::Accepted if !child.is_accepting() => continue,
                ChildInput::ClientClosed if clients == 0 => continue,
                other => other,
            };
            match input {
                ChildInput::Accepted => clients += 1,
                ChildInput::ClientClosed => clients -= 1,
                ChildInput::StatusBroken => broken = true,
                _ => {}
            }
            child.handle(input, now);
            while let Some(output) = child.poll_output() {
                match output {
                    ChildOutput::WriteStatus(value) => {
                        prop_assert!(!broken, "wrote after the pipe broke");
                        prop_assert!(value <= client_limit, "reported {value} free slots of {client_limit}");
                        child.handle(ChildInput::StatusWritten, now);
                    }
                    ChildOutput::Exit(_) => exited = true,
                    _ => {}
                }
            }
            prop_assert_eq!(child.check_invariants(), Ok(()));
            if exited {
                break;
            }
            prop_assert_eq!(child.clients(), clients);
            prop_assert!(child.available_count() <= client_limit);
        }
    }

    #[test]
    fn the_login_table_never_kills_a_logged_in_client_and_kills_one_per_event(
        client_limit in 1u32..4,
        steps in proptest::collection::vec((0u8..6, 0u64..20, 0u64..400), 1..100),
    ) {
        let mut table = LoginTable::new(client_limit, Duration::from_secs(30));
        let mut now = Instant::from_millis(1);
        let mut next_id = 0u64;
        let mut live: BTreeSet<u64> = BTreeSet::new();
        let mut logged_in: BTreeSet<u64> = BTreeSet::new();
        for (kind, pick, delay) in steps {
            now = now + Duration::from_millis(delay);
            let nth = |set: &BTreeSet<u64>| set.iter().nth(pick as usize % set.len().max(1)).copied();
            let input = match kind {
                0 => { next_id += 1; live.insert(next_id); LoginInput::Accepted(next_id) }
                1 => match nth(&live) { Some(id) => { logged_in.insert(id); LoginInput::State(id, ClientState::LoggedIn) } None => continue },
                2 => match nth(&live) {
                    // A driver never moves a logged-in client back (the table ignores it too).
                    Some(id) if !logged_in.contains(&id) => LoginInput::State(id, ClientState::InAuth),
                    _ => continue,
                },
                3 => LoginInput::ServiceFull(pick % 2 == 0),
                4 => LoginInput::Readable { jitter_ms: (pick % 10) as u8 },
                _ => LoginInput::Timeout,
            };
            let readable = matches!(input, LoginInput::Readable { .. });
            table.handle(input, now);
            let mut queue_full_kills = 0;
            while let Some(output) = table.poll_output() {
                if let LoginOutput::Disconnect(id, why) = output {
                    prop_assert!(!logged_in.contains(&id), "a logged-in client was disconnected");
                    prop_assert!(live.remove(&id), "disconnected a client twice");
                    if why == Disconnect::QueueFull {
                        queue_full_kills += 1;
                    }
                }
            }
            if readable {
                prop_assert!(queue_full_kills <= 1, "more than one client killed for one event");
            }
            prop_assert_eq!(table.check_invariants(), Ok(()));
            prop_assert_eq!(table.clients(), live.len());
        }
    }
}
