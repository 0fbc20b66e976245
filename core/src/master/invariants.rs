//! The master's invariants: one pure function, four callers (STYLE.md §4).
//!
//! 1. Each service's process_count equals the number of live processes of that service.
//! 2. process_avail equals the number of its processes with available_count > 0.
//! 3. A process is in the idle list exactly when available_count == client_limit, and
//!    process_idling is the length of that list.
//! 4. Each service's member set holds exactly its live processes.
//! 5. process_idling <= process_avail <= process_count.
//! 6. process_count <= process_limit.
//! 7. The idle low-water mark never exceeds process_idling.
//! 8. The pid table maps each pid to the slot of the live process that has it, and every process
//!    with a pid is in it; the process table's id index names exactly its occupied slots.
//! 9. Every armed timer belongs to something that exists: per-process timers to a live process
//!    (the first-status timer only while it is uninitialised, the idle-kill confirmation only
//!    once it was sent an idle-kill SIGINT), per-service timers to a live service, the drop
//!    timer only while listen_pending.
//! 10. A service the master listens for has no available process unless it is in
//!     listen_pending after the drop period (then connections are closed at once).
//! 11. The timer table's two indexes agree.
//! 12. Every listener belongs to a live service, and is watched only while that service listens.

use std::collections::BTreeMap;

use super::{Master, Process, Slot, Timer};
use crate::ids::ServiceId;

pub use crate::violation::Violation;

fn fail(rule: u32, detail: String) -> Result<(), Violation> {
    Err(Violation {
        machine: "master",
        rule,
        detail,
    })
}

impl Master {
    /// Checks every invariant listed at the top of `core/src/master/invariants.rs`.
    pub fn check_invariants(&self) -> Result<(), Violation> {
        let mut by_service: BTreeMap<ServiceId, Vec<(Slot, &Process)>> = BTreeMap::new();
        for (slot, process) in self.processes.iter() {
            by_service
                .entry(process.service)
                .or_default()
                .push((slot, process));
        }
        for service in self.services.values() {
            let name = &service.config.name;
            let processes = by_service.remove(&service.id).unwrap_or_default();
            if processes.len() as u32 != service.process_count {
                return fail(
                    1,
                    format!(
                        "service({name}): process_count {} but {} live processes",
                        service.process_count,
                        processes.len()
                    ),
                );
            }
            let avail = processes
                .iter()
                .filter(|(_, p)| p.available_count > 0)
                .count() as u32;
            if avail != service.process_avail {
                return fail(
                    2,
                    format!(
                        "service({name}): process_avail {} but {avail}",
                        service.process_avail
                    ),
                );
            }
            for &(slot, process) in &processes {
                let idle = process.available_count == service.config.client_limit;
                let listed = process
                    .idle_key()
                    .is_some_and(|key| service.idle.get(key) == Some(slot));
                let member = service.members.contains(&process.id);
                if idle != listed {
                    return fail(
                        3,
                        format!(
                            "service({name}): {} has available_count {} of {} but idle-listed={listed}",
                            process.id, process.available_count, service.config.client_limit
                        ),
                    );
                }
                if !member {
                    return fail(
                        4,
                        format!("service({name}): {} is not among its members", process.id),
                    );
                }
            }
            if service.idle.len() as u32 != service.process_idling {
                return fail(
                    3,
                    format!(
                        "service({name}): process_idling {} but the idle list holds {}",
                        service.process_idling,
                        service.idle.len()
                    ),
                );
            }
            if service.members.len() != processes.len() {
                return fail(
                    4,
                    format!(
                        "service({name}): {} members but {} live processes",
                        service.members.len(),
                        processes.len()
                    ),
                );
            }
            let uninitialised = processes.iter().filter(|(_, p)| !p.initialised).count() as u32;
            if uninitialised != service.uninitialised {
                return fail(
                    1,
                    format!(
                        "service({name}): {} uninitialised counted, {uninitialised} seen",
                        service.uninitialised
                    ),
                );
            }
            if !(service.process_idling <= service.process_avail
                && service.process_avail <= service.process_count)
            {
                return fail(
                    5,
                    format!(
                        "service({name}): idling {} avail {} count {}",
                        service.process_idling, service.process_avail, service.process_count
                    ),
                );
            }
            if service.process_count > service.config.process_limit {
                return fail(
                    6,
                    format!(
                        "service({name}): process_count {} over process_limit {}",
                        service.process_count, service.config.process_limit
                    ),
                );
            }
            if service.idle_low_water > service.process_idling {
                return fail(
                    7,
                    format!(
                        "service({name}): low-water mark {} over process_idling {}",
                        service.idle_low_water, service.process_idling
                    ),
                );
            }
            if service.listening && service.process_avail > 0 && !service.listen_pending {
                return fail(
                    10,
                    format!(
                        "service({name}): listening with {} available processes",
                        service.process_avail
                    ),
                );
            }
            for listener in &service.listeners {
                match self.listeners.get(listener) {
                    Some(l) if l.service == service.id => {
                        if l.watched && !service.listening {
                            return fail(
                                12,
                                format!("service({name}): {listener} watched while not listening"),
                            );
                        }
                    }
                    _ => return fail(12, format!("service({name}): {listener} is not its own")),
                }
            }
        }
        for (pid, slot) in self.pids.iter() {
            if self.processes.get(slot).and_then(|p| p.pid()) != Some(pid) {
                return fail(
                    8,
                    format!("pid {pid} maps to {slot:?}, which does not have it"),
                );
            }
        }
        let mut occupied = 0;
        for (slot, process) in self.processes.iter() {
            occupied += 1;
            if self.processes.slot(process.id) != Some(slot) {
                return fail(8, format!("{} is not indexed at its slot", process.id));
            }
            if let Some(pid) = process.pid() {
                if self.pids.get(pid) != Some(slot) {
                    return fail(
                        8,
                        format!("{} has pid {pid} but the pid table disagrees", process.id),
                    );
                }
            }
            if !self.services.contains_key(&process.service) {
                return fail(1, format!("{} belongs to a forgotten service", process.id));
            }
        }
        if occupied != self.processes.len() {
            return fail(
                8,
                format!(
                    "{occupied} occupied slots but {} indexed processes",
                    self.processes.len()
                ),
            );
        }
        for (timer, _) in self.timers.iter() {
            let ok = match timer {
                Timer::FirstStatus(p) => self.processes.find(p).is_some_and(|p| !p.initialised),
                Timer::IdleKillConfirm(p) => self
                    .processes
                    .find(p)
                    .is_some_and(|p| p.last_kill_sent().is_some()),
                Timer::Drop(s) => self.services.get(&s).is_some_and(|s| s.listen_pending),
                Timer::Prefork(s)
                | Timer::WorkerWarning(s)
                | Timer::IdleRound(s)
                | Timer::Throttle(s)
                | Timer::LoginNotify(s) => self.services.contains_key(&s),
                Timer::ReloadKill(g) => self.generations.contains_key(&g),
                Timer::Start | Timer::ShutdownPoll | Timer::ShutdownExit => true,
            };
            if !ok {
                return fail(9, format!("{timer:?} is armed for something that is gone"));
            }
        }
        if !self.timers.is_consistent() {
            return fail(11, "the timer table's indexes disagree".to_owned());
        }
        for (id, listener) in &self.listeners {
            if !self.services.contains_key(&listener.service) {
                return fail(12, format!("{id} belongs to a forgotten service"));
            }
        }
        Ok(())
    }
}
