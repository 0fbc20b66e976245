//! The fd move planner: for any moves without duplicate destinations, every destination ends
//! up holding what its source held.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use roost::fdplan::{plan_fd_moves, FdOp};

fuzz_target!(|moves: Vec<(u8, u8)>| {
    let moves: Vec<(i32, i32)> = moves.into_iter().take(32).map(|(a, b)| (i32::from(a % 40), i32::from(b % 40))).collect();
    let Ok(ops) = plan_fd_moves(&moves) else { return };
    let mut table: BTreeMap<i32, i32> = (0..200).map(|fd| (fd, fd)).collect();
    let before = table.clone();
    for FdOp::Dup2 { from, to } in ops {
        let object = table[&from];
        table.insert(to, object);
    }
    for (from, to) in moves {
        assert_eq!(table[&to], before[&from]);
    }
});
