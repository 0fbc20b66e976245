//! The fd moves of a new child, planned before fork.
//!
//! A child must find each inherited fd at a fixed number (DESIGN.md "Child fds"). Moving them
//! with `dup2` one by one is wrong when a destination is still the source of a later move (the
//! later move would read the wrong file), and a cycle (3→4, 4→3) has no order at all. This
//! planner, like the original's dup2 array (reference §1.2), first copies every source that is
//! also a pending destination to a free number above all of them, then does the moves. Its
//! output is executed after fork with nothing but `dup2`/`fcntl`, so all the thinking is here.
//!
//! Invariant of the returned plan: executed in order, every destination holds the file its
//! source held before the plan started, and every destination is left without `FD_CLOEXEC`.

/// One step of a plan.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum FdOp {
    /// `dup2(src, dst)`: the result has no `FD_CLOEXEC`.
    Dup2 {
        /// The fd to copy.
        src: i32,
        /// Where it goes.
        dst: i32,
    },
    /// The source already sits at its destination: clear `FD_CLOEXEC` so it survives exec.
    ClearCloexec {
        /// The fd.
        fd: i32,
    },
}

/// Plans moves of `(src, dst)` pairs. Destinations must be distinct (a later pair with the same
/// destination would silently win, so the caller's layout is checked here).
///
/// # Errors
/// A duplicate or negative destination, or a negative source.
pub fn plan_fd_moves(moves: &[(i32, i32)]) -> Result<Vec<FdOp>, FdPlanError> {
    for (i, &(src, dst)) in moves.iter().enumerate() {
        if src < 0 || dst < 0 {
            return Err(FdPlanError::Negative { src, dst });
        }
        if moves[..i].iter().any(|&(_, d)| d == dst) {
            return Err(FdPlanError::DuplicateDestination(dst));
        }
    }
    // Free numbers for the temporary copies: above every fd the plan mentions.
    let mut next_free = moves
        .iter()
        .flat_map(|&(s, d)| [s, d])
        .max()
        .map_or(0, |m| m + 1);
    let mut ops = Vec::new();
    let mut sources: Vec<i32> = moves.iter().map(|&(s, _)| s).collect();
    for (i, &(_, dst)) in moves.iter().enumerate() {
        // A source that some *other* move will overwrite is copied away first.
        let clobbered = moves
            .iter()
            .enumerate()
            .any(|(j, &(_, d))| j != i && d == sources[i]);
        if clobbered && sources[i] != dst {
            let tmp = next_free;
            next_free += 1;
            ops.push(FdOp::Dup2 {
                src: sources[i],
                dst: tmp,
            });
            // Every move reading the same source now reads the copy.
            let old = sources[i];
            for s in sources.iter_mut() {
                if *s == old {
                    *s = tmp;
                }
            }
        }
    }
    for (i, &(_, dst)) in moves.iter().enumerate() {
        if sources[i] == dst {
            ops.push(FdOp::ClearCloexec { fd: dst });
        } else {
            ops.push(FdOp::Dup2 {
                src: sources[i],
                dst,
            });
        }
    }
    Ok(ops)
}

/// A layout that cannot be planned.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FdPlanError {
    /// Two moves want the same destination.
    #[error("two fds planned for fd {0}")]
    DuplicateDestination(i32),
    /// A negative fd.
    #[error("negative fd in move {src} -> {dst}")]
    Negative {
        /// The source.
        src: i32,
        /// The destination.
        dst: i32,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Executes a plan on a model fd table (fd → file name) and returns the table.
    fn run(table: &BTreeMap<i32, &'static str>, ops: &[FdOp]) -> BTreeMap<i32, &'static str> {
        let mut t = table.clone();
        for op in ops {
            if let FdOp::Dup2 { src, dst } = *op {
                let file = *t.get(&src).expect("plan reads an open fd");
                t.insert(dst, file);
            }
        }
        t
    }

    fn check(moves: &[(i32, i32)]) {
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let mut table = BTreeMap::new();
        for (i, &(src, _)) in moves.iter().enumerate() {
            table.entry(src).or_insert(names[i % names.len()]);
        }
        let before = table.clone();
        let ops = plan_fd_moves(moves).expect("valid layout");
        let after = run(&table, &ops);
        for &(src, dst) in moves {
            assert_eq!(after[&dst], before[&src], "move {src}->{dst} in {ops:?}");
        }
    }

    #[test]
    fn simple_moves_are_direct_dup2s() {
        let ops = plan_fd_moves(&[(10, 3), (11, 4)]).expect("valid");
        assert_eq!(
            ops,
            vec![
                FdOp::Dup2 { src: 10, dst: 3 },
                FdOp::Dup2 { src: 11, dst: 4 }
            ]
        );
    }

    #[test]
    fn a_source_that_is_a_later_destination_is_saved_first() {
        // 3 must go to 5 and 7 to 3: done naively, 3 is overwritten before it is copied.
        check(&[(7, 3), (3, 5)]);
        let ops = plan_fd_moves(&[(7, 3), (3, 5)]).expect("valid");
        assert_eq!(ops[0], FdOp::Dup2 { src: 3, dst: 8 });
    }

    #[test]
    fn a_swap_cycle_is_broken_with_a_temporary() {
        check(&[(3, 4), (4, 3)]);
        check(&[(3, 4), (4, 5), (5, 3)]);
    }

    #[test]
    fn a_source_already_in_place_only_loses_cloexec() {
        assert_eq!(
            plan_fd_moves(&[(3, 3)]).expect("valid"),
            vec![FdOp::ClearCloexec { fd: 3 }]
        );
        check(&[(3, 3), (9, 4)]);
    }

    #[test]
    fn one_source_to_two_destinations() {
        check(&[(5, 0), (5, 1), (0, 5)]);
    }

    #[test]
    fn every_permutation_of_small_layouts_ends_right() {
        // All layouts of 4 sources drawn from fds 0..6 onto 4 distinct destinations 0..6.
        for a in 0..6 {
            for b in 0..6 {
                for c in 0..6 {
                    for d in 0..6 {
                        let dsts = [a, b, c, d];
                        if (0..4).any(|i| dsts[..i].contains(&dsts[i])) {
                            continue;
                        }
                        let moves: Vec<(i32, i32)> =
                            (0..4).map(|i| ((i as i32 * 2) % 6, dsts[i])).collect();
                        check(&moves);
                    }
                }
            }
        }
    }

    #[test]
    fn duplicate_destinations_are_refused() {
        assert_eq!(
            plan_fd_moves(&[(7, 3), (8, 3)]),
            Err(FdPlanError::DuplicateDestination(3))
        );
        assert!(plan_fd_moves(&[(-1, 3)]).is_err());
    }
}
