//! The post-login process's one rule about users (issue 6): a process never serves two uids,
//! whatever its service_count says.
//!
//! A post-login process started as root takes the uid of its first user and keeps it (it cannot
//! go back). A client of another uid is passed on to the service's listener again, where another
//! process (one the master may have yet to start) takes it; the process that passed it accepts
//! nothing more and leaves once its own clients are done, so that the pool turns over to the uids
//! that come. A client passed on [`MAX_HOPS`] times finds no process for its uid and is refused:
//! the hops cannot go round for ever. A process that does not run as root serves every session
//! as itself: there is nothing to switch.

/// How often a client may be passed on before it is refused.
pub const MAX_HOPS: u32 = 8;

/// What a post-login process does with a logged-in client of `uid`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UidDecision {
    /// Serve it as this process is.
    Serve,
    /// Become `uid` for good (then [`UidBinding::bind`]), and serve it; if the switch fails,
    /// refuse it and stay unbound.
    Become,
    /// Pass it on with this hop count, accept nothing more, exit when the clients are done.
    PassOn {
        /// The client's hops after this one.
        hops: u32,
    },
    /// Refuse it: it went round [`MAX_HOPS`] times.
    Refuse,
}

/// The uid a post-login process is bound to.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct UidBinding {
    bound: Option<u32>,
}

impl UidBinding {
    /// The uid this process took, if any.
    pub fn bound(&self) -> Option<u32> {
        self.bound
    }

    /// What to do with a client of `uid` (`None`: the user database names none) that has been
    /// passed on `hops` times, in a process that runs as root or not.
    pub fn decide(&self, uid: Option<u32>, hops: u32, as_root: bool) -> UidDecision {
        let Some(uid) = uid else {
            return UidDecision::Serve;
        };
        match self.bound {
            Some(bound) if bound == uid => UidDecision::Serve,
            Some(_) if hops >= MAX_HOPS => UidDecision::Refuse,
            Some(_) => UidDecision::PassOn { hops: hops + 1 },
            None if !as_root => UidDecision::Serve,
            None => UidDecision::Become,
        }
    }

    /// The process became `uid`: from now on it serves that uid alone.
    pub fn bind(&mut self, uid: u32) {
        self.bound = Some(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_binds_to_the_first_uid_and_passes_others_on_until_the_hops_run_out() {
        let mut binding = UidBinding::default();
        assert_eq!(binding.decide(Some(1000), 0, true), UidDecision::Become);
        assert_eq!(binding.bound(), None, "bound only once the switch is done");
        binding.bind(1000);
        assert_eq!(binding.decide(Some(1000), 0, true), UidDecision::Serve);
        assert_eq!(
            binding.decide(Some(1001), 0, true),
            UidDecision::PassOn { hops: 1 }
        );
        assert_eq!(
            binding.decide(Some(1001), MAX_HOPS - 1, true),
            UidDecision::PassOn { hops: MAX_HOPS }
        );
        assert_eq!(
            binding.decide(Some(1001), MAX_HOPS, true),
            UidDecision::Refuse
        );
        assert_eq!(binding.bound(), Some(1000), "a process never changes uid");
    }

    #[test]
    fn without_root_or_without_a_uid_every_session_is_served_as_the_process() {
        let binding = UidBinding::default();
        assert_eq!(binding.decide(Some(1000), 0, false), UidDecision::Serve);
        assert_eq!(binding.decide(Some(1001), 0, false), UidDecision::Serve);
        assert_eq!(binding.bound(), None);
        assert_eq!(binding.decide(None, 0, true), UidDecision::Serve);
        assert_eq!(binding.bound(), None);
    }
}
