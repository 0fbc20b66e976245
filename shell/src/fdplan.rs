//! Placing a child's file descriptors at exact numbers (the original's dup2-array), as a pure,
//! tested planner and a few lines that carry the plan out after `fork`.
//!
//! The plan first copies every source to a scratch number above every fd involved, then copies
//! each scratch fd to its destination. Two passes cost a few more syscalls than the original's
//! conflict detection, but no order of sources and destinations (swaps, cycles, a source that is
//! another's destination, one source at two destinations) can clobber a source before it is
//! used, and the executor is a loop of `dup2` calls, which is async-signal-safe.

use std::os::fd::RawFd;

/// One step of a plan.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FdOp {
    /// `dup2(from, to)`: the copy at `to` is not close-on-exec.
    Dup2 {
        /// The source.
        from: RawFd,
        /// The destination.
        to: RawFd,
    },
}

/// A plan error: the moves themselves are contradictory.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FdPlanError {
    /// Two moves want the same destination.
    #[error("fd {0} is the destination of two moves")]
    DuplicateDestination(RawFd),
    /// A negative fd.
    #[error("fd {0} is not a valid descriptor")]
    Negative(RawFd),
}

/// Plans `moves` (source, destination). After the plan, each destination holds what its source
/// held before it, and is inherited across exec. Everything else above the highest destination
/// is for the caller to close.
pub fn plan_fd_moves(moves: &[(RawFd, RawFd)]) -> Result<Vec<FdOp>, FdPlanError> {
    let mut seen = Vec::with_capacity(moves.len());
    for &(from, to) in moves {
        if from < 0 {
            return Err(FdPlanError::Negative(from));
        }
        if to < 0 {
            return Err(FdPlanError::Negative(to));
        }
        if seen.contains(&to) {
            return Err(FdPlanError::DuplicateDestination(to));
        }
        seen.push(to);
    }
    let scratch_base = moves
        .iter()
        .flat_map(|&(a, b)| [a, b])
        .max()
        .map_or(0, |m| m + 1);
    let mut ops = Vec::with_capacity(moves.len() * 2);
    for (i, &(from, _)) in moves.iter().enumerate() {
        ops.push(FdOp::Dup2 {
            from,
            to: scratch_base + i as RawFd,
        });
    }
    for (i, &(_, to)) in moves.iter().enumerate() {
        ops.push(FdOp::Dup2 {
            from: scratch_base + i as RawFd,
            to,
        });
    }
    Ok(ops)
}

/// Carries out a plan. Only `dup2` is called: safe between `fork` and `exec`.
///
/// # Safety
/// The caller must own every fd the plan names and accept that destinations are replaced.
pub unsafe fn execute(ops: &[FdOp]) -> Result<(), i32> {
    for op in ops {
        let FdOp::Dup2 { from, to } = *op;
        // SAFETY: dup2 is async-signal-safe; the caller owns the fds.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(errno());
        }
    }
    Ok(())
}

/// The calling thread's errno, without allocating.
pub fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Runs a plan on a model of a descriptor table: fd → what it refers to.
    fn simulate(table: &mut BTreeMap<RawFd, &'static str>, ops: &[FdOp]) {
        for FdOp::Dup2 { from, to } in ops {
            let object = table[from];
            table.insert(*to, object);
        }
    }

    fn check(moves: &[(RawFd, RawFd)], table: BTreeMap<RawFd, &'static str>) {
        let before = table.clone();
        let mut after = table;
        simulate(&mut after, &plan_fd_moves(moves).expect("valid moves"));
        for &(from, to) in moves {
            assert_eq!(
                after[&to], before[&from],
                "fd {to} must hold what {from} held"
            );
        }
    }

    #[test]
    fn swaps_cycles_and_overlaps_are_placed_correctly() {
        let table: BTreeMap<RawFd, &str> = [(3, "a"), (4, "b"), (5, "c"), (9, "d")]
            .into_iter()
            .collect();
        check(&[(3, 4), (4, 3)], table.clone());
        check(&[(3, 4), (4, 5), (5, 3)], table.clone());
        check(&[(9, 3), (3, 4)], table.clone());
        check(&[(3, 3), (9, 4)], table.clone());
        check(&[(9, 0), (9, 1), (3, 2)], table);
    }

    #[test]
    fn contradictory_moves_are_refused() {
        assert_eq!(
            plan_fd_moves(&[(3, 5), (4, 5)]),
            Err(FdPlanError::DuplicateDestination(5))
        );
        assert_eq!(plan_fd_moves(&[(-1, 5)]), Err(FdPlanError::Negative(-1)));
    }

    proptest::proptest! {
        #[test]
        fn any_permutation_lands_where_asked(sources in proptest::collection::vec(0i32..12, 1..8)) {
            let moves: Vec<(RawFd, RawFd)> = sources.iter().enumerate().map(|(i, &s)| (s, i as RawFd)).collect();
            let names = ["o0", "o1", "o2", "o3", "o4", "o5", "o6", "o7", "o8", "o9", "o10", "o11"];
            let table: BTreeMap<RawFd, &str> = (0..12).map(|fd| (fd, names[fd as usize])).collect();
            check(&moves, table);
        }
    }
}
